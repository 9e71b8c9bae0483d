"""The screening job: list inputs, stream them through Ray Data (read tasks drop what is already written; decode
tasks; segmentation and classification actors; write tasks), summarise from the written Parquet.

The workers write the results: the driver receives one small row of counts per Parquet part, for the progress bar
and the summary, never the result rows themselves. Screening starts as soon as the read tasks list the first
inputs; the resume index and the counts come from `partindex` scans in parallel tasks, each part read once a run."""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from skinscan.config import ScreenConfig
from skinscan.data.keys import in_sorted
from skinscan.data.listing import MAX_LISTING_TASKS
from skinscan.errors import ConfigError, DataError, SkinScanError
from skinscan.ray_connect import connect, quiet_stderr, starts_local_ray
from skinscan.screening import partindex
from skinscan.screening.lease import OutputLease
from skinscan.screening.output import check_and_record, check_writable, record_summary
from skinscan.screening.writer import TRANSIENT_ERRORS, list_parts, write_batch, write_dataset_metadata

WRITE_CPUS = 0.25  # a write task converts and uploads one part: mostly I/O


def _check_models(cfg: ScreenConfig) -> None:
    from skinscan.explain.registry import get_method
    from skinscan.models.bundle import read_card

    if not cfg.model:
        raise ConfigError("config key model: give a classifier bundle (--model)")
    card = read_card(cfg.model)
    if card.task != "classify":
        raise ConfigError(f"model {cfg.model} is a {card.task} bundle, not a classifier")
    if cfg.explain != "none":
        get_method(cfg.explain_method, card.architecture.name)
    if cfg.segmenter and read_card(cfg.segmenter).task != "segment":
        raise ConfigError(f"segmenter {cfg.segmenter} is not a segmentation bundle")
    if cfg.crop_to_lesion and not cfg.segmenter:
        raise ConfigError("crop_to_lesion needs a segmenter")


def _check_backend(cfg: ScreenConfig, address: str | None) -> None:
    """TensorRT is importable here when this run starts its own Ray (on a cluster the workers may have what the
    driver lacks)."""
    if cfg.backend == "tensorrt" and starts_local_ray(address):
        from skinscan.runtime.tensorrt import require_tensorrt

        require_tensorrt()


def _prepare_onnx(cfg: ScreenConfig) -> None:
    """Export ONNX once on the driver where a bundle has none, not in every actor."""
    if cfg.backend != "onnxruntime":
        return
    from conversion.onnx_export import ensure_onnx

    for bundle in filter(None, [cfg.model, cfg.segmenter]):
        ensure_onnx(bundle, fp16=cfg.precision == "fp16")


def summarize(
    output: str,
    wall_s: float | None = None,
    new_rows: int = 0,
    counts: dict | None = None,
    arrivals: list[tuple[float, int]] | None = None,
) -> dict:
    """`counts` (or `partindex.count_results(output)`), plus, with `wall_s`, this run's rate. `arrivals`: (seconds
    since start, rows so far) per part written; gives the start-up time (until the first rows) and the steady rate
    (over the rows after the first 10%, so neither start-up nor the first burst of already-queued work counts)."""
    summary = dict(counts) if counts is not None else partindex.count_results(output)
    if wall_s is not None:
        summary.update(
            {
                "this_run_rows": new_rows,
                "this_run_wall_s": round(wall_s, 1),
                "images_per_s": round(new_rows / wall_s, 2) if wall_s > 0 else None,
            }
        )
        if arrivals:
            summary["startup_s"] = round(arrivals[0][0], 1)
            summary["steady_images_per_s"] = steady_rate(arrivals)
    return summary


def steady_rate(arrivals: list[tuple[float, int]], skip: float = 0.1) -> float | None:
    """Rows per second after the first `skip` share of the rows; None when too few batches arrived after it or
    they arrived within a fifth of the run (a burst of parts finishing together is not a rate)."""
    total = arrivals[-1][1]
    k = next(i for i, (_, rows) in enumerate(arrivals) if rows >= max(arrivals[0][1], skip * total))
    (t_a, r_a), (t_b, r_b) = arrivals[k], arrivals[-1]
    if len(arrivals) - k < 3 or t_b - t_a < max(1.0, 0.2 * t_b):
        return None  # too few batches, or a burst: rows that arrive together give no rate
    return round((r_b - r_a) / (t_b - t_a), 2)


_DONE: dict[str, np.ndarray] = {}  # per worker process: the resume index, fetched once


def drop_done(batch: dict, done=None) -> dict:
    """Read-task filter: drop inputs already written (`done`: an ObjectRef of the sorted keys of written URIs;
    None on a first run)."""
    import ray

    if done is None:
        return batch
    key = done.hex()
    if key not in _DONE:
        _DONE.clear()
        _DONE[key] = ray.get(done)
    keep = ~in_sorted(np.asarray(batch["key"], np.uint64), _DONE[key])
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def _listed_done(inputs: np.ndarray, done: np.ndarray) -> int:
    """How many of the listed inputs are already written (stale rows left out)."""
    return int(in_sorted(inputs, done).sum())


def _sum_drops(results: list[dict]) -> dict:
    return {
        "rows": sum(r["rows"] for r in results),
        "parts": sum(r["parts"] for r in results),
        "examples": [e for r in results for e in r["examples"]][:3],
    }


def explain_in_pool(cfg: ScreenConfig) -> bool:
    """Whether explanations run in their own actor pool: always for methods that need the model again (Grad-CAM
    family, attention), for the fast CAM only when `explain_placement` says so."""
    from skinscan.explain.registry import get_method

    if cfg.explain == "none":
        return False
    return get_method(cfg.explain_method).needs != "features" or cfg.explain_placement == "pool"


def _folder_root(uri: str) -> str | None:
    """The local folder an input is, if it is one: symbolic links may not lead out of it."""
    import os

    from skinscan.data import storage

    path = storage.normalize(uri)
    return path if not storage.is_remote(path) and os.path.isdir(path) else None


def build_dataset(cfg: ScreenConfig, units: list, done=None, stand_in=None):
    """The Ray Data pipeline over the inputs of `units` (listed in read tasks, streamed), minus those in `done`
    (lazy; nothing runs until iterated); its output is one row of counts per Parquet part the write tasks wrote.
    `stand_in` (`screening.standin.StandIn`, capacity work only): decode and classify sleep instead, no other model
    stage."""
    import ray

    from skinscan.data.storage import storage_env
    from skinscan.models.bundle import read_card
    from skinscan.screening.inputs import read_inputs, stream_inputs
    from skinscan.screening.stages import ClassifyStage, ExplainStage, SegmentStage, decode_batch

    cls_size = read_card(cfg.model).input_size
    seg_size = read_card(cfg.segmenter).input_size if cfg.segmenter else 0
    work = max(cls_size, seg_size) * (2 if cfg.crop_to_lesion else 1)
    env = storage_env()
    remote = {"runtime_env": {"env_vars": env}} if env else {}
    runtime_env = remote.get("runtime_env")  # the read and the filter must agree on it to fuse
    inputs = read_inputs(cfg.input, LISTING_BLOCK_ROWS, runtime_env, units)
    ds = stream_inputs(inputs, cfg.decode.batch_size, drop_done, {"done": done}, runtime_env)
    decode_kwargs = {
        "work_size": work,
        "thumb_size": cfg.thumbnail_size if cfg.thumbnails != "none" else 0,
        "max_pixels": cfg.max_pixels,
        "gpu_decode": cfg.gpu_decode,
        "max_bytes": cfg.max_input_bytes,
        "allowed_schemes": tuple(cfg.allowed_schemes),
        "input_root": _folder_root(cfg.input),
        "read_concurrency": cfg.read_concurrency,
    }
    if stand_in is not None:
        from skinscan.screening.standin import StandInClassify, stand_in_decode

        decode_batch, decode_kwargs = stand_in_decode, {"s_per_image": stand_in.decode_s_per_image}
    ds = ds.map_batches(
        decode_batch,
        batch_size=cfg.decode.batch_size,
        batch_format="numpy",
        num_cpus=cfg.decode.num_cpus,
        **remote,
        fn_kwargs=decode_kwargs,
        num_gpus=cfg.decode.num_gpus or None,
    )

    def actor_stage(ds, stage_cls, stage, **kwargs):
        """One model stage as an autoscaling actor pool with the stage config's resources."""
        return ds.map_batches(
            stage_cls,
            batch_size=stage.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=stage.pool[0], max_size=stage.pool[1]),
            num_cpus=stage.num_cpus,
            num_gpus=stage.num_gpus or None,
            **remote,
            **kwargs,
        )

    if stand_in is not None:
        ds = actor_stage(
            ds, StandInClassify, cfg.classify, fn_constructor_kwargs={"s_per_batch": stand_in.classify_s_per_batch}
        )
    else:
        if cfg.segmenter:
            ds = actor_stage(
                ds,
                SegmentStage,
                cfg.segment,
                zero_copy_batch=not cfg.crop_to_lesion,
                fn_constructor_kwargs={
                    "bundle": cfg.segmenter,
                    "backend": cfg.backend,
                    "device": cfg.device,
                    "precision": cfg.precision,
                    "compile": cfg.compile,
                    "threads": cfg.segment.threads,
                    "crop_to_lesion": cfg.crop_to_lesion,
                },
            )
        ds = actor_stage(
            ds,
            ClassifyStage,
            cfg.classify,
            fn_constructor_kwargs={
                "bundle": cfg.model,
                "backend": cfg.backend,
                "device": cfg.device,
                "precision": cfg.precision,
                "compile": cfg.compile,
                "threads": cfg.classify.threads,
                "explain": cfg.explain,
                "method": cfg.explain_method,
                "flag_classes": cfg.flag.classes,
                "threshold": cfg.flag.threshold,
                "thumbnails": cfg.thumbnails,
                "explain_here": cfg.explain_placement == "classifier",
            },
        )
        if explain_in_pool(cfg):
            ds = actor_stage(
                ds,
                ExplainStage,
                cfg.explainer,
                fn_constructor_kwargs={
                    "bundle": cfg.model,
                    "method": cfg.explain_method,
                    "device": cfg.device,
                    "threads": cfg.explainer.threads,
                },
            )
    return ds.map_batches(
        write_batch,
        batch_size=cfg.rows_per_part,
        batch_format="numpy",
        num_cpus=WRITE_CPUS,
        fn_kwargs={"output": cfg.output, "host": _output_host(cfg)},
        **remote,
    )


def rows_written(ds):
    """Rows written per finished part, as the write tasks report them. Reads the pipeline's output as block
    references and fetches only the one-row count blocks: `iter_batches` would run two prefetch threads that poll
    for as long as the run lasts (a quarter of the driver's CPU at 200,000 inputs), for ~50 rows of counts."""
    import ray

    for bundle in ds.iter_internal_ref_bundles():
        yield sum(int(np.asarray(block["rows"]).sum()) for block in ray.get(bundle.block_refs))


def _warn_if_tasks_starve(cfg: ScreenConfig) -> None:
    """Actor pools hold their CPUs for the whole run: if their minimum sizes take every CPU the cluster has now,
    decode and write tasks never get one and the run stalls (an autoscaling cluster may still add nodes)."""
    import ray

    pools = [cfg.classify, *([cfg.segment] if cfg.segmenter else [])]
    pools += [cfg.explainer] if explain_in_pool(cfg) else []
    held = sum(p.num_cpus * p.pool[0] for p in pools)
    total = ray.cluster_resources().get("CPU", 0.0)
    if total and held + max(cfg.decode.num_cpus, WRITE_CPUS) > total + 1e-9:
        print(
            f"[screen] warning: the actor pools hold {held:g} of the cluster's {total:g} CPUs, leaving less than "
            f"decode ({cfg.decode.num_cpus:g}) and write ({WRITE_CPUS:g}) tasks need: the run may stall until "
            "more nodes join (lower classify/segment/explainer num_cpus or actors)",
            flush=True,
        )


def _task(fn, env: dict, **options):
    import ray

    options = {"num_cpus": 0.25, **options}
    return ray.remote(fn).options(runtime_env={"env_vars": env} if env else None, **options)


def screen(cfg: ScreenConfig, ray_address: str | None = None, stand_in=None) -> dict:
    """Run (or resume) a screening job; returns the summary. Interrupting keeps every part written so far.

    The driver plans the listing, starts the pipeline and counts parts: the inputs are listed in read tasks into
    the object store, the resume index and the final counts are computed in tasks, and the rows are written by the
    workers that made them."""

    from skinscan.data.listing import plan_units

    if not cfg.input:
        raise ConfigError("config key input: give an archive, folder or manifest (--input)")
    # everything a user can get wrong is checked here, before Ray starts: one line each
    _check_models(cfg)
    _check_backend(cfg, ray_address)
    check_writable(cfg.output)
    units = plan_units(cfg.input, cfg.include_masks)
    if not units:  # an empty folder: one line before Ray starts
        raise DataError(f"{cfg.input}: no input files")
    with OutputLease(cfg.output) as lease:  # one run at a time per output: a second is refused in one line
        try:
            summary = _screen_held(cfg, ray_address, units, stand_in)
        except Exception as err:  # a refusal raised inside a Ray task (write host, part schema): its one line
            cause, seen = err, 0
            while cause is not None and seen < 8:  # Ray's task errors and Ray Data's wrappers, down to ours
                if isinstance(cause, SkinScanError) and type(cause).__module__.startswith("skinscan"):
                    raise SkinScanError(str(cause).strip().splitlines()[-1]) from None
                cause, seen = getattr(cause, "cause", None) or cause.__cause__, seen + 1
            raise
    if lease.lost:
        print(f"[screen] warning: another run took over {cfg.output} during this one; check its counts", flush=True)
    return summary


def _output_host(cfg: ScreenConfig) -> str | None:
    """The machine whose disk a local output is on (the driver's); None for object stores and shared mounts."""
    import socket

    from skinscan.data import storage

    return None if storage.is_remote(cfg.output) or cfg.output_shared else socket.gethostname()


def _check_output_reachable(cfg: ScreenConfig) -> None:
    """A local output on a cluster of several machines would be written to each worker's own disk: refused in one
    line, unless `output_shared` says every node mounts it (NFS, a cluster filesystem)."""
    import ray

    from skinscan.data import storage

    if storage.is_remote(cfg.output) or cfg.output_shared:
        return
    hosts = {n.get("NodeManagerHostname") or n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
    if len(hosts) > 1:
        raise ConfigError(
            f"output {cfg.output} is a local path, but the cluster spans {len(hosts)} machines: each would write "
            "to its own disk. Use an object-store URI (s3://, gs://), or output_shared=true if every node mounts it"
        )


LISTING_BLOCK_ROWS = 8192
"""Inputs per table a streaming read task yields before re-blocking (`inputs.stream_inputs`)."""


def _units_keys(units: list) -> np.ndarray:
    """Sorted unique resume keys of the inputs of `units`, listed here (the counts' keys, the progress total)."""
    from skinscan.data.listing import iter_unit

    keys = [np.asarray(t.column("key"), np.uint64) for u in units for t in iter_unit(u, 65536)]
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)


def _merge_keys(*keys: np.ndarray) -> tuple[np.ndarray, int]:
    merged = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)
    return merged, len(merged)


def list_keys(units: list, env: dict) -> tuple[list, object, object]:
    """Every input's key, listed in tasks beside the screening (which streams its own listing): (the tasks, an
    ObjectRef of the sorted unique keys, an ObjectRef of how many). 8 bytes an input, in the object store."""
    n = max(1, min(len(units), MAX_LISTING_TASKS))  # each task takes several units in turn
    tasks = [_task(_units_keys, env, num_cpus=0).remote(units[i::n]) for i in range(n)]
    keys, n = _task(_merge_keys, env, num_returns=2).remote(*tasks)
    return tasks, keys, n


def _scan_groups(parts: list[str]) -> list[list[str]]:
    """Parts in groups for scan and rewrite tasks: at most about as many as the cluster has CPUs."""
    import ray

    return partindex.groups(parts, tasks=int(ray.cluster_resources().get("CPU", 1)))


def _rewrite_in_groups(cfg: ScreenConfig, fn, *args) -> dict:
    """`--retry-errors` and `--prune-stale`: `fn` over groups of parts, in parallel tasks."""
    import ray

    from skinscan.data.storage import storage_env

    task = _task(fn, storage_env())
    return _sum_drops(ray.get([task.remote(cfg.output, g, *args) for g in _scan_groups(list_parts(cfg.output))]))


def count_in_tasks(output: str, inputs=None) -> dict:
    """Every part scanned in parallel tasks, then counted against `inputs` (an ObjectRef of sorted listing keys)."""
    import ray

    from skinscan.data.storage import storage_env

    env = storage_env()
    scans = [_task(partindex.scan_task, env).remote(output, g) for g in _scan_groups(list_parts(output))]
    return ray.get(_task(partindex.counts_task, env).remote(output, inputs, *scans))


def _screen_held(cfg: ScreenConfig, ray_address: str | None, units: list, stand_in=None) -> dict:
    """`screen` once the output's lease is held."""
    import ray

    from skinscan.data.storage import storage_env

    try:
        earlier = bool(list_parts(cfg.output))
    except PermissionError:
        raise ConfigError(f"output {cfg.output}: permission denied") from None
    if earlier and not cfg.resume:
        raise SkinScanError(f"{cfg.output} already holds results; use resume=true or another output")
    if stand_in is None:
        _prepare_onnx(cfg)  # before the maker is recorded: it names the ONNX file's sha256
    check_and_record(cfg, earlier, cfg.force_mixed)
    connect(ray_address, cfg.connect_timeout_s)
    _check_output_reachable(cfg)
    _warn_if_tasks_starve(cfg)
    env = storage_env()
    t_list = time.time()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
    ctx.execution_options.preserve_order = False
    listing, inputs, n_ref = list_keys(units, env)  # beside the screening, which streams its own listing
    try:
        return _screen_listed(cfg, units, stand_in, earlier, env, t_list, inputs, n_ref)
    finally:  # an error or ctrl-c: the listing tasks stop with the run
        for ref in [*listing, n_ref]:
            ray.cancel(ref, recursive=True)


def _screen_listed(cfg, units, stand_in, earlier, env, t_list, inputs, n_ref) -> dict:
    """`_screen_held` once the key listing has started: resume index, screening, counts."""
    import ray

    listing_s: list[float] = []  # when the listing ended, for the summary: a first run screens before it does

    def n_inputs() -> int:
        n = ray.get(n_ref)
        if not listing_s:
            listing_s.append(round(time.time() - t_list, 1))
        if n == 0:
            raise DataError(f"{cfg.input}: no input files")
        return n

    if earlier and cfg.retry_errors:  # transient error rows go; the resume index then counts them as to do
        retried = _rewrite_in_groups(cfg, partindex.retry_task)
        print(f"[screen] {retried['rows']} rows with a transient error ({', '.join(TRANSIENT_ERRORS)}) to screen again")
    if earlier and cfg.prune_stale:  # needs the whole listing first
        n_inputs()
        pruned = _rewrite_in_groups(cfg, partindex.prune_task, inputs)
        print(
            f"[screen] pruned {pruned['rows']} stale rows from {pruned['parts']} parts"
            + (f" (e.g. {', '.join(pruned['examples'])})" if pruned["examples"] else ""),
            flush=True,
        )
    before = list_parts(cfg.output) if earlier else []
    scans = [_task(partindex.scan_task, env).remote(cfg.output, g) for g in _scan_groups(before)]
    done, n_done = None, 0
    if scans:  # the resume index: built in a task, it reaches the read tasks through the object store
        done, n_done_ref, aside_ref = _task(partindex.merge_done, env, num_returns=3).remote(*scans)
        n_done, aside = ray.get([n_done_ref, aside_ref])
        if aside:
            print(
                f"[screen] set aside {len(aside)} unreadable parts in {cfg.output}/set_aside "
                f"(e.g. {aside[0]}): their inputs are screened again",
                flush=True,
            )
            gone = set(aside)  # a part this run writes may take a set-aside part's name: it is new, not scanned
            before = [p for p in before if p.rsplit("/", 1)[-1] not in gone]
    total, to_do = None, True
    if earlier:  # a rerun waits for the listing: it says what is left, and starts no model when nothing is
        total = n_inputs()
        n_done = ray.get(_task(_listed_done, env).remote(inputs, done)) if done is not None else 0
        to_do = n_done < total
        print(
            f"[screen] {total} inputs listed in {time.time() - t_list:.1f}s "
            f"({len(units)} listing unit{'s' if len(units) != 1 else ''}); "
            f"{n_done} already written, {total - n_done} to do",
            flush=True,
        )
    t0 = time.time()
    arrivals: list[tuple[float, int]] = []  # (seconds since t0, rows written so far)
    written, interrupted = 0, False
    if to_do:
        ds = build_dataset(cfg, units, done, stand_in)
        # Ray's own lines during the run (actor notices, executor logs) go to the session's log, the bar to the user
        with quiet_stderr() as terminal:
            bar = tqdm(
                total=total,
                initial=n_done,
                desc="screen (rows written)",
                unit="img",
                disable=not cfg.progress,
                file=terminal,
            )
            try:
                for n in rows_written(ds):
                    written += n
                    if bar.total is None and ray.wait([n_ref], timeout=0)[0]:
                        bar.total = n_inputs()  # a first run streams: the share done shows once listed
                    bar.update(n)
                    arrivals.append((time.time() - t0, written))
            except KeyboardInterrupt:
                interrupted = True
            finally:
                bar.close()
    wall = time.time() - t0
    if not earlier and not interrupted:
        print(f"[screen] {n_inputs()} inputs, listed beside the screening in {listing_s[0]} s", flush=True)
    prior = set(before)
    after = [p for p in list_parts(cfg.output) if p not in prior]  # the parts this run wrote
    scans += [_task(partindex.scan_task, env).remote(cfg.output, g) for g in _scan_groups(after)]
    counts = ray.get(_task(partindex.counts_task, env).remote(cfg.output, None if interrupted else inputs, *scans))
    summary = summarize(cfg.output, wall, written, counts, arrivals)
    summary.update(
        {
            "input": cfg.input,
            "output": cfg.output,
            "backend": cfg.backend,
            "explain": cfg.explain,
            "interrupted": interrupted,
            "listing_s": listing_s[0] if listing_s else None,
            "flag": flag_summary(cfg),
            "shift": None if stand_in or interrupted else shift_summary(cfg),
        }
    )
    record_summary(cfg.output, summary)
    verdict = None if summary["shift"] is None else {"shift": summary["shift"], "flag_rule": summary["flag"]["rule"]}
    try:  # the verdict also goes into the Parquet dataset's own metadata, beside the parts it is about (none: removed)
        write_dataset_metadata(cfg.output, verdict)
    except Exception as err:  # noqa: BLE001 - never cost a run its summary
        print(f"[screen] could not write results/_common_metadata: {err}", flush=True)
    if interrupted:
        raise KeyboardInterrupt(f"{written} rows written this run; rerun the same command to resume")
    return summary


def shift_summary(cfg: ScreenConfig) -> dict | None:
    """The archive against the card's validation reference (`screening.shiftcheck`)."""
    from skinscan.models.bundle import read_card
    from skinscan.screening.shiftcheck import archive_shift

    try:
        return archive_shift(cfg.output, read_card(cfg.model), cfg.rows_per_part)
    except Exception as err:  # noqa: BLE001 - the check must never cost a run its summary
        return {"skipped": f"the check failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def flag_summary(cfg: ScreenConfig) -> dict:
    """The flag rule this run used and, for the card's operating points, what each gave on validation."""
    from skinscan.models.bundle import read_card
    from skinscan.models.calibration import screening_rule

    card = read_card(cfg.model)
    rule = screening_rule(card, cfg.flag.threshold, cfg.flag.classes)
    points = {}
    if rule.source == "card":
        points = {
            n: p.model_dump(
                include={
                    "classes",
                    "threshold",
                    "target_sensitivity",
                    "target_confidence",
                    "bound_reached",
                    "chosen_on",
                    "chosen",
                    "val_sensitivity",
                    "val_sensitivity_ci",
                    "val_flag_sensitivity",
                    "val_specificity",
                    "val_referrals_per_1000",
                }
            )
            for n, p in card.operating_points.items()
        }
    whole = card.calibration.flag_on_validation if rule.source == "card" and card.calibration else None
    return {
        "rule": rule.describe(),
        "source": rule.source,
        "temperature": card.temperature,
        "points": points,
        "whole_flag_on_validation": whole,
    }


def print_summary(s: dict) -> None:
    print(
        f"[screen] {s['rows']} rows for {s['inputs']} inputs (complete: {s['complete']}, missing "
        f"{s.get('missing', '?')}, duplicates {s['duplicates']}); ok {s['ok']}, errors {s['errors']} "
        f"{s['errors_by_type'] or ''}"
    )
    if s.get("stale"):
        print(
            f"[screen] {s['stale']} rows are for inputs no longer listed (e.g. {', '.join(s['stale_examples'])}); "
            "they are kept and do not count as missing"
        )
    print(f"[screen] per class {s['per_class']}; flagged {s['flagged']} by {s.get('flag', {}).get('rule', '?')}")
    if s.get("shift"):
        from skinscan.evaluation.shift import describe
        from skinscan.screening.shiftcheck import describe_expected

        print(
            f"[screen] {'WARNING: ' if s['shift'].get('shifted') else ''}archive vs validation: {describe(s['shift'])}"
        )
        e = s["shift"].get("expected_per_1000")
        if e and e.get("withheld"):
            print(f"[screen] rates per 1,000 not estimated without labels: {e['withheld']}")
        elif e:
            print(f"[screen] {describe_expected(e)}")
    if s.get("metadata_used"):
        print(
            f"[screen] {s['metadata_used']} of {s['ok']} images classified with their age/sex/site; the rest image-only"
        )
    if s.get("images_per_s") is not None and s.get("this_run_rows"):
        print(
            f"[screen] this run: {s['this_run_rows']} images in {s['this_run_wall_s']} s "
            f"({s['images_per_s']} img/s) -> {s['output']}"
        )
    if s.get("startup_s") is not None:
        steady = s.get("steady_images_per_s")
        print(
            f"[screen] first rows after {s['startup_s']} s (start-up)"
            + (f"; steady rate {steady} img/s (after the first 10% of rows)" if steady else "")
        )


def run(cfg: ScreenConfig, ray_address: str | None = None) -> dict:
    """Screen, print the summary, return it (the `skinscan screen` command and `jobs.screen`)."""
    summary = screen(cfg, ray_address=ray_address)
    print_summary(summary)
    return summary
