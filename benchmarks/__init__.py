"""Built-in stream builders, one module per stream family; each registers itself on import."""
