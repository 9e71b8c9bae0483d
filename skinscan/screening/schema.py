"""The screening output schema (Parquet), versioned. One row per input file, whatever happened to it.

| column | type | meaning |
|---|---|---|
| schema_version | int32 | `SCHEMA_VERSION` |
| image_id, uri | string | file stem (made unique) and the readable URI of the input |
| uri_key | uint64 | the URI's 64-bit resume key (`data.listing.uri_keys`; v2: counts and resume read it, not the URI) |
| sha256 | string | of the input's bytes (null if unreadable) |
| status | string | `ok` or `error` |
| error_type, error_message | string | for errors: empty, truncated, not_image, too_large, unsupported, |
| | | missing, read_error |
| width, height | int32 | original image size |
| predicted_class | string | ISIC 2019 class of the balanced decision (argmax with the class offsets taken out) |
| confidence | float32 | its probability |
| prob_MEL ... prob_SCC | float32 | per-class probabilities (null for classes the model lacks) |
| flagged | bool | the flag rule fired: the bundle's operating points (chosen on validation) or a configured threshold |
| flag_rule | string | flagged rows: the points that fired, e.g. `P(MEL) >= 0.213 [card]`; others: the whole rule |
| metadata_used | bool | the classifier read this row's age, sex or site (a metadata model and a manifest with them) |
| lesion_area | float32 | segmented lesion share of the image (null without a segmenter) |
| bbox_x0, bbox_y0, bbox_x1, bbox_y1 | float32 | lesion bounding box, fractions of width/height |
| mask_png | binary | lesion mask, 8-bit PNG at the segmenter's resolution (`mask_size`) |
| mask_size | int32 | side of the mask in pixels |
| heatmap_png | binary | explanation map, 8-bit PNG at feature resolution or 8 x 8 (`heatmap_h` x `heatmap_w`) |
| heatmap_method, heatmap_layer, heatmap_class | string | registry name (e.g. `fast`), layer, class (`MEL`) |
| heatmap_h, heatmap_w | int32 | map size |
| thumbnail_jpeg | binary | small JPEG for reports (per the `thumbnails` policy) |
| model_id, segmenter_id | string | `<architecture>@<weights sha256[:12]>` |
| model_version | string | bundle creation time and SkinScan version |
| backend | string | onnxruntime, torch or tensorrt |
| t_decode_ms, t_segment_ms, t_classify_ms, t_explain_ms | float32 | per-image share of its batch's time |
| screened_at | timestamp[ms, UTC] | when the row was produced |
| node_id, actor_id | string | the Ray node and classifier actor that screened the row (null in older parts) |
| img_mean_r, img_mean_g, img_mean_b, img_luma_std | float32 | the classifier input's mean colour and luminance |
| | | spread (0-255): compared with the card's validation reference (`evaluation.shift`; v3) |
"""

from __future__ import annotations

import pyarrow as pa

from skinscan.data.taxonomy import ISIC2019_CLASSES

SCHEMA_VERSION = 3
"""1: the first parts (`metadata_used`, `node_id`, `actor_id` came later, null where absent); 2: `uri_key`; 3: the
image statistics. Parts of an older version are read with the current schema, the columns they lack as null
(`uri_key` then computed from `uri`); a rerun into an older output writes v3 parts beside them."""
PROB_COLUMNS = [f"prob_{c}" for c in ISIC2019_CLASSES]

SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("uri_key", pa.uint64()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("predicted_class", pa.string()),
        ("confidence", pa.float32()),
        *[(c, pa.float32()) for c in PROB_COLUMNS],
        ("flagged", pa.bool_()),
        ("flag_rule", pa.string()),
        ("metadata_used", pa.bool_()),
        ("lesion_area", pa.float32()),
        ("bbox_x0", pa.float32()),
        ("bbox_y0", pa.float32()),
        ("bbox_x1", pa.float32()),
        ("bbox_y1", pa.float32()),
        ("mask_png", pa.binary()),
        ("mask_size", pa.int32()),
        ("heatmap_png", pa.binary()),
        ("heatmap_method", pa.string()),
        ("heatmap_layer", pa.string()),
        ("heatmap_class", pa.string()),
        ("heatmap_h", pa.int32()),
        ("heatmap_w", pa.int32()),
        ("thumbnail_jpeg", pa.binary()),
        ("model_id", pa.string()),
        ("segmenter_id", pa.string()),
        ("model_version", pa.string()),
        ("backend", pa.string()),
        ("t_decode_ms", pa.float32()),
        ("t_segment_ms", pa.float32()),
        ("t_classify_ms", pa.float32()),
        ("t_explain_ms", pa.float32()),
        ("screened_at", pa.timestamp("ms", tz="UTC")),
        ("node_id", pa.string()),
        ("actor_id", pa.string()),
        ("img_mean_r", pa.float32()),
        ("img_mean_g", pa.float32()),
        ("img_mean_b", pa.float32()),
        ("img_luma_std", pa.float32()),
    ],
    metadata={"skinscan_schema_version": str(SCHEMA_VERSION)},
)
