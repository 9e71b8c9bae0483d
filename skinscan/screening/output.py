"""What a screening output says about itself, beside its rows, on any filesystem (written atomically):

OUTPUT/skinscan_output.json   schema version and every configuration that made rows here (`makers`)
OUTPUT/screen_config.yaml     the resolved config of the latest run
OUTPUT/summary.json           the latest run that screened rows (a no-op rerun leaves it alone)
OUTPUT/summaries.jsonl        one line per run, appended

A rerun whose maker differs from the output's (another model, segmenter, backend, explanation policy, flag rule,
calibration, schema, precision, decoder, input limits or exported engine) is refused before anything runs, naming
what differs: one output, one kind of row, unless the user passes `force_mixed` (every row records its model,
backend and rule, so mixed rows stay readable)."""

from __future__ import annotations

import json
import time

import yaml

from skinscan.config import ScreenConfig
from skinscan.data import storage
from skinscan.errors import ConfigError
from skinscan.screening.schema import SCHEMA_VERSION

META = "skinscan_output.json"


def check_writable(output: str) -> None:
    """A local output must be a folder this process can create and write in: one line otherwise, before Ray
    starts (object stores: the first metadata write says the same)."""
    import os
    import tempfile
    from pathlib import Path

    if storage.is_remote(output):
        return
    path = Path(storage.normalize(output).removeprefix("file://"))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output {output} is a file, not a folder: give a folder path")
    for up in path.parents:
        if up.exists():
            if not up.is_dir():
                raise ConfigError(f"output {output} is under {up}, which is a file")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except PermissionError:
        raise ConfigError(f"output {output}: permission denied (cannot create or write files there)") from None
    except OSError as err:
        raise ConfigError(f"output {output}: cannot write there ({err.strerror or err})") from None


def maker(cfg: ScreenConfig) -> dict:
    """The settings that decide what a row contains (not batch sizes, devices or the input)."""
    from skinscan.models.bundle import read_card
    from skinscan.models.calibration import screening_rule

    card = read_card(cfg.model)
    seg = read_card(cfg.segmenter) if cfg.segmenter else None
    return {
        "schema_version": SCHEMA_VERSION,
        "model": card.model_id,
        "model_weights_sha256": card.weights_sha256,
        "segmenter": seg.model_id if seg else None,
        "backend": cfg.backend,
        "explain": cfg.explain if cfg.explain == "none" else f"{cfg.explain}:{cfg.explain_method}",
        "flag_rule": screening_rule(card, cfg.flag.threshold, cfg.flag.classes).describe(),
        "temperature": card.temperature,
        "class_bias": card.class_bias,  # the training prior undone (calibrate --prior bias): other probabilities
        "crop_to_lesion": cfg.crop_to_lesion,
        "thumbnails": cfg.thumbnails,
        "precision": cfg.precision,
        "gpu_decode": cfg.gpu_decode,  # nvJPEG's pixels are not Pillow's
        "max_pixels": cfg.max_pixels,  # which inputs become error rows
        "max_input_bytes": cfg.max_input_bytes,
        "export_sha256": _export_sha256(cfg, card),
    }


def _export_sha256(cfg: ScreenConfig, card) -> str | None:
    """The sha256 of the ONNX file or TensorRT engine the backend loads (None for torch, whose weights are in
    the maker already, and for an ONNX file not exported yet)."""
    suffix = "_fp16" if cfg.precision == "fp16" else ""
    key = {"onnxruntime": "onnx", "tensorrt": "tensorrt"}.get(cfg.backend)
    entry = card.exports.get(key + suffix) if key else None
    return entry.sha256 if entry else None


def _default(name: str):
    return ScreenConfig.model_fields[name].default


MAKER_DEFAULTS = {
    **{k: _default(k) for k in ("precision", "gpu_decode", "max_pixels", "max_input_bytes")},
    "export_sha256": None,
    "class_bias": None,
}
"""Settings makers record since outputs began to record these: an older output's maker, which lacks them, is read
with their defaults (`class_bias` None: no offsets, as cards calibrated before them). `export_sha256` None (not
recorded, not exported yet) matches any."""


def differences(old: dict, new: dict) -> dict[str, tuple]:
    """Per setting that differs between two makers: (old, new)."""
    diff = {}
    for k in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(k, MAKER_DEFAULTS.get(k)), new.get(k, MAKER_DEFAULTS.get(k))
        if k == "schema_version" and a is not None and b is not None and a <= b:
            continue  # older parts are read with the current schema: a newer version adds to an output
        if a != b and not (k == "export_sha256" and (a is None or b is None)):
            diff[k] = (a, b)
    return diff


def _path(output: str, name: str) -> str:
    return storage.join(storage.normalize(output), name)


def read_meta(output: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(_path(output, META)))
    except FileNotFoundError:
        return None


def check_and_record(cfg: ScreenConfig, has_rows: bool, force_mixed: bool = False) -> dict:
    """Refuse a run that would mix its rows with rows made otherwise; record this run's maker and config."""
    this = maker(cfg)
    meta = read_meta(cfg.output)
    if has_rows and meta is None and not force_mixed:
        raise ConfigError(
            f"{cfg.output} holds results without {META} (written before outputs recorded what made them): use "
            "another output, or --force-mixed to add rows to it"
        )
    makers = list((meta or {}).get("makers", [])) if has_rows else []
    same = next((i for i, m in enumerate(makers) if not differences(m, this)), None)
    if makers and same is None and not force_mixed:
        diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differences(makers[-1], this).items())
        raise ConfigError(
            f"{cfg.output} holds rows made otherwise ({diff}): use another output, or --force-mixed to add rows "
            "of this configuration (each row records its model, backend and flag rule)"
        )
    if same is None:
        makers.append(this)
    else:  # the same maker, now with every setting recorded (an older output's, or an export made since)
        makers[same] = {**makers[same], **{k: v for k, v in this.items() if v is not None or k not in makers[same]}}
    record = {"schema_version": SCHEMA_VERSION, "makers": makers, "mixed": len(makers) > 1}
    if record != meta:
        storage.write_bytes(_path(cfg.output, META), json.dumps(record, indent=2).encode())
    config = yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False).encode()
    storage.write_bytes(_path(cfg.output, "screen_config.yaml"), config)
    return record


def record_summary(output: str, summary: dict) -> None:
    """Append the run to summaries.jsonl; the latest run that screened rows also goes to summary.json."""
    line = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary}
    try:
        old = storage.read_bytes(_path(output, "summaries.jsonl"))
    except FileNotFoundError:
        old = b""
    storage.write_bytes(_path(output, "summaries.jsonl"), old + json.dumps(line).encode() + b"\n")
    if summary.get("this_run_rows") or not storage.exists(_path(output, "summary.json")):
        storage.write_bytes(_path(output, "summary.json"), json.dumps(line, indent=2).encode())


def read_summary(output: str) -> dict:
    try:
        return json.loads(storage.read_bytes(_path(output, "summary.json")))
    except FileNotFoundError:
        return {}
