"""Ray job: train a classifier or segmenter (`python -m jobs.train --config configs/train/ham10000_cpu.yaml`)."""

from skinscan.submission import job_main
from skinscan.training import run

if __name__ == "__main__":
    raise SystemExit(job_main("train", run))
