"""The foundation every other layer may import: errors, registries, settings, files, results,
metrics."""
