"""Built-in strategies, one module each; every module registers itself on import."""
