"""The `cilbench` command line."""
