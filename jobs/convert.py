"""Ray job: export a bundle to ONNX / TensorRT with parity checks (`python -m jobs.convert --set model=BUNDLE`)."""

import json

from conversion.convert import run
from skinscan.submission import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("convert", lambda cfg: print(json.dumps(run(cfg), indent=2))))
