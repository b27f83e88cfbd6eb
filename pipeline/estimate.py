"""`moai plan`: what a run would do and roughly what it would cost, before it runs.

Per expert: how many images still need it, and its model time per image, taken from this warehouse's
`runs` history (runs of the same expert config first, then of the same backend and model), or else
measured by a short probe: the expert loaded here and run on a few of the planned images (the first
one is a warm-up and not counted). Wall time = start-up + images × time per image, where time per
image is the history's own wall time per image when a run of the same configs and executor exists,
and otherwise the experts' model times combined as the executor runs them (one after another in one
process; with Ray, whose actor pools follow cost, their sum spread over every core). Disk = the
warehouse's bytes per annotated image (or the probe's rows, compressed as the warehouse stores them).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field

from annotators.registry import EXPERTS

RAY_START_S = 8.0  # a local Ray runtime's start-up on a 2-core machine (measured), before models load
PROBE_IMAGES = 3


@dataclass
class ExpertCost:
    todo: int
    ms_per_image: float | None = None
    source: str = "unknown"


@dataclass
class Estimate:
    listed: int
    done: int
    todo: int
    executor: str
    experts: dict[str, ExpertCost] = field(default_factory=dict)
    startup_s: float | None = None
    per_image_s: float | None = None
    per_image_source: str = ""
    bytes_per_image: float | None = None

    @property
    def seconds(self) -> float | None:
        if self.todo == 0:
            return 0.0
        if self.per_image_s is None or self.startup_s is None:
            return None
        return self.startup_s + self.todo * self.per_image_s

    def lines(self) -> list[str]:
        out = [
            f"{self.listed} images listed, {self.done} already done, {self.todo} to process ({self.executor})"
        ]
        for name, cost in self.experts.items():
            rate = f"{cost.ms_per_image:8.0f} ms/img" if cost.ms_per_image is not None else "       ? ms/img"
            out.append(f"  {name:<13}{cost.todo:>7} images  {rate}  ({cost.source})")
        if self.todo:
            total = self.seconds
            when = f"~{_duration(total)}" if total is not None else "unknown"
            out.append(
                f"  estimate: {when}"
                + (f" (start-up ~{self.startup_s:.0f} s, then {self.per_image_s:.2f} s/image, {self.per_image_source})"
                   if total else "")
            )  # fmt: skip
            if self.bytes_per_image:
                out.append(
                    f"  disk: ~{_size(self.todo * self.bytes_per_image)} ({self.bytes_per_image / 1024:.1f} KiB/image)"
                )
        return out


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def run_history(wh) -> list[dict]:
    rows = wh.query(
        "SELECT started_at, finished_at, images_processed, counts_json, config_json FROM runs"
    ).to_pylist()
    for r in rows:
        r["counts"], r["config"] = json.loads(r["counts_json"] or "{}"), json.loads(r["config_json"] or "{}")
    return rows


def expert_ms_from_history(
    runs: list[dict], name: str, config: dict, plan_hash: str
) -> tuple[float, str] | None:
    """Model ms per image of this expert from earlier runs: the same config first, then backend + model."""
    for tier, same in (
        ("same config", lambda c: c.get("plan_hashes", {}).get(name) == plan_hash),
        ("same backend and model", lambda c: {k: c.get("profile", {}).get(name, {}).get(k) for k in ("backend", "model")}
         == {k: config.get(k) for k in ("backend", "model")}),
    ):  # fmt: skip
        used = [r for r in runs if name in r["config"].get("profile", {}) and same(r["config"])]
        images = sum(
            r["counts"].get(f"{name}_images", 0) + r["counts"].get(f"{name}_errors", 0) for r in used
        )
        seconds = sum(r["counts"].get(f"{name}_model_seconds", 0.0) for r in used)
        if images:
            return 1000 * seconds / images, f"history: {images} images in {len(used)} runs, {tier}"
    return None


def _probe(plan, profile, names: list[str], batch_size: int) -> tuple[dict[str, float], float, list[dict]]:
    """Run the experts here on up to PROBE_IMAGES planned images: (ms/img by expert, load seconds, rows)."""
    from pipeline.stages import ExpertStage, decode_rows

    rows = decode_rows(plan.head(PROBE_IMAGES))
    ms: dict[str, float] = {}
    load_s = 0.0
    for name in EXPERTS:  # registry order: upstream experts' records exist before they are read
        if name not in profile.experts or not any(name in r["todo"].split(",") for r in rows):
            continue
        start = time.perf_counter()
        stage = ExpertStage(name, profile.experts[name], batch_size)
        load_s += time.perf_counter() - start
        rows = stage(rows)
        timed = [
            r[f"{name}_seconds"] for r in rows if name in r["todo"].split(",") and not r["decode_reason"]
        ]
        timed = timed[1:] or timed  # the first image warms caches up
        if timed and name in names:
            ms[name] = 1000 * sum(timed) / len(timed)
    return ms, load_s, rows


def _warehouse_bytes_per_image(wh, dataset: str) -> float | None:
    manifest = wh.manifest()
    sizes: dict[str, int] = {}
    for table in [*(s.table for s in EXPERTS.values()), "images", "aux_text", "done", "errors"]:
        for rel in manifest["tables"].get(table, []):
            ds = rel.split("/")[1].removeprefix("dataset=")
            path = wh.root / rel
            if path.is_file():
                sizes[ds] = sizes.get(ds, 0) + path.stat().st_size
    counts = {
        r["dataset"]: r["n"]
        for r in wh.query("SELECT dataset, count(*) AS n FROM images GROUP BY 1").to_pylist()
    }
    for scope in ([dataset] if dataset in counts else []) + [None]:
        images = counts.get(scope) if scope else sum(counts.values())
        used = sizes.get(scope, 0) if scope else sum(sizes.values())
        if images:
            return used / images
    return None


def _probe_bytes_per_image(rows: list[dict], hashes: dict[str, str], profile) -> float | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from verbalize.aux import verbalize_row
    from warehouse.rows import table_rows_for
    from warehouse.schema import TABLES

    ok = [r for r in rows if not r["decode_reason"]]
    if not ok:
        return None
    tables: dict[str, list[dict]] = {}
    for row in ok:
        row.setdefault("run_id", "probe")
        for table, out in table_rows_for(row, hashes, False).items():
            tables.setdefault(table, []).extend(out)
        tables.setdefault("aux_text", []).append({"dataset": row["dataset"], "image_id": row["image_id"],
                                                  **verbalize_row(row, profile.verbalize)})  # fmt: skip
    total = 0
    for table, out in tables.items():
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(out, schema=TABLES[table]), buffer, compression="zstd")
        total += len(buffer.getvalue())
    return total / len(ok)


def estimate(plan, profile, hashes, wh, executor: str, batch_size: int, probe: bool = True) -> Estimate:
    """What `plan` would cost under `executor` (see the module docstring). Without `probe`, only the
    history answers (what `moai annotate` prints at start: it does not load models twice)."""
    est = Estimate(plan.listed, plan.skipped, plan.count, executor,
                   {n: ExpertCost(plan.todo.get(n, 0)) for n in profile.experts})  # fmt: skip
    if not plan.count:
        return est
    runs = run_history(wh)
    for name, cost in est.experts.items():
        found = expert_ms_from_history(runs, name, profile.experts[name], hashes[name])
        if found:
            cost.ms_per_image, cost.source = found
    missing = [n for n, c in est.experts.items() if c.ms_per_image is None and c.todo]
    probe_rows: list[dict] = []
    load_s = None
    if missing and probe:
        measured, load_s, probe_rows = _probe(plan, profile, missing, batch_size)
        for name, ms in measured.items():
            est.experts[name].ms_per_image = ms
            est.experts[name].source = f"probe: {min(plan.count, PROBE_IMAGES)} images here"
    same = [r for r in runs if r["config"].get("plan_hashes") == hashes and r["config"].get("executor") == executor
            and r["images_processed"] and "startup_s" in r["counts"]]  # fmt: skip
    if same:  # an earlier run of exactly this: its own wall time per image and start-up
        walls = [((r["finished_at"] - r["started_at"]).total_seconds() - r["counts"]["startup_s"]) / r["images_processed"]
                 for r in same]  # fmt: skip
        est.per_image_s = sum(walls) / len(walls)
        est.startup_s = sum(r["counts"]["startup_s"] for r in same) / len(same)
        est.per_image_source = f"as {len(same)} earlier runs of these configs"
    elif all(c.ms_per_image is not None for c in est.experts.values() if c.todo):
        share = {n: c.ms_per_image * c.todo / plan.count / 1000 for n, c in est.experts.items() if c.todo}
        cores = os.cpu_count() or 1
        if executor == "ray":  # pools follow cost and cheap experts share actors: every core busy
            est.per_image_s = sum(share.values()) / cores
            est.per_image_source = f"experts overlapped on {cores} cores"
        else:
            est.per_image_s = sum(share.values())
            est.per_image_source = "experts one after another"
        loads = load_s if load_s is not None else 0.0
        est.startup_s = loads + (RAY_START_S if executor == "ray" else 0.0)
    est.bytes_per_image = _warehouse_bytes_per_image(wh, plan.dataset) or (
        _probe_bytes_per_image(probe_rows, hashes, profile) if probe_rows else None
    )
    return est
