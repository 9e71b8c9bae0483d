"""Ray job: screen an archive (`python -m jobs.screen --config configs/screen/local_cpu.yaml --set input=...`)."""

from skinscan.screening.pipeline import run
from skinscan.submission import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("screen", run))
