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
