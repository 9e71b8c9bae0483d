"""The inputs of a screening run as a Ray Data source: the driver plans the listing units (`plan_units`, which
reads only the top of the input) and each unit is listed in its own read task, so the list of inputs lives in the
object store, in blocks of `chunk_rows`, and never in the driver."""

from __future__ import annotations

import functools

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from skinscan.data.listing import LISTING_SCHEMA, Unit, iter_unit, plan_units


class InputSource(Datasource):
    """One read task per listing unit (archive, subfolder, manifest), each yielding blocks of `chunk_rows`."""

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
    """A lazy Dataset of (image_id, uri, key) over every input of `uri`, in blocks of `chunk_rows` (a read task's
    output would otherwise be merged into one large block)."""
    import ray

    units = units if units is not None else plan_units(uri)
    return ray.data.read_datasource(
        InputSource(units, chunk_rows),
        override_num_blocks=max(1, len(units)),
        num_cpus=0.25,  # listing is I/O: archive directories, folder scans, object-store pages
        **({"runtime_env": runtime_env} if runtime_env else {}),
    ).repartition(target_num_rows_per_block=chunk_rows)
