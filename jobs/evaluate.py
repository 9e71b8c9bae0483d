"""Ray job: evaluate a bundle (`python -m jobs.evaluate --set model=BUNDLE --set data=MANIFEST --set split=test`)."""

from skinscan.evaluation.run import run
from skinscan.submission import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("evaluate", run))
