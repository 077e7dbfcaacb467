"""The work directory: its caches, its records of what each stage made, windows read from it."""
