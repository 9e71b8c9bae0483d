"""Model bundles: a directory with weights (safetensors), a typed model card (JSON) and the weights' sha256.

bundle/
  model.safetensors     weights only: loading never unpickles anything
  model_card.json       `ModelCard`: architecture, classes, input size, normalisation, training config, data
                        manifest hash, validation metrics, library versions, weights sha256, exports, parity
  train_manifest.parquet  (classifiers) the images the model was trained on: the leakage guard reads it
  config.yaml, history.json, training_curves.png

Every file a bundle points to (weights, ONNX graphs, TensorRT engines) is checked against its sha256 in the card
before use (`checked_file`). A bundle may live on any fsspec URI (`s3://bucket/models/swin`): `publish_bundle`
uploads one and reads it back, and every reader here fetches a remote bundle once per node into the local cache
(`local_bundle`), refreshing it when the remote card changes.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from skinscan.config import ModelConfig
from skinscan.data import storage
from skinscan.data.preprocess import IMAGENET, PREPROCESSING, Normalization
from skinscan.errors import BundleError

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
CARD_VERSION = 2
"""Cards of a newer version are refused (`parse_card`): from 2 on, a card that means something an older reader would
misread gets a new version. Version 1 cards may carry class offsets and jointly chosen points too (written before
the check existed); SkinScan versions from before the check read any card."""
EXPORT_COMMANDS = {
    "onnx": "skinscan convert --model {bundle} --to onnx",
    "onnx_fp16": "skinscan convert --model {bundle} --to onnx --fp16",
    "tensorrt": "skinscan convert --model {bundle} --to tensorrt  (on the GPU machine)",
    "tensorrt_fp16": "skinscan convert --model {bundle} --to tensorrt --fp16  (on the GPU machine)",
}
"""Export key in the card -> the command that makes it (named in every 'missing export' error)."""


class _Open(BaseModel):
    """Card sections keep keys they do not know (cards of this card version written by newer SkinScan versions still
    load; a newer card version is refused by `parse_card`)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), populate_by_name=True)


class Architecture(_Open):
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    params: int | None = None


class ExportRecord(_Open):
    """One converted form of the model, beside the weights in the bundle."""

    file: str
    sha256: str
    opset: int | None = None
    outputs: list[str] | None = None
    dtype: str | None = None
    dynamic_batch: bool | None = None
    export_s: float | None = None
    source: str | None = Field(None, alias="from")  # the ONNX file an engine was built from
    # an engine runs only with the TensorRT version and on the GPU architecture it was built for
    tensorrt_version: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None


class Calibration(_Open):
    """Fitted on a validation set: probabilities are softmax(logits / temperature + class_bias), the offsets (one a
    class, or none) undoing the oversampler's class prior. `binary`: calibration of the scores the flag thresholds,
    P(MEL) and P(malignant), on that set with the temperature alone ("before") and with the offsets ("after")."""

    temperature: float
    class_bias: list[float] | None = None
    binary: dict | None = None
    shift_reference: dict | None = None  # the validation split's deciles of the flag scores and image statistics
    val_prior: dict[str, float] | None = None  # class frequencies of that set (EM's start: `evaluation.priors`)
    flag_on_validation: dict | None = None  # the whole flag (any point fires) on that set, with Wilson intervals
    fitted_on: str
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float


class OperatingPoint(_Open):
    """A flag threshold on the summed probability of `classes`, chosen on validation to reach a target
    sensitivity; with what it gave there (sensitivity with its lesion-bootstrap 95% interval)."""

    classes: list[str]
    threshold: float
    target_sensitivity: float
    target_confidence: float | None = None  # None: validation sensitivity >= target; else its lower bound at this
    chosen_on: str
    # "alone": the most specific threshold reaching the target by itself; "joint": chosen with the card's other point
    # so that the flag as deployed (either fires) reaches each target on its positives (val_flag_sensitivity)
    chosen: Literal["alone", "joint"] = "alone"
    # with target_confidence: False where too few positives let no threshold reach the bound (it then flags every
    # positive of the validation set); None without a confidence
    bound_reached: bool | None = None
    val_sensitivity: float  # this point alone
    val_sensitivity_ci: list[float] | None = None
    val_flag_sensitivity: float | None = None  # the whole flag's, on this point's positives
    val_specificity: float
    val_positives: int
    val_negatives: int
    val_referrals_per_1000: float


class ModelCard(_Open):
    task: Literal["classify", "segment"]
    architecture: Architecture
    input_size: int
    class_names: list[str] = Field(default_factory=list)
    # what the model reads: the image, and with metadata fusion age, sex and site (encoded by
    # skinscan.data.metadata; a row without them gets the image-only prediction)
    inputs: list[str] = Field(default_factory=lambda: ["image"])
    normalization: Normalization = IMAGENET
    preprocessing: str = PREPROCESSING
    card_version: int = CARD_VERSION
    weights_file: str = WEIGHTS
    weights_sha256: str | None = None
    created: str | None = None
    library_versions: dict[str, str] = Field(default_factory=dict)
    exports: dict[str, ExportRecord] = Field(default_factory=dict)
    parity: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # written by training
    training_config: dict[str, Any] | None = None
    data_manifest_sha256: str | None = None
    data_counts: dict[str, int] | None = None
    best_epoch: int | None = None
    selection_metric: str | None = None
    validation_metrics: dict[str, Any] | None = None
    epochs_run: int | None = None
    train_wall_s: float | None = None
    ray_run: dict[str, Any] | None = None
    # written by calibration (after training, or `skinscan calibrate`)
    calibration: Calibration | None = None
    operating_points: dict[str, OperatingPoint] = Field(default_factory=dict)

    @property
    def uses_metadata(self) -> bool:
        return len(self.inputs) > 1

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration else 1.0

    @property
    def class_bias(self) -> list[float] | None:
        return self.calibration.class_bias if self.calibration else None

    @property
    def model_id(self) -> str:
        """Architecture and weights hash: what screening rows record as the model that made them."""
        return f"{self.architecture.name}@{(self.weights_sha256 or '?')[:12]}"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("skinscan", "torch", "torchvision", "timm", "ray", "onnx", "onnxruntime", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _write_card(directory: Path, card: ModelCard) -> None:
    (directory / CARD).write_text(json.dumps(card.model_dump(mode="json", by_alias=True), indent=2))


def save_bundle(directory: str | Path, model: nn.Module, card: ModelCard | dict[str, Any]) -> Path:
    """Write weights + card; the card (with the weights' hash) is written last."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS))
    card = card if isinstance(card, ModelCard) else ModelCard.model_validate(card)
    update: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "weights_file": WEIGHTS,
        "weights_sha256": file_sha256(d / WEIGHTS),
    }
    if not card.library_versions:
        update["library_versions"] = library_versions()
    _write_card(d, card.model_copy(update=update))
    return d


def _bundle_files(card: ModelCard) -> list[str]:
    """Every file of a bundle that readers use, the card last."""
    return [card.weights_file, *(e.file for e in card.exports.values()), "train_manifest.parquet", CARD]


def local_bundle(directory: str | Path) -> Path:
    """A local folder holding the bundle: itself when local; for a URI, this node's cached copy (fetched once,
    again only when the remote card differs; every file's sha256 is checked when used)."""
    if not storage.is_remote(directory):
        return Path(directory)
    uri = str(directory).rstrip("/")
    try:
        remote_card = storage.read_bytes(f"{uri}/{CARD}")
    except FileNotFoundError:
        raise BundleError(f"{uri}: not a model bundle (no {CARD})") from None
    local = storage.cache_dir("bundles", uri)
    with storage.node_lock(local):
        if not (local / CARD).is_file() or (local / CARD).read_bytes() != remote_card:
            card = parse_card(remote_card, f"{uri}/{CARD}")
            for name in _bundle_files(card)[:-1]:
                try:
                    storage.write_local_atomic(local / name, storage.read_bytes(f"{uri}/{name}"))
                except FileNotFoundError:
                    if name == card.weights_file:
                        raise BundleError(f"{uri}: weights file {name} missing") from None
            storage.write_local_atomic(local / CARD, remote_card)
    return local


def publish_bundle(local: str | Path, uri: str) -> None:
    """Upload a local bundle folder to `uri` (card last), then read the weights and card back and check them."""
    local, uri = Path(local), uri.rstrip("/")
    names = sorted(p.name for p in local.iterdir() if p.is_file() and p.name != CARD)
    for name in [*names, CARD]:
        storage.write_bytes(f"{uri}/{name}", (local / name).read_bytes())
    card = read_card(local)
    back = hashlib.sha256(storage.read_bytes(f"{uri}/{card.weights_file}")).hexdigest()
    if back != card.weights_sha256 or storage.read_bytes(f"{uri}/{CARD}") != (local / CARD).read_bytes():
        raise BundleError(f"{uri}: the uploaded bundle does not read back identical (weights sha256 {back[:12]}…)")


def publish_exports(local: str | Path, uri: str, fetched: ModelCard) -> None:
    """Upload what this conversion made (the exports and parity entries of the local copy's card that differ from
    `fetched`, its card when copied), then the remote card as it is now with those entries added or replaced:
    another conversion that finished meanwhile (another precision) keeps its entries. Two conversions of the same
    export at once still race (the last card wins); run one per export."""
    local, uri = Path(local), uri.rstrip("/")
    ours = read_card(local)
    exports = {k: e for k, e in ours.exports.items() if fetched.exports.get(k) != e}
    parity = {k: v for k, v in ours.parity.items() if fetched.parity.get(k) != v}
    for name in sorted({e.file for e in exports.values()}):
        storage.write_bytes(f"{uri}/{name}", (local / name).read_bytes())
    theirs = parse_card(storage.read_bytes(f"{uri}/{CARD}"), f"{uri}/{CARD}")  # read last: the newest
    if theirs.weights_sha256 != ours.weights_sha256:
        raise BundleError(f"{uri}: its weights changed while converting; convert again")
    merged = theirs.model_copy(update={"exports": {**theirs.exports, **exports}, "parity": {**theirs.parity, **parity}})
    storage.write_bytes(f"{uri}/{CARD}", json.dumps(merged.model_dump(mode="json", by_alias=True), indent=2).encode())


def read_card(directory: str | Path) -> ModelCard:
    d = local_bundle(directory)
    if not (d / CARD).is_file():
        raise BundleError(f"{d}: not a model bundle (no {CARD})")
    return parse_card((d / CARD).read_bytes(), str(d / CARD))


def parse_card(text: bytes | str, where: str) -> ModelCard:
    """A card from its JSON: validated, and refused when a newer SkinScan wrote a card version this one would
    misread (one line each)."""
    try:
        card = ModelCard.model_validate_json(text)
    except ValidationError as err:
        e = err.errors()[0]
        raise BundleError(f"{where}: invalid model card ({'.'.join(map(str, e['loc']))}: {e['msg']})") from None
    if card.card_version > CARD_VERSION:
        raise BundleError(
            f"{where}: card version {card.card_version} was written by a newer SkinScan (this one reads up to "
            f"{CARD_VERSION}); upgrade SkinScan to use this bundle"
        )
    return card


def _local_only(directory: str | Path) -> None:
    if storage.is_remote(directory):
        raise BundleError(
            f"{directory}: convert a local copy of the bundle, then upload it; remote bundles are read-only"
        )


def record_export(directory: str | Path, key: str, record: ExportRecord) -> ModelCard:
    """Add (or replace) an export in the card."""
    _local_only(directory)
    card = read_card(directory)
    card.exports[key] = record
    _write_card(Path(directory), card)
    return card


def record_calibration(directory: str | Path, calibration: Calibration, points: dict[str, OperatingPoint]) -> ModelCard:
    """Store the temperature and operating points in the card (weights untouched)."""
    _local_only(directory)
    update = {"calibration": calibration, "operating_points": points, "card_version": CARD_VERSION}
    card = read_card(directory).model_copy(update=update)
    _write_card(Path(directory), card)
    return card


def record_parity(directory: str | Path, key: str, stats: dict[str, Any]) -> ModelCard:
    """Add (or replace) a parity check's figures in the card."""
    _local_only(directory)
    card = read_card(directory)
    card.parity[key] = stats
    _write_card(Path(directory), card)
    return card


def checked_file(directory: str | Path, key: str) -> Path:
    """The file of export `key`, after checking its sha256 against the card; a missing export names the command
    that makes it."""
    local = local_bundle(directory)  # one fetch (or card comparison) for a remote bundle, not two
    entry = read_card(local).exports.get(key)
    if entry is None:
        command = EXPORT_COMMANDS.get(key, "skinscan convert --model {bundle}").format(bundle=directory)
        raise BundleError(f"{directory}: no {key} export; make it with `{command}`")
    path = local / entry.file
    if not path.is_file() or file_sha256(path) != entry.sha256:
        raise BundleError(f"{path}: missing or does not match the sha256 in the model card; export again")
    return path


def build_from_card(card: ModelCard) -> nn.Module:
    from skinscan.models.factory import create_model

    cfg = ModelConfig(
        name=card.architecture.name,
        img_size=card.input_size,
        kwargs=card.architecture.kwargs,
        metadata=card.uses_metadata,
    )
    return create_model(cfg, num_classes=len(card.class_names) or 1)


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """(model in eval mode, card). The weights' sha256 must match the card."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = local_bundle(directory)
    card = read_card(d)
    weights = d / card.weights_file
    if not weights.is_file():
        raise BundleError(f"{d}: weights file {weights.name} missing")
    digest = file_sha256(weights)
    if digest != card.weights_sha256:
        raise BundleError(f"{weights}: sha256 {digest[:12]}… does not match the model card; the bundle is corrupt")
    model = build_from_card(card)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError) as err:
        raise BundleError(f"{weights}: weights do not fit the architecture in the card ({err})") from None
    return model.to(device).eval(), card
