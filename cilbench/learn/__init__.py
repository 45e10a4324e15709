"""Shared learning pieces strategies are built from: heads, prototypes, adapters, prompts,
training."""
