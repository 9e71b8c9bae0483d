import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "skinscan.cli", *args], capture_output=True, text=True)


def test_help_lists_subcommands():
    out = _run("--help")
    assert out.returncode == 0
    for cmd in ("data",):
        assert cmd in out.stdout


def test_bad_input_is_one_line_not_a_traceback(tmp_path):
    out = _run("data", "synth", "-o", str(tmp_path / "s.zip"), "--set", "size=5")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "config key size" in out.stderr
    assert "Traceback" not in out.stderr
    out = _run("data", "manifest", str(tmp_path / "missing.zip"), "-o", str(tmp_path / "m.csv"))
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr


def test_synth_then_manifest_then_split(tmp_path):
    assert _run("data", "synth", "-o", str(tmp_path / "s.tar"), "--n", "40", "--size", "48", "-q").returncode == 0
    out = _run("data", "split", str(tmp_path / "s.tar"), "-o", str(tmp_path / "split.csv"))
    assert out.returncode == 0, out.stderr
    assert "after" in out.stdout and (tmp_path / "split.config.yaml").exists()


def test_cli_starts_without_loading_torch_or_grad_cam():
    code = "import sys, skinscan.cli; skinscan.cli.build_parser(); print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    code = "import sys, skinscan.explain.registry; print('pytorch_grad_cam' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", "the forward-only path must not load pytorch-grad-cam"


def test_submit_makes_config_paths_reachable_from_the_job(tmp_path, monkeypatch):
    """A job runs in a copy of the project without runs/: relative paths become absolute for a cluster on this
    machine; for another machine a local path is one line naming the key, before anything is sent."""
    from pathlib import Path

    import pytest

    from skinscan.config import ScreenConfig, TrainConfig
    from skinscan.errors import SkinScanError
    from skinscan.submission import ROOT, reachable_locations

    monkeypatch.chdir(tmp_path)
    cfg = ScreenConfig(model="runs/demo/classifier", input="zip://images::runs/demo/synth.zip", output="s3://b/out")
    got = reachable_locations(cfg, "http://127.0.0.1:8275")
    assert got.model == str(tmp_path / "runs/demo/classifier")
    assert got.input == f"zip://images::{tmp_path / 'runs/demo/synth.zip'}" and got.output == "s3://b/out"
    assert cfg.model == "runs/demo/classifier"  # the caller's config is left as it was
    with pytest.raises(SkinScanError, match=r"config key model: runs/demo/classifier is a path on this machine"):
        reachable_locations(cfg, "http://10.0.0.5:8265")
    assert reachable_locations(cfg, "http://10.0.0.5:8265", paths_on_cluster=True).model == "runs/demo/classifier"
    shipped = str(ROOT / "configs/screen/gpu_cluster.yaml")  # a project file travels with the job
    from skinscan.config import ConvertConfig

    conv = reachable_locations(ConvertConfig(model="s3://b/m", screen_config=shipped), "http://10.0.0.5:8265")
    assert conv.screen_config == "configs/screen/gpu_cluster.yaml"
    train = TrainConfig.model_validate({"data": {"source": "s3://b/d.csv"}, "extra_data": [{"source": "x.csv"}]})
    with pytest.raises(SkinScanError, match="config key extra_data.0.source"):
        reachable_locations(train.model_copy(update={"output": "s3://b/m", "storage_path": "s3://b/r"}), "http://h:1")
    assert Path(reachable_locations(train, "http://localhost:8265").extra_data[0].source).is_absolute()


def test_without_an_address_a_command_starts_its_own_ray(monkeypatch):
    """No --address and no RAY_ADDRESS: a Ray of the command's own ("a local Ray", as --help says), never the
    cluster a `ray start` on this machine last recorded (Ray's default for address=None would join that one)."""
    import ray

    from skinscan import ray_connect

    seen: dict = {}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray_connect, "start_reaper", lambda: seen.update(reaper=True))
    monkeypatch.setattr(ray_connect, "_quiet_ray_data_console", lambda: None)  # leaves this process's loggers be
    ray_connect.connect(None, 1)
    assert seen["address"] == "local" and seen["reaper"]
