"""Screening on Ray Data: one row per input whatever the input, resume after a kill, actor failure, S3."""

import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
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
from tests.conftest import uninterrupted_probs

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

EXPECTED_ERRORS = {
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "not_an_image.jpg": "not_image",
    "too_large.png": "too_large",
}
MAX_PIXELS = 10_000_000  # the 4000x3000 file is "too large" under this limit


def _mixed_files(ham_images: list[Path]) -> dict[str, bytes]:
    from skinscan.data.synth import render

    files = {}
    for i, label in enumerate(["MEL", "NV", "BCC", "BKL"] * 4):
        buf = io.BytesIO()
        Image.fromarray(render(label, 64, np.random.default_rng(i))[0]).save(buf, "JPEG")
        files[f"synthetic/syn_{i:02d}.jpg"] = buf.getvalue()
    for p in ham_images:
        files[f"real/{p.name}"] = p.read_bytes()
    good = files["synthetic/syn_00.jpg"]
    files["broken/empty.jpg"] = b""
    files["broken/truncated.jpg"] = good[: len(good) // 3]
    files["broken/not_an_image.jpg"] = b"this is a text file, not a JPEG\n" * 20
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (120, 80, 60)).save(buf, "PNG")
    files["broken/too_large.png"] = buf.getvalue()
    return files


def _pack(files: dict[str, bytes], kind: str, root: Path) -> str:
    if kind == "folder":
        for name, data in files.items():
            (root / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "tree" / name).write_bytes(data)
        return str(root / "tree")
    if kind == "zip":
        with zipfile.ZipFile(root / "a.zip", "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return str(root / "a.zip")
    with tarfile.open(root / "a.tar.gz", "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(root / "a.tar.gz")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    ham = ROOT.parent / "shared" / "data" / "ham10000_200" / "images"
    real = sorted(ham.glob("*.jpg"))[:4] if ham.is_dir() else []
    isic = ROOT.parent / "shared" / "data" / "isic_archive" / "images"
    real += sorted(isic.glob("*.jpg"))[:1] if isic.is_dir() else []  # one full-resolution archive image
    return _mixed_files(real), len(real)


@pytest.fixture(scope="module")
def screen_bundles(tmp_path_factory):
    from tests.conftest import make_bundle

    root = tmp_path_factory.mktemp("screenmodels")
    return make_bundle(root / "cls"), make_bundle(root / "seg", "unet", {"base": 8, "depth": 3}, task="segment")


def _cfg(model, seg, inp, out, **kw) -> ScreenConfig:
    base = {
        "model": str(model),
        "segmenter": str(seg) if seg else None,
        "input": inp,
        "output": str(out),
        "explain": "all",
        "thumbnails": "all",
        "max_pixels": MAX_PIXELS,
        "progress": False,
        "decode": {"batch_size": 4},
        "classify": {"batch_size": 8, "threads": 1},
        "segment": {"batch_size": 8},
        "rows_per_part": 6,
    }
    base.update(kw)
    return validate(ScreenConfig, base)


def test_mixed_archives_one_row_per_input(mixed, screen_bundles, ray_local, tmp_path):
    """The same mixed files as a folder, a zip and a tar.gz: each listed in full, then all screened in one run
    (a manifest of the three listings): one row per input, the same rows whatever held the bytes."""
    from skinscan.data.listing import list_all

    files, n_real = mixed
    if n_real == 0:
        pytest.skip("real images from ../shared/data not found; the synthetic + corrupt part runs in other tests")
    listings = {}
    for kind in ("folder", "zip", "tar"):
        (tmp_path / kind).mkdir()
        listing = list_all(_pack(files, kind, tmp_path / kind)).to_pandas()
        assert len(listing) == len(files), kind  # every file of the archive or folder, once
        listings[kind] = listing.assign(kind=kind)
    manifest = pd.concat(listings.values(), ignore_index=True)
    manifest[["image_id", "uri"]].to_csv(tmp_path / "inputs.csv", index=False)
    summary = screen(_cfg(*screen_bundles, str(tmp_path / "inputs.csv"), tmp_path / "out"))
    everything = read_results(str(tmp_path / "out")).to_pandas().merge(manifest[["uri", "kind"]], on="uri")
    assert len(everything) == 3 * len(files) == summary["rows"] and summary["complete"]
    assert everything["uri"].is_unique
    for kind, t in everything.groupby("kind"):
        t = t.copy()
        t["name"] = t["uri"].str.replace(r"::.*$", "", regex=True).str.rsplit("/", n=1).str[-1]
        errors = t[t["status"] == "error"].set_index("name")["error_type"].to_dict()
        assert errors == EXPECTED_ERRORS, kind
        ok = t[t["status"] == "ok"]
        assert len(ok) == 16 + n_real, kind
        assert ok["predicted_class"].notna().all() and ok["sha256"].str.len().eq(64).all()
        assert ok["heatmap_png"].notna().all() and ok["mask_png"].notna().all()
        assert ok["lesion_area"].between(0, 1).all()
        assert ok["node_id"].str.len().gt(0).all() and ok["actor_id"].str.len().gt(0).all()  # who screened it
        probs = ok[[c for c in ok.columns if c.startswith("prob_")]].sum(axis=1, min_count=1)
        assert np.allclose(probs, 1.0, atol=1e-4)
        assert (t.loc[t["status"] == "error", "error_message"].str.len() > 0).all()
    by_name = everything[everything["status"] == "ok"].assign(
        name=lambda d: d["uri"].str.replace(r"::.*$", "", regex=True).str.rsplit("/", n=1).str[-1]
    )
    assert (by_name.groupby("name")["sha256"].nunique() == 1).all()  # the same bytes whatever held them


def test_output_readable_by_pandas_polars_duckdb(screen_bundles, ray_local, tmp_path, synth_zip):
    import duckdb
    import polars as pl

    s = screen(_cfg(*screen_bundles, f"zip://images::{synth_zip}", tmp_path / "o", explain="flagged"))
    assert 0 < s["startup_s"] < s["this_run_wall_s"]
    # a steady rate only where parts arrived over a fifth of the run or more (none for a burst)
    assert s["steady_images_per_s"] is None or s["steady_images_per_s"] > 0
    results = tmp_path / "o" / "results"
    a = pd.read_parquet(results)
    b = pl.read_parquet(str(results / "*.parquet"))
    c = duckdb.sql(f"select count(*), count(distinct uri) from read_parquet('{results}/*.parquet')").fetchall()[0]
    assert len(a) == b.height == c[0] == c[1] == 120
    assert a["schema_version"].eq(3).all() and (a["uri_key"] > 0).all() and a["img_mean_r"].between(0, 255).all()


def _run_screen_subprocess(cfg: ScreenConfig, cfg_path: Path) -> subprocess.Popen:
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg.model_dump()))
    env = {**os.environ, "RAY_ADDRESS": "local"}
    return subprocess.Popen(
        [sys.executable, "-m", "skinscan.cli", "screen", "--config", str(cfg_path)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_killed_run_resumes_to_exactly_one_row_each(screen_bundles, synth_zip, ray_local, tmp_path):
    model, seg = screen_bundles
    inp = f"zip://images::{synth_zip}"
    cfg = _cfg(
        model,
        None,
        inp,
        tmp_path / "killed",
        rows_per_part=4,
        decode={"batch_size": 2},
        classify={"batch_size": 2, "threads": 1},
    )
    proc = _run_screen_subprocess(cfg, tmp_path / "c.yaml")
    results = tmp_path / "killed" / "results"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(results.glob("part-*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    # the workers write the parts: a write already in its last syscall may land just after the kill; wait until
    # the killed run's processes are gone (no new part for 2 s) before counting what it left
    seen, stable_since = -1, time.time()
    while time.time() - stable_since < 2 and time.time() < deadline + 30:
        n = len(list(results.glob("part-*.parquet")))
        seen, stable_since = n, (stable_since if n == seen else time.time())
        time.sleep(0.2)
    partial = read_results(str(tmp_path / "killed"), ["uri"]).num_rows
    assert 0 < partial < 120, f"kill did not land mid-run ({partial} rows)"
    resumed = screen(cfg)  # the same command again
    assert resumed["this_run_rows"] == 120 - partial
    classes = ("MEL", "NV", "BCC", "BKL")
    a = read_results(str(tmp_path / "killed")).to_pandas().set_index("uri").sort_index()
    from skinscan.data.listing import list_all

    listed = sorted(list_all(inp).column("uri").to_pylist())
    assert a.index.is_unique and list(a.index) == listed  # every input exactly once
    straight = uninterrupted_probs(model, listed, classes)  # the stages called in this process, no kill, no Ray
    for uri, row in a.iterrows():
        probs = np.array([row[f"prob_{c}"] for c in classes])
        assert np.allclose(probs, straight[uri], atol=1e-5) and row["predicted_class"] == classes[probs.argmax()]


def test_killed_actor_is_restarted_and_no_row_lost(screen_bundles, synth_zip, ray_local, tmp_path):
    from ray.util.state import list_actors

    model, _ = screen_bundles
    cfg = _cfg(
        model,
        None,
        f"zip://images::{synth_zip}",
        tmp_path / "o",
        decode={"batch_size": 2},
        classify={"batch_size": 2, "threads": 1},
        rows_per_part=2,
    )
    killed = []
    address = ray_local.get_runtime_context().gcs_address  # this session's Ray, even if others run here

    def killer():
        results = tmp_path / "o" / "results"
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if list(results.glob("part-*.parquet")):
                for a in list_actors(address=address, filters=[("state", "=", "ALIVE")]):
                    if "ClassifyStage" in a.class_name and a.pid:
                        os.kill(a.pid, signal.SIGKILL)
                        killed.append(a.pid)
                        return
            time.sleep(0.1)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    summary = screen(cfg)
    th.join(5)
    assert killed, "no classifier actor was found to kill"
    assert summary["complete"] and summary["rows"] == 120 and summary["duplicates"] == 0
    t = read_results(str(tmp_path / "o"), ["uri", "status", "prob_MEL", "prob_NV", "prob_BCC", "prob_BKL"]).to_pandas()
    expected = uninterrupted_probs(model, t["uri"].tolist())  # identical rows to an uninterrupted run
    got = t[["prob_MEL", "prob_NV", "prob_BCC", "prob_BKL"]].to_numpy()
    assert t["uri"].is_unique and all(np.allclose(g, expected[u], atol=1e-5) for g, u in zip(got, t["uri"]))


def test_explainer_pool_gives_the_classifier_placement_maps(screen_bundles, synth_zip, ray_local, tmp_path):
    """The fast CAM gives the same maps in either placement; Grad-CAM runs in the explainer pool, which receives the
    images and the predicted classes (the classifier holds no copy of the model for it)."""
    from skinscan.data.listing import list_all
    from skinscan.explain.encode import decode_map

    model, _ = screen_bundles
    inp = str(tmp_path / "subset.parquet")  # a manifest of 24 of the archive's images: the placements, not volume
    list_all(f"zip://images::{synth_zip}").slice(0, 24).select(["image_id", "uri"]).to_pandas().to_parquet(inp)
    runs = {
        name: read_results(str(tmp_path / name)).to_pandas().set_index("uri").sort_index()
        for name, kw in {
            "here": {},
            "pool": {"explain_placement": "pool"},
            "gradcam": {"explain_method": "gradcam", "explainer": {"batch_size": 4, "threads": 1}},
        }.items()
        if screen(_cfg(model, None, inp, tmp_path / name, thumbnails="none", **kw))
    }
    here, pool, grad = runs["here"], runs["pool"], runs["gradcam"]
    assert list(here.index) == list(pool.index) == list(grad.index) and len(here) == 24
    assert (here["predicted_class"] == grad["predicted_class"]).all()
    assert (pool["heatmap_class"] == here["predicted_class"]).all()
    diff = [np.abs(decode_map(a) - decode_map(b)).max() for a, b in zip(here["heatmap_png"], pool["heatmap_png"])]
    assert max(diff) <= 2 / 255 + 1e-6  # ONNX Runtime features in one, PyTorch features in the other
    assert set(grad["heatmap_method"]) == {"gradcam"} and (grad["heatmap_class"] == grad["predicted_class"]).all()
    assert {decode_map(h).shape for h in grad["heatmap_png"]} == {(8, 8)} and (grad["t_explain_ms"] > 0).all()


def test_classifier_holds_no_model_for_methods_that_need_it_again(screen_bundles):
    from skinscan.screening.stages import ClassifyStage, ExplainStage, decode_batch

    model, _ = screen_bundles
    cls = ClassifyStage(str(model), backend="torch", explain="all", method="gradcam", threads=1)
    assert cls.model is None and cls.defer
    img = io.BytesIO()
    Image.new("RGB", (64, 64), (150, 90, 70)).save(img, "JPEG")
    path = Path(model).parent / "one.jpg"
    path.write_bytes(img.getvalue())
    batch = decode_batch({"uri": np.array([str(path)], object), "image_id": np.array(["one"], object)}, 64, 0, 10**7)
    out = cls(batch)
    assert out["explain_wanted"].tolist() == [True] and "work" in out and out["heatmap_png"][0] is None
    done = ExplainStage(str(model), "gradcam", device="cpu")(out)
    assert "work" not in done and "explain_wanted" not in done and done["heatmap_method"][0] == "gradcam"


def test_bad_config_and_inputs_are_clean_errors(screen_bundles, tmp_path):
    from skinscan.errors import ConfigError, DataError

    model, seg = screen_bundles
    with pytest.raises(ConfigError, match="not a classifier"):
        screen(_cfg(seg, None, str(tmp_path), tmp_path / "o"))
    with pytest.raises(DataError, match="not found"):
        screen(_cfg(model, None, str(tmp_path / "absent.zip"), tmp_path / "o"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "skinscan.cli",
            "screen",
            "--model",
            str(model),
            "--input",
            str(tmp_path),
            "--set",
            "explain=sometimes",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "config key explain" in out.stderr and "Traceback" not in out.stderr


from conftest import use_s3  # noqa: E402


def test_screen_archive_on_s3(s3_server, screen_bundles, synth_zip, tmp_path, monkeypatch, ray_local):
    endpoint, fs = s3_server
    fs.put(str(synth_zip), "skinscan-test/archive/synth.zip")
    use_s3(monkeypatch, endpoint)
    model, _ = screen_bundles
    summary = screen(_cfg(model, None, "zip://images::s3://skinscan-test/archive/synth.zip", tmp_path / "o"))
    assert summary["rows"] == 120 and summary["ok"] == 120
    t = read_results(str(tmp_path / "o"), ["uri"]).to_pandas()
    assert t["uri"].str.endswith("::s3://skinscan-test/archive/synth.zip").all()


def test_steady_rate_skips_start_up_and_the_first_burst():
    # 10 s of start-up, then a burst of 40 queued rows, then 10 rows/s
    arrivals = [(10.0, 20), (10.1, 40)] + [(10.1 + k, 40 + 10 * k) for k in range(1, 37)]
    assert steady_rate(arrivals) == pytest.approx(10.0)
    assert steady_rate(arrivals[:2]) is None  # too few batches to tell
