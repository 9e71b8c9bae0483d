"""Typed, validated configuration: YAML files in `configs/`, `key.sub=value` overrides from the CLI.

Every job has a pydantic model below. `load_config(Model, path, overrides)` reads the YAML, applies
overrides and validates; any problem becomes a one-line `ConfigError` naming the key and what is allowed.
`save_config` writes the resolved config next to an output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skinscan.data.taxonomy import ISIC2019_CLASSES
from skinscan.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ---------------------------------------------------------------- data
class DataConfig(Section):
    """Where labelled images come from. `source` is a CSV (ISIC 2019 ground truth, HAM10000 metadata,
    or a SkinScan manifest CSV/Parquet), a folder-per-class tree, or an archive (zip/tar), as any fsspec URI."""

    source: str = ""
    images: str | None = None  # image root for CSV sources; default: `images/` beside the CSV, else the CSV folder
    format: Literal["auto", "isic2019", "ham10000", "manifest", "folder", "unlabeled"] = "auto"
    isic_groundtruth: str | None = None  # decides AK vs SCC for HAM10000 `akiec`
    metadata: str | None = None  # ISIC 2019 metadata CSV (lesion_id)
    hash: bool = True  # compute sha256 of each image's bytes
    name: str | None = None  # the `source` column's value for these images (default: the reader's, e.g. ham10000)
    # keep only rows whose column holds one of the values, e.g. {source_split: [training]} for ISIC 2017's training
    # part (its validation part then stays an external set, never trained on)
    where: dict[str, list[str]] = Field(default_factory=dict)


class SplitConfig(Section):
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, ge=0, lt=0.5)
    seed: int = 0


class ModelConfig(Section):
    """A timm classifier by name, or `unet` for the segmenter; `kwargs` shrink or change it (tests)."""

    name: str = "swin_tiny_patch4_window7_224"
    img_size: int = Field(224, ge=16, le=2048)
    pretrained: bool | str = False  # True: timm hub (needs network); a path: local weights file
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # classifiers: fuse age, sex and anatomical site (where the manifest has them) with the pooled image features;
    # rows without metadata get the image-only prediction (skinscan.models.fusion)
    metadata: bool = False


class AugmentConfig(Section):
    hflip: bool = True
    vflip: bool = True
    rotate: bool = True  # right-angle rotations plus small random angles
    color_jitter: float = Field(0.1, ge=0, le=1)
    # stronger colour options (other cameras and clinics): hue and saturation apart from color_jitter (None: the
    # jitter's own, c/4 and c), and a random gain per colour channel in [1 - g, 1 + g] (white balance)
    hue: float | None = Field(None, ge=0, le=0.5)
    saturation: float | None = Field(None, ge=0)
    channel_gain: float = Field(0.0, ge=0, lt=1)
    scale_min: float = Field(0.6, gt=0, le=1)  # random resized crop area range [scale_min, 1]
    # Batch mixing (classification only, timm's Mixup): mixup / CutMix with Beta(alpha, alpha) weights, applied to
    # a batch with probability mix_prob (switching between the two when both are on). 0 turns one off.
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    mix_prob: float = Field(1.0, ge=0, le=1)

    @property
    def mixing(self) -> bool:
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


class FlagTargets(Section):
    """Operating points chosen on validation after training (and by `skinscan calibrate`): for each name (a class,
    or `malignant` = MEL+BCC+SCC+AK summed) the most specific threshold reaching this validation sensitivity."""

    target_sensitivity: dict[str, float] = Field(default_factory=lambda: {"MEL": 0.90, "malignant": 0.90})
    # 0.95: each target's one-sided lower 95% bound on validation reaches it (Wilson, counted in lesions; both
    # targets together hold with at least 90%, and the bound is taken at the chosen thresholds, so somewhat
    # optimistic); None: the point estimate does, and the true sensitivity is lower about half the time
    confidence: float | None = Field(0.95, gt=0.5, lt=1)
    # "joint": two points chosen together, so that the flag as deployed (either fires) reaches each target on that
    # point's positives with the fewest negatives flagged; "alone": each point reaches its target by itself
    choice: Literal["joint", "alone"] = "joint"

    @field_validator("target_sensitivity")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        allowed = ["malignant", *ISIC2019_CLASSES]
        bad = [k for k in v if k not in allowed]
        if bad:
            raise ValueError(f"unknown operating points {bad}; allowed: {allowed}")
        if any(not 0 < t <= 1 for t in v.values()):
            raise ValueError("target sensitivities must lie in (0, 1]")
        return v


class TrainConfig(Section):
    task: Literal["classify", "segment"] = "classify"
    data: DataConfig = Field(default_factory=DataConfig)
    # more sources trained on together with `data`: split within each source, oversampled over the union
    extra_data: list[DataConfig] = Field(default_factory=list)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    classes: list[str] | None = None  # default: the classes present in the data, in ISIC 2019 order
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)  # per worker
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    lesion_mask_weight: float = Field(0.0, ge=0)  # classify: auxiliary lesion-mask loss (needs masks/), 0 = off
    ema_decay: float | None = Field(None, gt=0, lt=1)  # validate and ship an EMA of the weights (warmed-up decay)
    oversample: bool = True
    metric: Literal["balanced_accuracy", "accuracy", "macro_f1", "loss", "dice", "iou"] = "balanced_accuracy"
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    threads_per_worker: int = Field(1, ge=1)
    amp: bool = True  # bf16 autocast on GPUs and on CPUs with native bf16 (AVX512-BF16 / AMX); fp32 elsewhere
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPU and GPU
    max_failures: int = Field(2, ge=0)
    max_train_samples_per_epoch: int | None = Field(None, ge=1)  # cap per epoch (all workers), CPU runs
    time_budget_min: float | None = Field(None, gt=0)  # stop starting new epochs after this many minutes
    storage_path: str = "runs/ray"  # Ray Train checkpoints
    resume: str | None = None  # continue this interrupted run (its name under storage_path) from its last checkpoint
    output: str = "runs/model"  # the model bundle directory
    name: str = "train"
    seed: int = 0
    cache_images: bool = True  # decode once per worker, keep resized uint8 arrays in memory
    # the cache's bound per training worker (split over its loader processes); a data set larger than that is
    # not cached at all (every epoch decodes again) rather than cached in part
    cache_max_mb: float = Field(4096, ge=0)
    # DataLoader processes per training worker (decode + augmentation beside the model); default: all CPUs of
    # the worker but one on GPU workers, none on CPU workers (their CPUs run the model)
    loader_workers: int | None = Field(None, ge=0)
    # Shades of Gray colour constancy before normalisation (its Minkowski p; 6 is the ISIC winners' choice; None:
    # off). Recorded in the card's normalisation, so evaluation, explanation and every screening backend apply it too
    colour_constancy_p: float | None = Field(None, ge=1)
    # classify: after training, fit temperature scaling and choose the operating points on the validation split
    calibrate: bool = True
    # model.metadata: each training image's metadata is withheld with this probability, so the image path stays a
    # classifier of its own (rows without metadata at screening get it)
    metadata_withheld: float = Field(0.5, ge=0, le=1)
    flag: FlagTargets = Field(default_factory=FlagTargets)
    connect_timeout_s: float = Field(30.0, gt=0)  # give up reaching a Ray cluster (`--address`) after this long

    @property
    def loader_processes(self) -> int:
        if self.loader_workers is not None:
            return self.loader_workers
        return max(0, self.threads_per_worker - 1) if self.use_gpu else 0

    @model_validator(mode="after")
    def _options_fit(self) -> TrainConfig:
        if self.task == "segment":  # the segmenter is always the U-Net, selected on a segmentation metric
            self.model.name = "unet"
            if self.metric not in ("dice", "iou", "loss"):
                self.metric = "dice"
        elif self.metric in ("dice", "iou"):
            raise ValueError(f"metric {self.metric} is for segmentation; use balanced_accuracy, accuracy, macro_f1")
        if self.augment.mixing and self.task != "classify":
            raise ValueError("augment.mixup_alpha / cutmix_alpha mix class labels: set them to 0 for task: segment")
        if self.lesion_mask_weight and (self.task != "classify" or self.augment.mixing):
            raise ValueError("lesion_mask_weight is an auxiliary loss of task: classify, without mixup/CutMix")
        if self.model.metadata and (self.task != "classify" or self.augment.mixing):
            raise ValueError("model.metadata is for task: classify, without mixup/CutMix (they mix images, not ages)")
        if self.augment.mixing and self.batch_size % 2:
            raise ValueError(f"mixing pairs the images of a batch: batch_size must be even, not {self.batch_size}")
        return self


# ---------------------------------------------------------------- synthetic data
class SynthConfig(Section):
    output: str = "runs/synth.zip"  # a .zip, .tar or a folder
    n_images: int = Field(400, ge=1)
    size: int = Field(128, ge=32, le=2048)
    classes: list[str] = Field(default_factory=lambda: ["MEL", "NV", "BCC", "BKL"])
    imbalance: float = Field(4.0, ge=1)  # largest / smallest class count
    seed: int = 0
    metadata: bool = False  # age, sex and site in the metadata CSV, depending on the class

    @field_validator("classes")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in ISIC2019_CLASSES]
        if bad:
            raise ValueError(f"unknown classes {bad}; allowed: {list(ISIC2019_CLASSES)}")
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("need at least two distinct classes")
        return v


# ---------------------------------------------------------------- conversion and evaluation jobs
class ConvertConfig(Section):
    """`skinscan convert`: export a bundle to ONNX (and optionally a TensorRT engine), with a parity check."""

    model: str
    to: Literal["onnx", "tensorrt"] = "onnx"
    fp16: bool = False
    with_features: bool = True  # classifiers: also output the last feature map (explanations from any backend)
    opset: int = Field(18, ge=17)
    parity_images: str | None = None  # real images for the parity check (default: synthetic ones)
    max_abs_diff: float | None = Field(None, gt=0)  # default 1e-3, fp16 5e-2
    min_agreement: float = Field(1.0, ge=0, le=1)
    # TensorRT optimisation profile: the batch kernels are tuned for and the largest accepted. `screen_config`
    # takes the opt batch from a screening config (its classify or segment batch_size, by the bundle's task).
    opt_batch: int = Field(32, ge=1)
    max_batch: int = Field(256, ge=1)
    screen_config: str | None = None


class EvaluateConfig(Section):
    """`skinscan evaluate`: a classifier or segmenter bundle on a labelled data set."""

    model: str
    data: str
    split: str | None = None
    output: str | None = None  # default: <model>/evaluation[-<split>]
    allow_overlap: bool = False
    backend: Literal["onnxruntime", "torch", "tensorrt"] = "onnxruntime"
    bootstrap: int = Field(1000, ge=0)  # lesion-bootstrap draws for the 95% intervals (0: none)
    # data sets from other clinics, never trained on: name -> data (each gets its own folder and a row of the
    # "External data sets" table)
    external: dict[str, str] = Field(default_factory=dict)


class CalibrateConfig(Section):
    """`skinscan calibrate`: fit temperature scaling and choose operating points for a classifier bundle on a
    validation set (default: the validation split of its own training manifest)."""

    model: str
    data: str | None = None  # default: <model>/train_manifest.parquet
    split: str | None = "val"
    backend: Literal["onnxruntime", "torch", "tensorrt"] = "torch"
    flag: FlagTargets = Field(default_factory=FlagTargets)
    bootstrap: int = Field(1000, ge=0)
    # the training prior: "bias" fits per-class logit offsets beside the temperature (the oversampler trained on
    # balanced classes; the offsets give the validation split's prevalence back); "none": the temperature alone
    prior: Literal["bias", "none"] = "bias"


# ---------------------------------------------------------------- screening
PRECISIONS = ("fp32", "fp16", "bf16")
EXPORTED_PRECISIONS = {"onnxruntime": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16")}
"""What each exported backend can run: its fp32 export, or the fp16 one (`skinscan convert --fp16`); torch runs any."""

ExplainMethod = Literal["fast", "gradcam", "gradcam++", "hirescam", "xgradcam", "eigencam", "layercam", "attention"]
"""Explanation method names, one vocabulary for the CLI, configs and Parquet rows (`skinscan.explain.registry`)."""


class StageConfig(Section):
    """Resources of one pipeline stage. `actors`: actor pool size (model stages); `batch_size`: images per call."""

    actors: int = Field(1, ge=1)
    max_actors: int | None = Field(None, ge=1)  # grow the pool up to this many as the cluster scales (None: fixed)
    batch_size: int = Field(16, ge=1)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    threads: int = Field(1, ge=1)  # intra-op threads of the model runtime inside one actor

    @model_validator(mode="after")
    def _pool(self) -> StageConfig:
        if self.max_actors is not None and self.max_actors < self.actors:
            raise ValueError(f"max_actors {self.max_actors} is below actors {self.actors}")
        return self

    @property
    def pool(self) -> tuple[int, int]:
        """(min, max) actors of the stage's pool."""
        return self.actors, self.max_actors or self.actors


class FlagConfig(Section):
    """Which images are flagged. By default the bundle's operating points (chosen on validation, in its card);
    `threshold` set overrides them with one fixed rule: any of `classes` has probability >= threshold (also the
    rule for a bundle without operating points, at 0.5)."""

    classes: list[str] = Field(default_factory=lambda: ["MEL", "BCC", "SCC", "AK"])
    threshold: float | None = Field(None, ge=0, le=1)


class ScreenConfig(Section):
    model: str = ""  # classifier bundle
    segmenter: str | None = None  # U-Net bundle
    input: str = ""  # folder, zip, tar(.gz), s3://..., or a manifest CSV/Parquet
    # ISIC masks and superpixel maps (*_segmentation.png, *_superpixels.png, anything under masks/) are not inputs
    include_masks: bool = False
    output: str = "runs/screen"
    output_shared: bool = False  # a local output that every node of the cluster mounts (NFS): allowed on many machines
    backend: Literal["onnxruntime", "torch", "tensorrt"] = "onnxruntime"
    # numeric precision of the model stages: torch runs any (fp16 as bf16 on a CPU); onnxruntime and tensorrt load
    # the export of that precision (`skinscan convert --fp16` builds the fp16 one)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    compile: bool = False  # torch.compile the model in each actor (torch backend; an engine is compiled already)

    @model_validator(mode="after")
    def _precision_runs_on_the_backend(self) -> ScreenConfig:
        allowed = EXPORTED_PRECISIONS.get(self.backend)
        if allowed is not None and self.precision not in allowed:
            raise ValueError(
                f"precision {self.precision}: backend {self.backend} runs {' or '.join(allowed)} exports; "
                "use backend torch for bf16"
            )
        return self

    device: Literal["auto", "cpu", "cuda"] = "auto"
    explain: Literal["all", "flagged", "none"] = "flagged"
    explain_method: ExplainMethod = "fast"  # fast: forward-only CAM from engine outputs
    # where the fast CAM runs: in the classifier (from the features it already holds) or in the explainer pool;
    # methods that need the model again (Grad-CAM family, attention) always run in the explainer pool
    explain_placement: Literal["classifier", "pool"] = "classifier"
    # classify the segmenter's lesion bounding box (padded) instead of the whole image. Off: on HAM10000 validation
    # a ResNet-18 trained on whole images fell from 0.605 to 0.552 balanced accuracy when given U-Net lesion crops
    crop_to_lesion: bool = False
    flag: FlagConfig = Field(default_factory=FlagConfig)
    thumbnails: Literal["all", "flagged", "none"] = "flagged"  # JPEG thumbnails in the Parquet (for the report)
    thumbnail_size: int = Field(128, ge=16, le=512)
    decode: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=32))
    segment: StageConfig = Field(default_factory=StageConfig)
    classify: StageConfig = Field(default_factory=lambda: StageConfig(threads=2))
    explainer: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=8, threads=2))
    gpu_decode: bool = False  # nvJPEG through torchvision.io when a GPU is present
    max_pixels: int = Field(100_000_000, ge=1)  # checked from the header, before any decoder (GPU included)
    max_input_bytes: int = Field(256 * 2**20, ge=1)  # per input, checked while reading (archive members included)
    # inputs each decode task reads at once (threads): an object store's per-request latency is then paid in parallel
    read_concurrency: int = Field(16, ge=1, le=256)
    # URI schemes an input may use (a manifest's `uri` values included); add http/https only for trusted manifests
    allowed_schemes: list[str] = Field(default_factory=lambda: ["file", "zip", "tar", "s3", "gs"])
    rows_per_part: int = Field(256, ge=1)  # rows per Parquet part file
    resume: bool = True  # skip inputs already written to `output`
    force_mixed: bool = False  # add rows to an output made with another model/backend/explain/flag configuration
    retry_errors: bool = False  # screen again the rows whose error was transient (a read that failed or timed out)
    prune_stale: bool = False  # remove rows whose input is no longer listed (rewriting only the parts holding them)
    connect_timeout_s: float = Field(30.0, gt=0)  # give up reaching a Ray cluster (`--address`) after this long
    progress: bool = True


# ---------------------------------------------------------------- loading
# ---------------------------------------------------------------- locations
LOCATIONS: dict[str, tuple[str, ...]] = {
    "DataConfig": ("source", "images", "isic_groundtruth", "metadata"),
    "ModelConfig": ("pretrained",),
    "TrainConfig": ("storage_path", "output"),
    "SynthConfig": ("output",),
    "ConvertConfig": ("model", "parity_images", "screen_config"),
    "EvaluateConfig": ("model", "data", "output", "external"),
    "CalibrateConfig": ("model", "data"),
    "ScreenConfig": ("model", "segmenter", "input", "output"),
}
"""The keys of each config that name a file, folder or URI a job reads or writes (`external`: a dict of them):
what `skinscan submit` must make reachable from the cluster."""
OUTPUT_KEYS = frozenset({"output", "storage_path"})
"""Location keys a job writes: never sent relative to the job's working directory (a copy that is thrown away)."""


def locations(cfg: BaseModel, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, owning section, field name or dict key) of every location value set in `cfg`, nested sections
    and lists of sections included."""
    out = []
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        key = f"{prefix}{name}"
        if name in LOCATIONS.get(type(cfg).__name__, ()):
            if isinstance(value, dict):
                out += [(f"{key}.{k}", value, k) for k in value]
            elif isinstance(value, str) and value:
                out.append((key, cfg, name))
        elif isinstance(value, BaseModel):
            out += locations(value, f"{key}.")
        elif isinstance(value, list):
            out += [loc for i, v in enumerate(value) if isinstance(v, BaseModel) for loc in locations(v, f"{key}.{i}.")]
    return out


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: cannot set a sub-key of non-mapping {k!r}")
        d = nxt
    d[keys[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. epochs=3 or model.img_size=128")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set(out, key.strip(), value)
    return out


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def format_validation_error(err: ValidationError) -> str:
    errs = err.errors()
    e = errs[0]
    key = ".".join(str(p) for p in e["loc"])
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "literal_error":
        msg = "must be one of " + msg.split("Input should be ", 1)[-1]
    got = e.get("input")
    got_s = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {got!r})"
    more = f" [+{len(errs) - 1} more]" if len(errs) > 1 else ""
    if not e["loc"]:  # a check across keys: its message names them
        return f"config: {msg.removeprefix('Value error, ')}{more}"
    return f"config key {key}: {msg}{got_s}{more}"


def validate(model: type[T], data: dict) -> T:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(model: type[T], path: str | Path | None = None, overrides: list[str] | tuple = ()) -> T:
    """Read YAML (optional), apply `key=value` overrides, validate into `model`."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    _merge(data, parse_overrides(list(overrides)))
    return validate(model, data)


def save_config(cfg: BaseModel, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to an output (YAML, stable key order)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    return path


CONFIG_KINDS: dict[str, type[BaseModel]] = {"train": TrainConfig, "synth": SynthConfig, "screen": ScreenConfig}
JOB_CONFIGS: dict[str, type[BaseModel]] = {
    "train": TrainConfig,
    "screen": ScreenConfig,
    "convert": ConvertConfig,
    "evaluate": EvaluateConfig,
}
"""The config model of each job (`python -m jobs.<name>`, `skinscan submit <name>`)."""
"""configs/<folder>/*.yaml -> the model that validates it."""
