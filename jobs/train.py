"""Ray job: train a classifier or segmenter with Ray Train (same code as `skinscan train`).

ray job submit --working-dir . -- python jobs/train.py --config configs/train/ham10000_cpu.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(cfg) -> Path:
    from skinscan.config import TrainConfig, validate
    from skinscan.training import run as train

    cfg = cfg if isinstance(cfg, TrainConfig) else validate(TrainConfig, dict(cfg))
    return train(cfg)


if __name__ == "__main__":
    from skinscan.cli import main, run_job_from_env
    from skinscan.config import TrainConfig

    if "--from-env" in sys.argv:  # submitted with `skinscan submit`: the validated config travels as JSON
        sys.exit(run_job_from_env(TrainConfig, run))
    sys.exit(main(["train", *sys.argv[1:]]))
