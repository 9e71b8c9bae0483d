"""Ray job entrypoints: each has an importable `run(cfg)` and a `__main__`, the same code the CLI calls."""
