"""Backbone presets, one module per family; each registers its specs (and weights) on import."""
