"""Pipeline stages. Pure CPU transforms are functions (testable without Ray); model stages are callable
classes that load their model once per actor (`__init__`) and process a batch per call (`__call__`).

Batches are dicts of numpy arrays (Ray Data's "numpy" format). Rows whose `status` is `error` pass through
every model stage untouched, so each input yields exactly one output row.
"""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from skinscan.data.gpu_decode import gpu_decode_jpegs, read_header
from skinscan.data.imageio import decode_image, resize_square
from skinscan.data.manifest import METADATA_COLUMNS
from skinscan.data.metadata import encode_frame, known
from skinscan.data.preprocess import normalize_batch
from skinscan.data.storage import DEFAULT_SCHEMES
from skinscan.data.taxonomy import ISIC2019_CLASSES
from skinscan.errors import ImageDecodeError
from skinscan.evaluation.shift import IMAGE_STATS, image_stats
from skinscan.explain.encode import encode_map
from skinscan.models.calibration import card_probs, screening_rule
from skinscan.screening.schema import PROB_COLUMNS, SCHEMA, SCHEMA_VERSION


def _obj(values) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


_TEXT_COLUMNS = frozenset(f.name for f in SCHEMA if f.type in (pa.string(), pa.binary())) | {"sex", "site"}


def text_back(batch: dict) -> dict:
    """Ray hands a column that was all null in its Arrow block to the next stage as float NaN. Text and binary
    columns of the schema go back to object arrays of None, so that blocks with and without error rows still
    concatenate (a float `error_type` beside a string one fails the whole run)."""
    for k in _TEXT_COLUMNS & batch.keys():
        v = batch[k]
        if getattr(v, "dtype", None) is not None and v.dtype.kind == "f":
            batch[k] = np.full(len(v), None, object)
    return batch


def decode_batch(
    batch: dict,
    work_size: int,
    thumb_size: int,
    max_pixels: int,
    gpu_decode: bool = False,
    max_bytes: int | None = None,
    allowed_schemes=DEFAULT_SCHEMES,
    input_root: str | None = None,
    read_concurrency: int = 1,
) -> dict:
    """Read bytes, hash, decode (JPEG draft mode to `work_size`, or nvJPEG on the GPU), resize; failures become
    error rows. `thumb_size` 0: no thumbnails. Before anything is read: the URI's scheme and, for a folder input
    (`input_root`), where a symbolic link leads; while reading: `max_bytes`; before any decoder (GPU included): the
    pixel count from the header. GPU decoding gives the CPU path's pixels within a stated tolerance
    (`gpu_decode_jpegs`)."""
    from skinscan.data.storage import TooLarge, is_remote, read_bytes, refused, split_chained

    uris = list(batch["uri"])
    n = len(uris)
    t0 = time.perf_counter()
    work = np.zeros((n, work_size, work_size, 3), np.uint8)
    thumb = np.zeros((n, thumb_size, thumb_size, 3), np.uint8) if thumb_size else None
    sha, status, etype, emsg = [None] * n, ["ok"] * n, [None] * n, [None] * n
    width, height = np.full(n, np.nan), np.full(n, np.nan)  # null in error rows

    def read(uri: str):
        why = refused(uri, allowed_schemes, input_root)
        try:
            if why:
                raise ImageDecodeError(uri, "refused", why)
            return read_bytes(uri, max_bytes)
        except TooLarge as err:
            return ImageDecodeError(uri, "too_large", str(err))
        except Exception as err:  # noqa: BLE001 - recorded as an error row below
            return err

    # objects (s3://, gs://): ~20-100 ms a request, paid in parallel, not in turn; archive members and local files
    # in turn (a tar or gzip stream is one file position, and a local read is short)
    remote = [i for i, u in enumerate(uris) if is_remote(u) and not split_chained(u)]
    later = set(remote)
    datas: list = [None if i in later else read(u) for i, u in enumerate(uris)]
    if read_concurrency > 1 and len(remote) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(read_concurrency, len(remote))) as pool:
            for i, data in zip(remote, pool.map(read, [uris[i] for i in remote])):
                datas[i] = data
    else:
        for i in remote:
            datas[i] = read(uris[i])
    gpu: list = [None] * n
    if gpu_decode:
        import torch

        if torch.cuda.is_available():
            to_gpu, headers = [b""] * n, [None] * n
            for i, d in enumerate(datas):
                if isinstance(d, bytes):
                    try:
                        headers[i] = read_header(d, uris[i], max_pixels)
                    except ImageDecodeError as err:
                        datas[i] = err
                        continue
                    if headers[i] is not None:
                        w, h, orientation = headers[i]
                        width[i], height[i] = (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # as the CPU path
                        to_gpu[i] = d
            gpu = gpu_decode_jpegs(to_gpu, work_size, headers)
    for i, uri in enumerate(uris):
        try:
            data = datas[i]
            if isinstance(data, Exception):
                raise data
            sha[i] = hashlib.sha256(data).hexdigest()
            if gpu[i] is not None:
                work[i] = gpu[i]
                if thumb is not None:
                    thumb[i] = resize_square(Image.fromarray(gpu[i]), thumb_size)
                continue
            im = decode_image(data, uri, max_pixels=max_pixels, draft_size=work_size)
            width[i], height[i] = im.info.get("original_size", im.size)
            work[i] = resize_square(im, work_size)
            if thumb is not None:
                thumb[i] = resize_square(im, thumb_size)
        except ImageDecodeError as err:
            status[i], etype[i], emsg[i] = "error", err.kind, str(err)
        except FileNotFoundError:
            status[i], etype[i], emsg[i] = "error", "missing", f"{uri}: file not found"
        except Exception as err:  # noqa: BLE001 - any read failure is recorded in the row, never fatal
            status[i], etype[i], emsg[i] = "error", "read_error", f"{uri}: {type(err).__name__}: {err}"
    stats = np.full((n, len(IMAGE_STATS)), np.nan, np.float32)
    ok = [i for i in range(n) if status[i] == "ok"]
    if ok:  # of the whole decoded image, before any crop or colour constancy: what the camera gave
        stats[ok] = image_stats(work[ok])
    dt = (time.perf_counter() - t0) * 1000 / max(1, n)
    out = {
        "image_id": _obj(batch["image_id"]),
        "uri": _obj(uris),
        "sha256": _obj(sha),
        "status": _obj(status),
        "error_type": _obj(etype),
        "error_message": _obj(emsg),
        "width": width,
        "height": height,
        "work": work,
        **{col: stats[:, j] for j, col in enumerate(IMAGE_STATS)},
        "t_decode_ms": np.full(n, dt, np.float32),
    }
    if thumb is not None:
        out["thumb"] = thumb
    for col in METADATA_COLUMNS:  # for a classifier that reads them (dropped there)
        if col in batch:
            out[col] = batch[col]
    return out


def mask_stats(mask: np.ndarray) -> tuple[float, tuple[float, float, float, float] | None]:
    """Lesion area share and bounding box (x0, y0, x1, y1 as fractions) of a boolean mask."""
    area = float(mask.mean())
    if not mask.any():
        return area, None
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return area, (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)


def crop_to_box(img: np.ndarray, box, pad: float = 0.15) -> np.ndarray:
    """Crop an HWC image to a fractional box grown by `pad` on each side, resized back to the same size."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    x0, x1 = max(0.0, x0 - pad * bw), min(1.0, x1 + pad * bw)
    y0, y1 = max(0.0, y0 - pad * bh), min(1.0, y1 + pad * bh)
    crop = img[
        int(y0 * h) : max(int(y0 * h) + 1, int(np.ceil(y1 * h))),
        int(x0 * w) : max(int(x0 * w) + 1, int(np.ceil(x1 * w))),
    ]
    return resize_square(Image.fromarray(crop), h)


def _resize_batch(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[1] == size:
        return arr
    return np.stack([resize_square(Image.fromarray(a), size) for a in arr])


def _placement() -> tuple[str | None, str | None]:
    """(Ray node id, actor id) of the calling actor; (None, None) outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return None, None
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ctx.get_actor_id()
    except Exception:  # noqa: BLE001 - provenance is best effort, never fatal
        return None, None


class SegmentStage:
    """U-Net: lesion mask, area and bounding box; optionally crops `work` to the lesion for the classifier."""

    def __init__(
        self,
        bundle: str,
        backend: str = "onnxruntime",
        device: str = "auto",
        threads: int = 1,
        crop_to_lesion: bool = False,
        precision: str = "fp32",
        compile: bool = False,
    ):
        from skinscan.runtime import create_predictor

        self.predictor = create_predictor(
            bundle, backend, with_features=False, device=device, threads=threads, precision=precision, compile=compile
        )
        self.card = self.predictor.card
        self.size = self.card.input_size
        self.crop = crop_to_lesion
        self.id = self.card.model_id

    def __call__(self, batch: dict) -> dict:
        batch = text_back(batch)
        t0 = time.perf_counter()
        n = len(batch["uri"])
        ok = np.flatnonzero(batch["status"] == "ok")
        area = np.full(n, np.nan, np.float32)
        boxes = np.full((n, 4), np.nan, np.float32)
        masks = [None] * n
        if len(ok):
            x = normalize_batch(_resize_batch(batch["work"][ok], self.size), self.card.normalization)
            pred = self.predictor.predict(x).outputs[0][:, 0] > 0
            for j, i in enumerate(ok):
                a, box = mask_stats(pred[j])
                area[i] = a
                masks[i] = encode_map(pred[j])
                if box is not None:
                    boxes[i] = box
                    if self.crop:
                        batch["work"][i] = crop_to_box(batch["work"][i], box)
        batch.update(
            {
                "lesion_area": area,
                "bbox_x0": boxes[:, 0],
                "bbox_y0": boxes[:, 1],
                "bbox_x1": boxes[:, 2],
                "bbox_y1": boxes[:, 3],
                "mask_png": _obj(masks),
                "mask_size": np.full(n, self.size, np.int32),
                "segmenter_id": _obj([self.id] * n),
                "t_segment_ms": np.full(n, (time.perf_counter() - t0) * 1000 / max(1, n), np.float32),
            }
        )
        return batch


HEATMAP_LAYER = "features (last stage)"


def heatmap_columns(method: str, heat: list, classes: list, h: np.ndarray, w: np.ndarray) -> dict:
    """The heatmap columns of a batch (method and layer only where a map was made), whichever stage made them."""
    return {
        "heatmap_png": _obj(heat),
        "heatmap_method": _obj([method if m is not None else None for m in heat]),
        "heatmap_layer": _obj([HEATMAP_LAYER if m is not None else None for m in heat]),
        "heatmap_class": _obj(classes),
        "heatmap_h": h,
        "heatmap_w": w,
    }


class ClassifyStage:
    """Classifier (any runtime backend) + flag rule + explanations + thumbnails; emits final rows."""

    def __init__(
        self,
        bundle: str,
        backend: str = "onnxruntime",
        device: str = "auto",
        threads: int = 2,
        explain: str = "flagged",
        method: str = "fast",
        flag_classes=("MEL", "BCC", "SCC", "AK"),
        threshold: float | None = None,
        thumbnails: str = "flagged",
        explain_here: bool = True,
        precision: str = "fp32",
        compile: bool = False,
    ):
        import torch

        from skinscan import __version__
        from skinscan.explain.registry import get_method
        from skinscan.models import head_weights
        from skinscan.models.bundle import load_bundle
        from skinscan.runtime import create_predictor

        torch.set_num_threads(threads)
        self.explain, self.method, self.thumbnails = explain, method, thumbnails
        # here: only the forward-only fast CAM, from the features this actor's backend computes anyway; anything
        # else goes on to the explainer pool with the images (`ExplainStage`), so no model copy lives here
        self.here = explain != "none" and explain_here and get_method(method).needs == "features"
        self.defer = explain != "none" and not self.here
        self.predictor = create_predictor(
            bundle,
            backend,
            with_features=self.here,
            device=device,
            threads=threads,
            precision=precision,
            compile=compile,
        )
        self.card = self.predictor.card
        self.classes = self.card.class_names
        self.size = self.card.input_size
        self.model, self.head_w = None, None
        if self.here:
            self.model, _ = load_bundle(bundle)
            self.head_w = head_weights(self.model)[0].numpy()
        # the card's operating points (chosen on validation) unless the config sets a fixed threshold
        self.rule = screening_rule(self.card, threshold, list(flag_classes))
        self.backend = backend
        self.id = self.card.model_id
        self.version = f"{self.card.created or '?'} skinscan {__version__}"
        self.node_id, self.actor_id = _placement()

    def _explain(self, x: np.ndarray, feats: np.ndarray | None, cls: np.ndarray) -> list[np.ndarray]:
        import torch

        from skinscan.explain.registry import explain, storage_form

        maps = explain(self.method, self.model, torch.from_numpy(x), cls, features=feats, head_w=self.head_w)
        return list(storage_form(self.method, maps))

    def __call__(self, batch: dict) -> dict:
        batch = text_back(batch)
        n = len(batch["uri"])
        ok = np.flatnonzero(batch["status"] == "ok")
        t0 = time.perf_counter()
        probs_all = np.full((n, len(ISIC2019_CLASSES)), np.nan, np.float32)
        pred_cls, conf = [None] * n, np.full(n, np.nan, np.float32)
        flagged = np.zeros(n, bool)
        rule_text = [self.rule.describe()] * n
        heat, hm_cls = [None] * n, [None] * n
        hh, hw = np.zeros(n, np.int32), np.zeros(n, np.int32)
        thumbs = [None] * n
        t_explain = 0.0
        wanted = np.zeros(n, bool)
        used = np.zeros(n, bool)
        if len(ok):
            x = normalize_batch(_resize_batch(batch["work"][ok], self.size), self.card.normalization)
            meta = None
            if self.card.uses_metadata:  # the manifest's age, sex and site; none known: the image-only prediction
                meta = encode_frame(pd.DataFrame({c: batch[c][ok] for c in METADATA_COLUMNS if c in batch}, index=ok))
                used[ok] = known(meta)
            out = self.predictor.predict(x, meta)
            probs = card_probs(self.card, out.logits)
            top = out.logits.argmax(1)  # the balanced decision (`decision_scores`): the offsets only move the prior
            for k, c in enumerate(self.classes):
                if c in ISIC2019_CLASSES:
                    probs_all[ok, ISIC2019_CLASSES.index(c)] = probs[:, k]
            is_flag, why = self.rule.apply(probs, self.classes)
            flagged[ok] = is_flag
            for j, i in enumerate(ok):
                pred_cls[i], conf[i], rule_text[i] = self.classes[top[j]], probs[j, top[j]], why[j]
            te = time.perf_counter()
            want = np.ones(len(ok), bool) if self.explain == "all" else is_flag if self.explain == "flagged" else None
            if want is not None:
                wanted[ok] = want
            if self.here and want is not None and want.any():
                sel = np.flatnonzero(want)
                maps = self._explain(x[sel], None if out.features is None else out.features[sel], top[sel])
                for j, m in zip(sel, maps):
                    i = ok[j]
                    heat[i], hm_cls[i] = encode_map(m), self.classes[top[j]]
                    hh[i], hw[i] = m.shape
            t_explain = (time.perf_counter() - te) * 1000 / max(1, n)
            if self.thumbnails != "none":
                for j, i in enumerate(ok):
                    if self.thumbnails == "all" or is_flag[j]:
                        buf = io.BytesIO()
                        Image.fromarray(batch["thumb"][i]).save(buf, "JPEG", quality=85)
                        thumbs[i] = buf.getvalue()
        t_cls = (time.perf_counter() - t0) * 1000 / max(1, n) - t_explain
        dropped = ("thumb", *METADATA_COLUMNS) if self.defer else ("work", "thumb", *METADATA_COLUMNS)
        out_batch = {k: v for k, v in batch.items() if k not in dropped}
        if self.defer:
            out_batch["explain_wanted"] = wanted
        out_batch.update(
            {
                "schema_version": np.full(n, SCHEMA_VERSION, np.int32),
                "predicted_class": _obj(pred_cls),
                "confidence": conf,
                **{col: probs_all[:, k] for k, col in enumerate(PROB_COLUMNS)},
                "flagged": flagged,
                "flag_rule": _obj(rule_text),
                "metadata_used": used,
                **heatmap_columns(self.method, heat, hm_cls, hh, hw),
                "thumbnail_jpeg": _obj(thumbs),
                "model_id": _obj([self.id] * n),
                "model_version": _obj([self.version] * n),
                "backend": _obj([self.backend] * n),
                "node_id": _obj([self.node_id] * n),
                "actor_id": _obj([self.actor_id] * n),
                "t_classify_ms": np.full(n, max(0.0, t_cls), np.float32),
                "t_explain_ms": np.full(n, t_explain, np.float32),
            }
        )
        return out_batch


class ExplainStage:
    """Explanations that need the model again (Grad-CAM family, attention maps; the fast CAM when placed here): an
    actor pool of its own, sized and placed apart from the classifier, with the PyTorch model on this pool's device.
    It receives the images and the predicted classes, fills the heatmap columns of the rows the classifier marked
    (`explain_wanted`) and drops the images."""

    def __init__(self, bundle: str, method: str, device: str = "auto", threads: int = 1):
        import torch

        from skinscan.models.bundle import load_bundle

        torch.set_num_threads(threads)
        use_cuda = device != "cpu" and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.model, self.card = load_bundle(bundle, device=self.device)
        self.method, self.classes, self.size = method, self.card.class_names, self.card.input_size

    def __call__(self, batch: dict) -> dict:
        import torch

        from skinscan.explain.registry import explain, storage_form

        batch = text_back(batch)

        t0 = time.perf_counter()
        n = len(batch["uri"])
        sel = np.flatnonzero(np.asarray(batch["explain_wanted"], bool) & (batch["status"] == "ok"))
        heat, hm_cls = [None] * n, [None] * n
        hh, hw = np.zeros(n, np.int32), np.zeros(n, np.int32)
        if len(sel):
            x = normalize_batch(_resize_batch(batch["work"][sel], self.size), self.card.normalization)
            cls = np.array([self.classes.index(c) for c in batch["predicted_class"][sel]])
            maps = storage_form(self.method, explain(self.method, self.model, torch.from_numpy(x).to(self.device), cls))
            for m, i, c in zip(maps, sel, cls):
                heat[i], hm_cls[i] = encode_map(m), self.classes[c]
                hh[i], hw[i] = m.shape
        out = {k: v for k, v in batch.items() if k not in ("work", "explain_wanted")}
        out.update(
            {
                **heatmap_columns(self.method, heat, hm_cls, hh, hw),
                "t_explain_ms": np.full(n, (time.perf_counter() - t0) * 1000 / max(1, n), np.float32),
            }
        )
        return out
