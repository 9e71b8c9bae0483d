"""The HTML report: self-contained, and it renders in a real headless browser."""

import re

import pytest

from skinscan.screening.report import write_report

pytestmark = pytest.mark.slow


def test_report_renders_in_headless_chromium(tmp_path, tiny_bundles, synth_zip, ray_local):
    from skinscan.config import ScreenConfig, validate
    from skinscan.errors import MissingDependency
    from skinscan.screening.browser import find_chromium, render
    from skinscan.screening.pipeline import screen

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    import zipfile

    with zipfile.ZipFile(synth_zip) as zf:
        for name in zf.namelist()[:40]:
            if name.startswith("images/"):
                (tmp_path / "in" / name.split("/")[-1]).write_bytes(zf.read(name))
    cfg = validate(
        ScreenConfig,
        {
            "model": str(tiny_bundles["swin"]),
            "segmenter": str(tiny_bundles["unet"]),
            "input": str(tmp_path / "in"),
            "output": str(tmp_path / "out"),
            "explain": "all",
            "flag": {"threshold": 0.0},
            "progress": False,
        },
    )
    summary = screen(cfg)
    path = write_report(str(tmp_path / "out"))
    text = path.read_text()
    assert not re.search(r'(src|href)="(?!data:)', text), "report must not reference external files"
    try:
        find_chromium()
    except MissingDependency as err:
        pytest.skip(f"browser check not possible: {err}")
    dom = render(path, tmp_path / "report.png")
    assert f'id="n-rows">{summary["rows"]}<' in dom
    assert dom.count('class="item"') == summary["flagged"] > 0
    assert "broken.jpg" in dom
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
