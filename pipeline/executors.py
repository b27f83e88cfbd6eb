"""Where the stages run: in this process (`local`) or as a Ray Data streaming job (`ray`).

Both read the plan (pipeline/plan.py: Parquet files of stage rows) and the per-expert stage settings
and yield finished rows (without pixels) as they complete, in no particular order. Neither holds the
whole plan: the local executor reads it batch by batch, Ray Data reads the files on the cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.stages import ExpertStage, decode_rows


@dataclass
class StageSpec:
    """One actor pool of the Ray job: the experts its actors run, in order, on each batch (one expert
    usually; cheap experts share the actors of a costly neighbour, see pipeline/annotate.py)."""

    experts: list[tuple[str, dict]]  # (name, config) in dependency order
    batch_size: int = 4
    actors: int = 1
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    memory_mb: int = 0  # what one actor needs (annotators/registry.py); Ray reserves it when scheduling

    @property
    def name(self) -> str:
        return "+".join(name for name, _ in self.experts)


def run_local(batches: Iterable[list[dict]], specs: list[StageSpec], batch_size: int = 4) -> Iterator[dict]:
    """The naive baseline and the test executor: one process, stages one after another per batch."""
    stages = [ExpertStage(name, config, s.batch_size) for s in specs for name, config in s.experts]
    for rows in batches:
        for start in range(0, len(rows), batch_size):
            batch = decode_rows(rows[start : start + batch_size])
            for stage in stages:
                batch = stage(batch)
            for row in batch:
                row["pixels"] = b""
                yield row


class _ArrowExpertStage:
    """Ray actor wrapper: Arrow batch in, Arrow batches out; runs its experts one after another on each
    `batch_size` rows. The first stage reads the plan's row groups it is handed and decodes, and the
    last drops the pixels and, given `write` = (function, keyword arguments, most), hands the finished
    rows of each call, at most `most` at a time, to the function (which writes them) and returns what it
    returns: every step of the job runs in an actor (see run_ray). Rows are written within the call that
    made them: an actor that dies later loses no row Ray thinks done."""

    def __init__(
        self,
        experts: list[tuple[str, dict]],
        batch_size: int,
        decode: bool = False,
        drop_pixels: bool = False,
        write: tuple | None = None,
    ):
        self.stages = [ExpertStage(name, config, batch_size) for name, config in experts]
        self.batch_size, self.decode, self.drop_pixels, self.write = batch_size, decode, drop_pixels, write

    def __call__(self, table):
        import pyarrow as pa

        if self.decode:  # (file, row group) pairs: this actor reads the plan rows itself
            table = _read_plan_groups(table)
        pending = None  # finished rows not yet written
        for start in range(0, table.num_rows, self.batch_size):  # a row group's pixels, a batch at a time
            chunk = table.slice(start, self.batch_size)
            rows = chunk.to_pylist()
            if self.decode:
                rows = decode_rows(rows)
            for stage in self.stages:
                rows = stage(rows)
            out = pa.Table.from_pylist(rows, schema=chunk.schema)
            out = out.drop_columns(["pixels"]) if self.drop_pixels else out
            if not self.write:
                yield out
                continue
            function, kwargs, most = self.write
            pending = out if pending is None else pa.concat_tables([pending, out])
            while pending.num_rows >= most:
                yield function(pending.slice(0, most), **kwargs)
                pending = pending.slice(most)
        if pending is not None and pending.num_rows:
            function, kwargs, _ = self.write
            yield function(pending, **kwargs)


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


def _read_plan_groups(descriptors):
    """Plan row groups in (one per descriptor row: file, group), their rows out: read on the worker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = descriptors.column("file").to_pylist()
    groups = descriptors.column("group").to_pylist()
    return pa.concat_tables([pq.ParquetFile(f).read_row_group(g) for f, g in zip(files, groups, strict=True)])


def run_ray(
    files: list[Path], specs: list[StageSpec], batch_size: int = 4, writer: tuple | None = None
) -> Iterator[dict]:
    """The plan's files through the expert stages on the cluster. With `writer` = (function, keyword
    arguments, rows, most), the function is called on the finished rows and what it returns is yielded
    instead: by the last expert actors, on each call's rows, at most `most` at a time (a later pool gets
    `rows` rows per call), or where no expert is left to run, by a task of a sliver of a CPU on `rows`."""
    import pyarrow.parquet as pq
    import ray.data
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    # The driver sends only (file, row group) pairs; the first expert actors read the plan's rows from
    # the files (the warehouse is on storage the cluster shares), so no read task or operator of its own
    # costs the driver's scheduler or a worker process. One block per row group: small plans still
    # spread over every actor, big ones stream.
    descriptors = [
        {"file": str(f), "group": g} for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)
    ]
    ds = ray.data.from_items(descriptors, override_num_blocks=max(1, min(1024, len(descriptors))))
    # Decoding and dropping the pixels happen inside the first and last expert actors, not as CPU tasks
    # of their own: when a node dies, Ray restarts its actors on the nodes left, and those can be too
    # full of actors to ever run a 0.5-CPU decode (the re-run of a lost block) or a 1-CPU column drop,
    # so the job would hang (tests/test_multinode.py). Actors that fit keep the whole job running.
    if not specs:  # nothing but decoding to do (only the aux text is missing)
        # Reading takes a sliver of a CPU, never a whole one (a task asking for a full CPU would wait for
        # ever on a node full of actors); at most two at a time: a 0.05-CPU task lets Ray start dozens
        # of worker processes.
        ds = ds.map_batches(_read_plan_groups, batch_format="pyarrow", batch_size=1, num_cpus=0.05,
                            compute=TaskPoolStrategy(size=2))  # fmt: skip
        ds = ds.map_batches(_decode_arrow, batch_format="pyarrow", batch_size=batch_size, num_cpus=0.5)
        ds = ds.drop_columns(["pixels"])
    function, kwargs, rows, most = writer or (None, None, None, None)
    for i, spec in enumerate(specs):
        last = i == len(specs) - 1
        write = (function, kwargs, most) if writer and last else None
        ds = ds.map_batches(
            _ArrowExpertStage,
            fn_constructor_kwargs={
                "experts": spec.experts,
                "batch_size": spec.batch_size,
                "decode": i == 0,
                "drop_pixels": last,
                "write": write,
            },  # fmt: skip
            compute=ActorPoolStrategy(size=spec.actors),
            # the first gets one row group at a time; a later one that writes, `rows` rows at a time
            batch_size=1 if i == 0 else rows if write else spec.batch_size,
            batch_format="pyarrow",
            num_cpus=spec.num_cpus,
            **({"num_gpus": spec.num_gpus} if spec.num_gpus else {}),
            **({"memory": spec.memory_mb * 2**20} if spec.memory_mb else {}),
        )
    if writer and not specs:
        ds = ds.map_batches(function, fn_kwargs=kwargs, batch_size=rows, batch_format="pyarrow", num_cpus=0.05,
                            compute=TaskPoolStrategy(size=2))  # fmt: skip
    # no prefetch thread: the rows coming back are small, and each waiting consumer polls Ray Data
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
        yield from batch.to_pylist()
