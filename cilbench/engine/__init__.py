"""What a run does: settings resolution, the loop, checkpoints, recipes, loggers and sweeps."""
