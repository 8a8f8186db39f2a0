"""The `fedrec` command: run (Hydra), models, audit, deploy."""
