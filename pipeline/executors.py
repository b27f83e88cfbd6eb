"""Where the stages run: in this process (`local`) or as a Ray Data streaming job (`ray`).

Both take the planned rows and the per-expert stage settings and yield finished rows (without
pixels) as they complete, in no particular order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.stages import ExpertStage, decode_rows


@dataclass
class StageSpec:
    name: str
    config: dict
    batch_size: int = 4
    actors: int = 1
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    memory_mb: int = 0  # what one actor needs (annotators/registry.py); Ray reserves it when scheduling


def run_local(rows: list[dict], specs: list[StageSpec], batch_size: int = 4) -> Iterator[dict]:
    """The naive baseline and the test executor: one process, stages one after another per batch."""
    stages = [ExpertStage(s.name, s.config, s.batch_size) for s in specs]
    for start in range(0, len(rows), batch_size):
        batch = decode_rows(rows[start : start + batch_size])
        for stage in stages:
            batch = stage(batch)
        for row in batch:
            row["pixels"] = b""
            yield row


class _ArrowExpertStage:
    """Ray actor wrapper: Arrow batch in, Arrow batch out, same schema."""

    def __init__(self, name: str, config: dict, batch_size: int):
        self.stage = ExpertStage(name, config, batch_size)

    def __call__(self, table):
        import pyarrow as pa

        return pa.Table.from_pylist(self.stage(table.to_pylist()), schema=table.schema)


def _decode_arrow(table):
    import pyarrow as pa

    return pa.Table.from_pylist(decode_rows(table.to_pylist()), schema=table.schema)


def init_ray(num_cpus: int | None = None) -> str:
    """Connect to RAY_ADDRESS when set, else start a local runtime. Returns a description."""
    import logging

    import ray

    logging.getLogger("ray").setLevel(logging.WARNING)
    if ray.is_initialized():
        return "ray (already initialised)"
    address = os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if address:
        ray.init(address=address, log_to_driver=False)
        return f"ray cluster at {address}"
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return f"local ray runtime ({num_cpus or os.cpu_count()} CPUs)"


def run_ray(rows: list[dict], specs: list[StageSpec], batch_size: int = 4) -> Iterator[dict]:
    import pyarrow as pa
    import ray.data
    from ray.data import ActorPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    table = pa.Table.from_pylist(rows)
    step = max(batch_size, -(-len(rows) // 256))  # at most 256 input blocks of >= one batch each
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(rows), step)])
    ds = ds.map_batches(_decode_arrow, batch_format="pyarrow", batch_size=batch_size, num_cpus=0.5)
    for spec in specs:
        ds = ds.map_batches(
            _ArrowExpertStage,
            fn_constructor_kwargs={"name": spec.name, "config": spec.config, "batch_size": spec.batch_size},
            compute=ActorPoolStrategy(size=spec.actors),
            batch_size=spec.batch_size,
            batch_format="pyarrow",
            num_cpus=spec.num_cpus,
            **({"num_gpus": spec.num_gpus} if spec.num_gpus else {}),
            **({"memory": spec.memory_mb * 2**20} if spec.memory_mb else {}),
        )
    ds = ds.drop_columns(["pixels"])
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from batch.to_pylist()
