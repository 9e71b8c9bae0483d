"""Ray job: screen an image archive (same code as `skinscan screen`).

ray job submit --working-dir . -- python jobs/screen.py --config configs/screen/local_cpu.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(cfg) -> dict:
    from skinscan.config import ScreenConfig, validate
    from skinscan.screening.pipeline import print_summary, screen

    cfg = cfg if isinstance(cfg, ScreenConfig) else validate(ScreenConfig, dict(cfg))
    summary = screen(cfg)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    from skinscan.cli import main, run_job_from_env
    from skinscan.config import ScreenConfig

    if "--from-env" in sys.argv:  # submitted with `skinscan submit`: the validated config travels as JSON
        sys.exit(run_job_from_env(ScreenConfig, run))
    sys.exit(main(["screen", *sys.argv[1:]]))
