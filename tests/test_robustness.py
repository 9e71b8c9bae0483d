"""Robustness as an adversarial user meets it: resume that refuses to mix results, stale rows named and pruned,
one-line errors before Ray starts, bounded waits, output metadata on every filesystem, untrusted input capped."""

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinscan.config import ScreenConfig, validate
from skinscan.screening.pipeline import screen, steady_rate
from skinscan.screening.writer import read_results

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tests.conftest import make_bundle

    return make_bundle(tmp_path_factory.mktemp("robust") / "cls")


def _jpeg(i: int, size: int = 48) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(i)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _folder(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img_{i}.jpg").write_bytes(_jpeg(i))
    return root


def _cfg(model, inp, out, **kw) -> ScreenConfig:
    base = {
        "model": str(model),
        "input": str(inp),
        "output": str(out),
        "explain": "none",
        "thumbnails": "none",
        "progress": False,
        "decode": {"batch_size": 4},
        "classify": {"batch_size": 8, "threads": 1},
        "rows_per_part": 3,
    }
    base.update(kw)
    return validate(ScreenConfig, base)


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skinscan.cli", "screen", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def _one_line(r: subprocess.CompletedProcess, *words: str) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("skinscan: error: "), r.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]


def test_a_rerun_with_another_configuration_is_refused_naming_what_differs(bundle, ray_local, tmp_path):
    inp = _folder(tmp_path / "in")
    out = tmp_path / "out"
    screen(_cfg(bundle, inp, out, explain="flagged", thumbnails="flagged"))
    before = read_results(str(out), ["uri", "backend"]).to_pandas()
    meta = json.loads((out / "skinscan_output.json").read_text())
    assert len(meta["makers"]) == 1 and meta["makers"][0]["backend"] == "onnxruntime"
    r = _cli("--model", bundle, "--input", inp, "--output", out, "--backend", "torch", "--explain", "none")
    _one_line(r, "holds rows made otherwise", "backend: 'onnxruntime' -> 'torch'", "explain", "--force-mixed")
    after = read_results(str(out), ["uri", "backend"]).to_pandas()
    assert after.sort_values("uri").equals(before.sort_values("uri"))  # nothing written, nothing lost
    assert "onnxruntime" in (out / "screen_config.yaml").read_text()  # still describes the rows
    # an explicit --force-mixed adds this configuration; every row still says what made it
    (inp / "img_new.jpg").write_bytes(_jpeg(99))
    s = screen(_cfg(bundle, inp, out, backend="torch", force_mixed=True))
    rows = read_results(str(out), ["uri", "backend"]).to_pandas()
    assert s["complete"] and len(rows) == 7 and rows["uri"].is_unique
    assert rows.set_index("uri")["backend"].to_dict()[str(inp / "img_new.jpg")] == "torch"
    assert json.loads((out / "skinscan_output.json").read_text())["mixed"] is True


def test_stale_rows_are_named_not_fatal_and_pruned(bundle, ray_local, tmp_path):
    inp = _folder(tmp_path / "in")
    out = tmp_path / "out"
    screen(_cfg(bundle, inp, out))
    (inp / "img_2.jpg").unlink()
    s = screen(_cfg(bundle, inp, out))
    assert s["complete"] and s["stale"] == 1 and s["stale_examples"] == [str(inp / "img_2.jpg")]
    parts_before = sorted(p.name for p in (out / "results").iterdir())
    s = screen(_cfg(bundle, inp, out, prune_stale=True))
    t = read_results(str(out), ["uri"]).to_pandas()
    assert (
        s["complete"]
        and s["stale"] == 0
        and s["rows"] == 5
        and sorted(t["uri"]) == sorted(str(p) for p in inp.iterdir())
    )
    parts_after = sorted(p.name for p in (out / "results").iterdir())
    assert len(set(parts_before) - set(parts_after)) == 1  # only the part that held the stale row was rewritten
    lines = (out / "summaries.jsonl").read_text().splitlines()
    assert len(lines) == 3  # every run appended


def test_user_mistakes_are_one_line_before_ray_starts(bundle, tmp_path):
    inp = _folder(tmp_path / "in", 2)
    (tmp_path / "afile").write_text("x")
    t0 = time.time()
    _one_line(_cli("--model", bundle, "--input", inp, "--output", tmp_path / "afile"), "is a file")
    _one_line(_cli("--model", bundle, "--input", inp, "--output", tmp_path / "afile" / "out"), "which is a file")
    _one_line(_cli("--model", bundle, "--input", inp, "--output", tmp_path / "o", "--backend", "tensorrt"), "TensorRT")
    _one_line(
        _cli("--model", bundle, "--input", inp, "--output", tmp_path / "o", "--address", "127.0.0.1:1"),
        "cannot reach a Ray cluster at 127.0.0.1:1",
    )
    _one_line(_cli("--model", tmp_path / "nobundle", "--input", inp, "--output", tmp_path / "o"), "not a model bundle")
    assert time.time() - t0 < 90  # no waits: every check fails fast
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _one_line(_cli("--model", bundle, "--input", inp, "--output", locked / "out"), "permission denied")


def test_output_metadata_and_summaries_on_s3(s3_server, bundle, tmp_path, monkeypatch, ray_local):
    from conftest import use_s3

    endpoint, fs = s3_server
    use_s3(monkeypatch, endpoint)
    inp = _folder(tmp_path / "in", 4)
    out = "s3://skinscan-test/robust-out"
    monkeypatch.chdir(tmp_path)
    screen(_cfg(bundle, inp, out))
    first = json.loads(fs.cat_file("skinscan-test/robust-out/summary.json"))
    screen(_cfg(bundle, inp, out))  # nothing to do: summary.json keeps the run that screened rows
    for name in ("skinscan_output.json", "screen_config.yaml", "summary.json", "summaries.jsonl"):
        assert fs.exists(f"skinscan-test/robust-out/{name}"), name
    assert not (tmp_path / "screen_config.yaml").exists()  # nothing written to the current directory
    assert json.loads(fs.cat_file("skinscan-test/robust-out/summary.json")) == first
    assert len(fs.cat_file("skinscan-test/robust-out/summaries.jsonl").splitlines()) == 2
    from skinscan.screening.report import write_report

    assert write_report(out) == f"{out}/report.html"  # beside the results, not in a local folder named "s3:"
    assert b"<html" in fs.cat_file("skinscan-test/robust-out/report.html")[:200].lower()
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())


def test_input_limits(bundle, ray_local, tmp_path):
    inp = _folder(tmp_path / "in", 2)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(_jpeg(7))
    (inp / "link.jpg").symlink_to(outside)
    (inp / "big.jpg").write_bytes(_jpeg(8, 400))  # a valid JPEG over the byte cap below
    (inp / "odd::name.jpg").write_bytes(_jpeg(9))  # a local name with `::` is read as it is
    big = len((inp / "big.jpg").read_bytes())
    s = screen(_cfg(bundle, inp, tmp_path / "out", max_input_bytes=big - 1))
    t = read_results(str(tmp_path / "out")).to_pandas().set_index("uri")
    assert s["rows"] == 5 and s["ok"] == 3 and t.loc[str(inp / "odd::name.jpg"), "status"] == "ok"
    assert t.loc[str(inp / "link.jpg"), "error_type"] == "refused"
    assert "outside the input folder" in t.loc[str(inp / "link.jpg"), "error_message"]
    assert t.loc[str(inp / "big.jpg"), "error_type"] == "too_large"
    assert pd.isna(t.loc[str(inp / "big.jpg"), "width"]) and pd.isna(t.loc[str(inp / "big.jpg"), "height"])
    assert t.loc[str(inp / "img_0.jpg"), "width"] == 48

    # archive: a member over the cap (a zip bomb inflates no further than cap + 1 bytes), a name with `::`
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.jpg", b"\0" * 5_000_000)
        zf.writestr("odd::name.jpg", _jpeg(3))
        zf.writestr("fine.jpg", _jpeg(4))
    s = screen(_cfg(bundle, tmp_path / "a.zip", tmp_path / "out_zip", max_input_bytes=100_000))
    t = read_results(str(tmp_path / "out_zip")).to_pandas()
    t["member"] = t["uri"].str.extract(r"^zip://(.*)::[^:]*$")[0]
    t = t.set_index("member")
    assert s["rows"] == 3 and t.loc["bomb.jpg", "error_type"] == "too_large"
    assert t.loc["odd::name.jpg", "status"] == "ok" and t.loc["fine.jpg", "status"] == "ok"

    # manifest URIs: only the allowed schemes are fetched
    manifest = pd.DataFrame({"image_id": ["a", "b"], "uri": [str(inp / "img_0.jpg"), "http://192.0.2.1/x.jpg"]})
    manifest.to_csv(tmp_path / "m.csv", index=False)
    s = screen(_cfg(bundle, tmp_path / "m.csv", tmp_path / "out_m"))
    t = read_results(str(tmp_path / "out_m")).to_pandas().set_index("image_id")
    assert t.loc["b", "error_type"] == "refused" and "'http'" in t.loc["b", "error_message"]
    assert t.loc["a", "status"] == "ok"


def test_pillow_is_new_enough():
    from importlib.metadata import version

    major, minor = (int(x) for x in version("pillow").split(".")[:2])
    assert (major, minor) >= (10, 3)
    import re

    declared = re.search(r'"pillow>=(\d+)\.(\d+)', (ROOT / "pyproject.toml").read_text().lower())
    assert declared and (int(declared[1]), int(declared[2])) >= (10, 3)  # the draft-mode decoder needs 10.3


def test_a_burst_of_parts_gives_no_steady_rate():
    arrivals = [(30.0 + 0.001 * k, 100 * (k + 1)) for k in range(50)]  # every part lands in 50 ms
    assert steady_rate(arrivals) is None


def test_terminal_is_quiet_and_no_ray_process_outlives_a_killed_driver(bundle, tmp_path):
    import signal

    import psutil

    inp = _folder(tmp_path / "in", 4)
    r = _cli("--model", bundle, "--input", inp, "--output", tmp_path / "o1", "--set", "progress=false", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.strip() == "", r.stderr[-2000:]  # Ray's notices, INFO and core-worker lines are in its logs
    assert "complete: True" in r.stdout

    big = _folder(tmp_path / "big", 400)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skinscan.cli",
            "screen",
            "--model",
            str(bundle),
            "--input",
            str(big),
            "--output",
            str(tmp_path / "o2"),
            "--set",
            "progress=false",
            "--set",
            "classify.batch_size=2",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    driver = psutil.Process(proc.pid)
    deadline = time.time() + 240
    while not list((tmp_path / "o2" / "results").glob("part-*.parquet")) and time.time() < deadline:
        time.sleep(0.5)
    ray_procs = [p for p in driver.children(recursive=True) if "skinscan.ray_connect" not in " ".join(p.cmdline())]
    assert len(ray_procs) >= 3  # GCS, raylet, workers (and agents) of the run's own Ray
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(ray_procs, timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]


def test_pixel_limit_is_checked_before_the_gpu_decoder(monkeypatch, tmp_path):
    """nvJPEG never sees an image over the pixel limit: the header is read first (the GPU itself is simulated)."""
    import torch

    from skinscan.screening import stages

    big = io.BytesIO()
    Image.new("RGB", (3000, 2000), (90, 60, 40)).save(big, "JPEG")
    (tmp_path / "big.jpg").write_bytes(big.getvalue())
    (tmp_path / "small.jpg").write_bytes(_jpeg(1, 64))
    seen = []

    def fake_gpu(datas, size, headers):
        seen.extend(len(d) for d in datas)
        return [np.zeros((size, size, 3), np.uint8) if d else None for d in datas]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(stages, "gpu_decode_jpegs", fake_gpu)
    uris = [str(tmp_path / "big.jpg"), str(tmp_path / "small.jpg")]
    out = stages.decode_batch(
        {"uri": np.array(uris, object), "image_id": np.array(["big", "small"], object)},
        32,
        0,
        max_pixels=1_000_000,
        gpu_decode=True,
    )
    assert list(out["status"]) == ["error", "ok"] and out["error_type"][0] == "too_large"
    assert seen == [0, len(_jpeg(1, 64))]  # the large file's bytes never reached the GPU decoder
    assert np.isnan(out["width"][0]) and out["width"][1] == 64  # sizes from the header on the GPU path too


def test_batches_with_and_without_error_rows_concatenate(bundle, tmp_path):
    """Ray hands an all-null Arrow column to the next stage as float NaN; the stages turn text columns back, so a
    part mixing a batch without errors and one with errors can be assembled (this once failed whole runs)."""
    import pyarrow as pa
    from ray.data._internal.arrow_ops.transform_pyarrow import concat
    from ray.data.block import BlockAccessor

    from skinscan.screening.stages import ClassifyStage, decode_batch

    inp = _folder(tmp_path / "in", 3)
    (inp / "empty.jpg").write_bytes(b"")
    stage = ClassifyStage(str(bundle), backend="torch", explain="none", threads=1, thumbnails="none")
    blocks = []
    for names in (["img_0.jpg", "img_1.jpg"], ["img_2.jpg", "empty.jpg"]):
        uris = np.array([str(inp / n) for n in names], object)
        decoded = decode_batch({"uri": uris, "image_id": uris}, 64, 0, 10**8)
        # through an Arrow block and back, as Ray Data hands a batch from one stage to the next
        block = BlockAccessor.batch_to_block(decoded)
        batch = BlockAccessor.for_block(block).to_batch_format("numpy")
        blocks.append(BlockAccessor.batch_to_block(stage(batch)))
    assert blocks[0].schema.field("error_type").type == pa.null()
    table = concat(blocks)
    assert table.column("error_type").to_pylist() == [None, None, None, "empty"]


def test_objects_are_read_concurrently_and_each_row_keeps_its_own_bytes(monkeypatch):
    """Per-request latency (an object store's 20-100 ms) is paid in parallel within a decode task; every row still
    gets its own input's bytes and its own error; archive members and local files are read in turn."""
    import threading

    from skinscan.data import storage
    from skinscan.screening.stages import decode_batch

    images = {f"s3://b/img_{i}.jpg": _jpeg(i) for i in range(16)}
    images["s3://b/missing.jpg"] = None
    active, peak = [0], [0]
    lock = threading.Lock()

    def slow_read(uri, max_bytes=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1
        if images[uri] is None:
            raise FileNotFoundError(uri)
        return images[uri]

    monkeypatch.setattr(storage, "read_bytes", slow_read)
    batch = {"uri": np.array(list(images), object), "image_id": np.array(list(images), object)}
    t0 = time.perf_counter()
    out = decode_batch(batch, 32, 0, 10**8, read_concurrency=16)
    assert time.perf_counter() - t0 < 0.9  # 17 reads of 0.1 s in turn would take 1.7 s
    assert peak[0] >= 8
    import hashlib

    for i, uri in enumerate(images):
        if images[uri] is None:
            assert out["status"][i] == "error" and out["error_type"][i] == "missing"
        else:
            assert out["status"][i] == "ok" and out["sha256"][i] == hashlib.sha256(images[uri]).hexdigest()
    peak[0] = 0
    decode_batch({"uri": batch["uri"][:4], "image_id": batch["uri"][:4]}, 32, 0, 10**8, read_concurrency=1)
    assert peak[0] == 1  # read_concurrency 1: in turn
