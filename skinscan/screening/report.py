"""`skinscan report`: one self-contained HTML page (no external files, no scripts) from a screening output.

Sections: run summary, class distribution (inline SVG), gallery of flagged lesions (thumbnail, mask outline,
heatmap overlay, probabilities), error list. Images are embedded as data URIs.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from skinscan.data import storage
from skinscan.data.taxonomy import CLASS_DESCRIPTIONS, ISIC2019_CLASSES, MALIGNANT
from skinscan.screening.schema import PROB_COLUMNS
from skinscan.screening.writer import HEAVY_COLUMNS, read_groups, read_results

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;
background:#f7f8fa}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #dde;padding-bottom:4px}
.muted{color:#667}.cards{display:flex;gap:12px;flex-wrap:wrap}
.warn{background:#fff3cd;border-left:4px solid #c0392b;padding:8px}
.card{background:#fff;border:1px solid #dde;border-radius:8px;padding:12px 16px;min-width:120px}
.card b{font-size:24px;display:block}.flag b{color:#b3261e}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #dde;padding:4px 8px;font-size:13px;text-align:left}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px}
.item{background:#fff;border:1px solid #dde;border-radius:8px;padding:10px}
.item img{width:128px;height:128px;image-rendering:auto;border-radius:4px}
.bar{height:8px;background:#e9ecf2;border-radius:4px;margin:2px 0 4px}.bar i{display:block;height:8px;border-radius:4px}
.p{font-size:12px;display:flex;justify-content:space-between}.id{font-size:12px;word-break:break-all}
"""


def _data_uri(img: np.ndarray | bytes, fmt: str = "JPEG") -> str:
    if isinstance(img, bytes):
        data = img
    else:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, fmt, quality=88)
        data = buf.getvalue()
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _bar_chart(counts: dict[str, int], width: int = 560) -> str:
    if not counts:
        return "<p class=muted>no classified images</p>"
    top = max(counts.values())
    rows = []
    for i, (c, n) in enumerate(sorted(counts.items(), key=lambda kv: -kv[1])):
        w = int((width - 240) * n / top)
        color = "#b3261e" if c in MALIGNANT else "#3b6fb6"
        rows.append(
            f'<text x="0" y="{i * 26 + 17}" font-size="13">{html.escape(c)} '
            f'<tspan fill="#667">{html.escape(CLASS_DESCRIPTIONS.get(c, ""))}</tspan></text>'
            f'<rect x="180" y="{i * 26 + 4}" width="{max(w, 1)}" height="18" rx="3" fill="{color}"/>'
            f'<text x="{186 + w}" y="{i * 26 + 17}" font-size="12">{n}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(counts) * 26 + 6}" '
        f'role="img" aria-label="class distribution">{"".join(rows)}</svg>'
    )


def _gallery_item(row: dict) -> str:
    from skinscan.explain.encode import decode_map
    from skinscan.explain.overlay import overlay

    thumb = np.asarray(Image.open(io.BytesIO(row["thumbnail_jpeg"])).convert("RGB"))
    size = thumb.shape[1], thumb.shape[0]
    mask = decode_map(row["mask_png"], size) > 0.5 if row.get("mask_png") else None
    outlined = overlay(thumb, None, mask) if mask is not None else thumb
    heat = overlay(thumb, decode_map(row["heatmap_png"]), mask) if row.get("heatmap_png") else None
    probs = sorted(
        (
            (c, row[f"prob_{c}"])
            for c in ISIC2019_CLASSES
            if row.get(f"prob_{c}") is not None and not np.isnan(row[f"prob_{c}"])
        ),
        key=lambda kv: -kv[1],
    )[:4]
    bars = "".join(
        f'<div class=p><span>{c}</span><span>{p:.2f}</span></div><div class=bar><i style="width:{p * 100:.0f}%;'
        f'background:{"#b3261e" if c in MALIGNANT else "#3b6fb6"}"></i></div>'
        for c, p in probs
    )
    area = (
        ""
        if row.get("lesion_area") is None or np.isnan(row["lesion_area"])
        else f" · lesion {row['lesion_area'] * 100:.0f}% of image"
    )
    heat_img = (
        f'<img src="{_data_uri(heat)}" alt="heatmap ({html.escape(str(row["heatmap_method"]))}) '
        f'for {html.escape(str(row["heatmap_class"]))}">'
        if heat is not None
        else ""
    )
    return (
        f"<div class=item><div class=id>{html.escape(row['image_id'])}{area}</div>"
        f'<img src="{_data_uri(outlined)}" alt="image with lesion outline">{heat_img}{bars}'
        f'<div class="muted id">{html.escape(row["uri"])}</div></div>'
    )


def _shift(result: dict | None) -> str:
    """Whether this archive looks like the validation split the operating point was chosen on."""
    from skinscan.evaluation.shift import describe
    from skinscan.screening.shiftcheck import describe_expected

    if not result or not result.get("psi"):
        return f"<p class=muted id=shift>{html.escape(describe(result)).capitalize()}.</p>"
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.2f}</td></tr>" for k, v in result["psi"].items())
    head = "<p class=warn id=shift><b>Warning:</b> " if result["shifted"] else "<p id=shift>Archive vs validation: "
    sentence = describe_expected(result.get("expected_per_1000"))
    expected = f" {sentence[0].upper()}{sentence[1:]}." if sentence else ""
    return (
        f"{head}{html.escape(describe(result))}.{expected}</p><details><summary>Population stability index per "
        f"feature ({result['rows_compared']} rows sampled; scores after re-mixing validation to the estimated case "
        f"mix)</summary><table>{table}</table></details>"
    )


def _operating_point(flag: dict, rule: str, s: dict) -> str:
    """The opening a programme reads first: the rule, what it gave on validation, what it did in this run."""
    rate = 1000 * s["flagged"] / max(1, s["ok"])
    here = f"This run flagged <b>{s['flagged']}</b> of {s['ok']} classified images ({rate:.0f} per 1,000)."
    points = flag.get("points") or {}
    if not points:
        return (
            f"<p>Rule: <code>{html.escape(rule)}</code>. {here} <span class=muted>No operating point chosen on "
            "validation is in the model card, so no expected sensitivity can be given: calibrate the bundle "
            "(<code>skinscan calibrate</code>).</span></p>"
        )
    lines = []
    for name, p in points.items():
        ci = p.get("val_sensitivity_ci")
        ci_s = f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else ""
        what = "melanoma" if name == "MEL" else "any malignant lesion" if name == "malignant" else name
        joint = p.get("chosen") == "joint"
        lines.append(
            f"<li><b>{html.escape(what)}</b>: P({'+'.join(p['classes'])}) &ge; {p['threshold']:.3f}, chosen "
            + ("with the other point so that the flag reaches " if joint else "for ")
            + f"sensitivity {p['target_sensitivity']:.2f}"
            + (f" at {p['target_confidence']:.0%} confidence" if p.get("target_confidence") else "")
            + (
                " (<b>not reached</b>: too few positives there; the threshold flags every one of them)"
                if p.get("bound_reached") is False
                else ""
            )
            + f" on {html.escape(str(p['chosen_on']))}"
            + (f" (the flag's there: <b>{p['val_flag_sensitivity']:.2f}</b>); this point alone: " if joint else ": ")
            + f"sensitivity {'' if joint else '<b>'}{p['val_sensitivity']:.2f}{'' if joint else '</b>'}{ci_s}, "
            f"specificity {p['val_specificity']:.2f}, {p['val_referrals_per_1000']:.0f} referrals per 1,000 there</li>"
        )
    w = flag.get("whole_flag_on_validation")
    if w:
        lines.append(
            f"<li><b>the flag as deployed</b> (any point): sensitivity <b>{w['sensitivity']:.2f}</b> (95% CI "
            f"{w['sensitivity_ci'][0]:.2f}-{w['sensitivity_ci'][1]:.2f}) for any malignant lesion, specificity "
            f"{w['specificity']:.2f}, {w['referrals_per_1000']:.0f} referrals per 1,000 there</li>"
        )
    return (
        f"<p>Images are flagged when any operating point of the model card fires. {here} Expected (on the "
        f"model's validation images, which may differ from this population):</p><ul id=operating>{''.join(lines)}"
        "</ul>"
    )


REPORT_COLUMNS = [
    *("uri", "image_id", "status", "error_type", "error_message", "flagged", "flag_rule", "model_id", "segmenter_id"),
    *("lesion_area", "heatmap_method", "heatmap_class", "t_decode_ms", "t_segment_ms", "t_classify_ms", "t_explain_ms"),
    *PROB_COLUMNS,
]
"""What the report reads of every row, a group of parts at a time (not sha256, versions, placement)."""
MAX_ERRORS = 500
"""Error rows listed in the report (all of them are in the results)."""


def write_report(output: str, path: str | None = None, max_flagged: int = 60) -> Path | str:
    """Write the report (default: beside the results, on whatever filesystem they are); returns its local path, or
    its URI on an object store."""
    import pandas as pd
    import pyarrow.compute as pc

    from skinscan.screening.output import read_summary
    from skinscan.screening.partindex import count_results

    s = count_results(output)
    target = path or f"{str(output).rstrip('/')}/report.html"
    top, errors, ids, sums, rule_seen = None, [], set(), {}, None
    # a group of parts at a time: what the page shows is kept (the riskiest flagged rows, the first errors, sums),
    # so memory is bounded by a group's rows, not by the output's millions
    for t in read_groups(output, REPORT_COLUMNS):
        is_ok = pc.fill_null(pc.equal(t["status"], "ok"), False)
        ok = t.filter(is_ok)
        is_flag = pc.fill_null(ok["flagged"], False)
        flagged = ok.filter(is_flag).to_pandas()
        mal_cols = [f"prob_{c}" for c in MALIGNANT if f"prob_{c}" in flagged]
        flagged["_risk"] = flagged[mal_cols].max(axis=1) if mal_cols else 0
        top = flagged if top is None else pd.concat([top, flagged], ignore_index=True)
        top = top.nlargest(max_flagged * 2, "_risk") if len(top) else top
        if len(errors) < MAX_ERRORS:
            bad = t.filter(pc.invert(is_ok)).select(["uri", "error_type", "error_message"])
            errors += bad.slice(0, MAX_ERRORS - len(errors)).to_pylist()
        ids |= {v for col in ("model_id", "segmenter_id") for v in pc.unique(ok[col]).to_pylist() if v is not None}
        for k in ("t_decode_ms", "t_segment_ms", "t_classify_ms", "t_explain_ms"):
            if ok[k].null_count < ok.num_rows:
                total, n = sums.get(k, (0.0, 0))
                sums[k] = (total + pc.sum(ok[k]).as_py(), n + ok.num_rows - ok[k].null_count)
        unflagged = ok.filter(pc.invert(is_flag))["flag_rule"].drop_null()
        rule_seen = rule_seen or (unflagged[0].as_py() if len(unflagged) else None)
    top = top.sort_values("_risk", ascending=False) if top is not None else pd.DataFrame(columns=["uri", "_risk"])
    # images only for the gallery's rows (flagged rows without a thumbnail are skipped, as before)
    images = read_results(output, ["uri", *HEAVY_COLUMNS], uris=top["uri"].tolist()).to_pandas()
    shown = top.merge(images, on="uri", how="inner")
    shown = shown[shown["thumbnail_jpeg"].notna()].sort_values("_risk", ascending=False).head(max_flagged)
    items = "".join(_gallery_item(r) for r in shown.to_dict("records"))
    n_errors, n_flagged = s["errors"], s["flagged"]
    err_rows = "".join(
        f"<tr><td class=id>{html.escape(str(r['uri']))}</td><td>{html.escape(str(r['error_type']))}</td>"
        f"<td>{html.escape(str(r['error_message']))}</td></tr>"
        for r in errors
    )
    models = ", ".join(sorted(ids)) or "-"
    timing = {k: total / n for k, (total, n) in sums.items()}
    run = read_summary(output)
    rule = run.get("flag", {}).get("rule") or rule_seen or "-"
    speed = f"{run['images_per_s']} images/s in the last run" if run.get("images_per_s") else ""
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width,initial-scale=1"><title>SkinScan screening report</title>
<style>{CSS}</style></head><body>
<h1>SkinScan screening report</h1>
<div class=muted>{html.escape(str(output))} · models {html.escape(models)} · {html.escape(speed)}</div>
<h2>Operating point</h2>
{_operating_point(run.get("flag", {}), rule, s)}
{_shift(run.get("shift"))}
<h2>Summary</h2>
<div class=cards>
<div class=card><b id=n-rows>{s["rows"]}</b>images</div>
<div class=card><b>{s["ok"]}</b>classified</div>
<div class="card flag"><b id=n-flagged>{s["flagged"]}</b>flagged ({html.escape(rule)})</div>
<div class=card><b id=n-errors>{s["errors"]}</b>errors</div>
</div>
<p class=muted>Mean time per image: {", ".join(f"{k[2:-3]} {v:.1f} ms" for k, v in timing.items()) or "-"}.
Screening output, not a diagnosis: flagged lesions need review by a clinician.</p>
<h2>Class distribution (predicted)</h2>
{_bar_chart(s["per_class"])}
<h2>Flagged lesions ({n_flagged}, highest risk first{
        f", first {len(shown)} shown" if len(shown) < n_flagged else ""
    })</h2>
<p class=muted>Left: image with the segmented lesion outline (green). Right: explanation heatmap for the
predicted class (red = strongest evidence). Bars: top class probabilities.</p>
<div class=gallery id=gallery>{items or "<p class=muted>nothing flagged</p>"}</div>
<h2>Errors ({n_errors}{f", first {MAX_ERRORS} shown" if n_errors > MAX_ERRORS else ""})</h2>
{
        "<table id=errors><tr><th>input</th><th>type</th><th>message</th></tr>" + err_rows + "</table>"
        if n_errors
        else "<p class=muted>none</p>"
    }
</body></html>"""
    storage.write_bytes(target, page.encode())  # atomic, folders made, on any filesystem
    return target if storage.is_remote(target) else Path(target)
