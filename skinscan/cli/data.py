"""`skinscan data manifest|split|overlap|synth`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from skinscan.cli.common import print_table


def cmd_data_manifest(a: argparse.Namespace) -> int:
    from skinscan.config import DataConfig, save_config, validate
    from skinscan.data.manifest import build_sources, class_counts, write_manifest
    from skinscan.errors import ConfigError

    where: dict[str, list[str]] = {}
    for item in a.where or []:
        col, sep, value = item.partition("=")
        if not sep or not col:
            raise ConfigError(f"--where {item}: expected COLUMN=VALUE, e.g. source_split=validation")
        where.setdefault(col, []).append(value)
    cfg = validate(
        DataConfig,
        {
            "source": a.source,
            "format": a.format,
            "images": a.images,
            "isic_groundtruth": a.isic_groundtruth,
            "metadata": a.metadata,
            "hash": not a.no_hash,
            "name": a.name,
            "where": where,
        },
    )
    df = build_sources([cfg])
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(df, str(out))
    save_config(cfg, out.parent, out.stem + ".config.yaml")
    print(f"{len(df)} images, source {df['source'].iloc[0]} -> {out}")
    if df["label"].notna().any():
        print_table("class counts:", class_counts(df))
    return 0


def cmd_data_split(a: argparse.Namespace) -> int:
    from skinscan.config import DataConfig, SplitConfig, save_config, validate
    from skinscan.data.manifest import build_manifest, class_counts, write_manifest
    from skinscan.data.sampling import oversample_frame
    from skinscan.data.splits import check_lesions_disjoint, split_manifest

    split_cfg = validate(SplitConfig, {"val_fraction": a.val, "test_fraction": a.test, "seed": a.seed})
    df = build_manifest(validate(DataConfig, {"source": a.manifest}))
    df = split_manifest(df, split_cfg.val_fraction, split_cfg.test_fraction, split_cfg.seed)
    check_lesions_disjoint(df)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(df, str(out))
    save_config(split_cfg, out.parent, out.stem + ".config.yaml")
    for name in ("train", "val", "test"):
        part = df[df["split"] == name]
        print(f"{name:5s} {len(part):6d} images, {part['lesion_id'].nunique():5d} lesions  {class_counts(part)}")
    _, hist = oversample_frame(df[df["split"] == "train"], seed=split_cfg.seed)
    print(f"train oversampled (as training will draw it): before {hist['before']}\n{'':26s}after  {hist['after']}")
    print(f"-> {out}")
    return 0


def cmd_data_overlap(a: argparse.Namespace) -> int:
    from skinscan.config import DataConfig, validate
    from skinscan.data.manifest import build_manifest, write_manifest
    from skinscan.data.splits import remove_overlap

    train = build_manifest(validate(DataConfig, {"source": a.train, "metadata": a.metadata}))
    test = build_manifest(validate(DataConfig, {"source": a.test}))
    if train["lesion_id"].isna().all():
        print(
            f"warning: {a.train} has no lesion ids (for ISIC 2019 give --metadata ISIC_2019_Training_Metadata.csv): "
            "splits of this manifest will be per image, so images of one lesion can land in both train and validation",
            file=sys.stderr,
        )
    cleaned, report = remove_overlap(train, test)
    print(json.dumps(report.to_dict(), indent=2))
    print(f"{report.overlapping} images of {a.train} overlap {a.test}; removing them leaves {len(cleaned)}")
    if a.output:
        write_manifest(cleaned, a.output)
        print(f"-> {a.output} (training manifest without the overlapping images)")
    return 0


def cmd_data_synth(a: argparse.Namespace) -> int:
    from skinscan.config import SynthConfig, load_config, save_config
    from skinscan.data.synth import generate

    over = [f"output={a.output}"] + list(a.set or [])
    if a.n is not None:
        over.append(f"n_images={a.n}")
    if a.size is not None:
        over.append(f"size={a.size}")
    if a.classes:
        over.append("classes=[" + ",".join(a.classes.split(",")) + "]")
    cfg = load_config(SynthConfig, a.config, over)
    gt = generate(cfg, progress=not a.quiet)
    save_config(cfg, Path(cfg.output).parent, Path(cfg.output).name.split(".")[0] + ".config.yaml")
    print_table(f"{len(gt)} synthetic images -> {cfg.output}", gt["label"].value_counts().to_dict())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="manifests, splits, overlap checks, synthetic data")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{manifest,split,overlap,synth}")

    m = dsub.add_parser("manifest", help="read a dataset (CSV, folder, archive, any fsspec URI) into a manifest")
    m.add_argument("source", help="ISIC 2019 ground-truth CSV, HAM10000 metadata CSV, class-folder tree or archive")
    m.add_argument("-o", "--output", required=True, help="manifest to write (.csv or .parquet)")
    m.add_argument("--format", default="auto", help="auto|isic2019|ham10000|manifest|folder|unlabeled")
    m.add_argument("--images", help="image folder/archive for CSV sources (default: images/ beside the CSV)")
    m.add_argument("--isic-groundtruth", help="ISIC 2019 ground truth deciding AK vs SCC for HAM10000 akiec")
    m.add_argument("--metadata", help="ISIC 2019 metadata CSV (lesion ids)")
    m.add_argument("--no-hash", action="store_true", help="skip sha256 of image bytes")
    m.add_argument("--name", help="the source column's value (default: the reader's, e.g. ham10000)")
    m.add_argument("--where", action="append", metavar="COL=VALUE", help="keep rows whose COL is VALUE (repeatable)")
    m.set_defaults(func=cmd_data_manifest)

    s = dsub.add_parser("split", help="lesion-grouped, class-stratified train/val/test split")
    s.add_argument("manifest", help="a manifest or any dataset source")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--val", type=float, default=0.15)
    s.add_argument("--test", type=float, default=0.15)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_data_split)

    o = dsub.add_parser("overlap", help="images of TRAIN also in TEST (by image_id, content hash, lesion)")
    o.add_argument("train")
    o.add_argument("test")
    o.add_argument("-o", "--output", help="write TRAIN without the overlapping images")
    o.add_argument(
        "--metadata",
        help="ISIC 2019 metadata CSV for TRAIN: keeps its lesion ids, so later splits stay lesion-grouped "
        "(default: ISIC_2019_Training_Metadata.csv beside TRAIN when there)",
    )
    o.set_defaults(func=cmd_data_overlap)

    y = dsub.add_parser("synth", help="generate a synthetic dermoscopy dataset with masks")
    y.add_argument("-o", "--output", default="runs/synth.zip", help=".zip, .tar(.gz) or folder")
    y.add_argument("--config", help="YAML (SynthConfig)")
    y.add_argument("--n", type=int, help="number of images")
    y.add_argument("--size", type=int, help="image side in pixels")
    y.add_argument("--classes", help="comma-separated ISIC 2019 classes, largest first")
    y.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    y.add_argument("-q", "--quiet", action="store_true")
    y.set_defaults(func=cmd_data_synth)
