"""Ray job entrypoints, run as `python -m jobs.<name>`: each reads and validates its config and calls the
library's `run(cfg)`. Nothing imports `jobs`; `jobs` imports only the library."""
