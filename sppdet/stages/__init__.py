"""One module per command: a config in, prepare/run, a summary out."""
