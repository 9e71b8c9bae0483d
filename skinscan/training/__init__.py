"""Training with Ray Train: `run(cfg)` on the driver, `train_loop` on every worker."""

from skinscan.training.driver import run

__all__ = ["run"]
