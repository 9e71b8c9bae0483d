"""The inputs of a screening run as a Ray Data source: the driver plans the listing units (`plan_units`, which
reads only the top of the input) and each unit is listed in its own read task, so the list of inputs lives in the
object store and never in the driver.

Screening consumes the listing as it streams (`stream_inputs`): the first images are decoded while the read tasks
are still paging through a prefix. The counts at the end need every input's key, so the keys are listed again in
tasks beside it (`pipeline.list_keys`, 8 bytes an input); listing is cheap next to screening (docs/capacity.md)."""

from __future__ import annotations

import functools

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from skinscan.data.listing import LISTING_SCHEMA, MAX_LISTING_TASKS, Unit, iter_unit, plan_units

LISTING_CPUS = 0.0
"""Listing is I/O (archive directories, folder scans, object-store pages) and its tasks run inside the pipeline now:
with a CPU share of their own they would wait forever once the actor pools hold every CPU (a stalled run, seen)."""


class InputSource(Datasource):
    """One read task per listing unit (archive, subfolder, prefix, manifest), each yielding blocks of `chunk_rows`."""

    def __init__(self, units: list[Unit], chunk_rows: int):
        self.units, self.chunk_rows = units, chunk_rows

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [
            ReadTask(functools.partial(iter_unit, unit, self.chunk_rows), meta, schema=LISTING_SCHEMA)
            for unit in self.units
        ]


def read_inputs(uri: str, chunk_rows: int, runtime_env: dict | None = None, units: list[Unit] | None = None):
    """A lazy Dataset of (image_id, uri, key, age, sex, site) over every input of `uri`, one read task per unit
    (Ray Data merges a task's chunks into large blocks: what a task holding all keys wants)."""
    import ray

    units = units if units is not None else plan_units(uri)
    return ray.data.read_datasource(
        InputSource(units, chunk_rows),
        override_num_blocks=max(1, len(units)),
        num_cpus=LISTING_CPUS,
        concurrency=read_tasks(units),  # no CPU share bounds them: a folder of thousands of subfolders
        **({"runtime_env": runtime_env} if runtime_env else {}),
    )


def read_tasks(units: list) -> int:
    """Read tasks at once: one per unit, at most `MAX_LISTING_TASKS`."""
    return max(1, min(len(units), MAX_LISTING_TASKS))


def _keep_all(batch):
    return batch


def stream_inputs(inputs, block_rows: int, fn=None, fn_kwargs: dict | None = None, runtime_env: dict | None = None):
    """`inputs` (a `read_inputs` Dataset) through `fn` (a per-block filter such as the resume index), in blocks of
    `block_rows`, so that each decode task takes one block and many run at once.

    The re-blocking is a streaming repartition fused into the read task: its operator otherwise asks for a whole CPU
    per task, and once the actor pools hold every CPU it never gets one (a stalled run, seen on 2 cores).
    `map_batches` without a batch size is what lets Ray fuse it (tests/test_standin.py checks the fused plan)."""
    remote = {"num_cpus": LISTING_CPUS, **({"runtime_env": runtime_env} if runtime_env else {})}
    ds = inputs.map_batches(
        fn or _keep_all,
        batch_size=None,
        batch_format="numpy",
        fn_kwargs=fn_kwargs,
        concurrency=inputs._logical_plan.dag.compute.size,  # the read's task pool: the two fuse
        **remote,
    )
    ds = ds.repartition(target_num_rows_per_block=block_rows)
    from ray.data._internal.logical.operators import StreamingRepartition

    op = ds._logical_plan.dag
    if not isinstance(op, StreamingRepartition):  # a Ray upgrade changed the plan: fail here, not as a stalled run
        raise RuntimeError(f"expected Ray Data's StreamingRepartition, got {type(op).__name__}")
    op.ray_remote_args.update(remote)  # the same resources and task pool as the read task, so it fuses into it
    object.__setattr__(op, "compute", ds._logical_plan.dag.input_dependencies[0].compute)
    return ds
