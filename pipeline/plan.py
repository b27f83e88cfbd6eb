"""What is left to do, computed in the warehouse and spooled to Parquet files.

The planner never holds the corpus listing, the ledger or the plan as Python objects:

    listing (Parquet tables, or COCO JSON entries)   ──┐  DuckDB, in bounded memory (it spills):
    `done` ledger, this dataset, grouped by image    ──┴─ anti-join → plan rows, streamed in batches
        → <spool>/part-*.parquet  (one row per image: the stage row of pipeline/stages.py)

Ray reads those files in parallel (`ray.data.read_parquet`), the local executor batch by batch; the
driver keeps only the counts. An image whose experts are partly done (a profile gained an expert, a
retry) gets its stored records of the finished experts, batch by batch, so the experts that run
downstream of them and the verbalizer see the same inputs as in a run that did everything at once.

The rules are those of the ledger: an (image, expert, config) key that is in `done` is finished
(`ok` or `error`); with `retry_errors` only `ok` keys count; an image whose decode failed is skipped
(it is an `errors` row) unless errors are retried.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.duck import bounded, sql_literal, with_memory_steps
from corpora.layout import ImageRef
from pipeline.stages import new_row
from warehouse.current import current_records
from warehouse.schema import DECODE_KEY
from warehouse.store import plain_errors

BATCH_ROWS = 50_000  # plan rows per DuckDB batch and per spooled file
GROUP_ROWS = (4, 64)  # rows per Parquet row group (the Ray job's unit of work): min, max
TAIL_ROWS = 8  # a plan file's last rows, one per row group: the job's last blocks are its smallest

# The columns the plan fills from the query; every other column of the stage row keeps the empty value
# new_row (pipeline/stages.py, the one definition of the stage row) gives it.
_FROM_QUERY = ("split", "image_id", "file_name", "path", "todo")


@cache
def _template() -> tuple[dict, pa.Schema]:
    """An empty stage row from new_row, and its Arrow types."""
    row = new_row(ImageRef("", "", 0, "", Path()), [])
    return row, pa.Table.from_pylist([row]).schema


@dataclass
class Plan:
    """Counts, and where the planned rows are (`batches()` reads them back)."""

    dataset: str
    listed: int = 0
    skipped: int = 0  # images with nothing left to do (or a decode error already recorded)
    count: int = 0  # images to process
    todo: dict[str, int] = field(default_factory=dict)  # expert -> images that still need it
    files: list[Path] = field(default_factory=list)
    spool: Path | None = None

    def batches(self, rows: int = 1024) -> Iterator[list[dict]]:
        for path in self.files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
                yield batch.to_pylist()

    def head(self, n: int) -> list[dict]:
        out: list[dict] = []
        for batch in self.batches(n):
            out += batch[: n - len(out)]
            if len(out) >= n:
                break
        return out

    def rows(self) -> Iterator[dict]:
        for batch in self.batches():
            yield from batch

    def remove(self) -> None:
        if self.spool is not None:
            shutil.rmtree(self.spool, ignore_errors=True)


def _listing_sql(con, corpus, splits: list[str] | None) -> str:
    """One relation over the corpus's listings: part (split order), pos, split, image_id, file_name, path."""
    parts = []
    for k, (split, image_dir, listing) in enumerate(corpus.listings(splits)):
        prefix = sql_literal(str(image_dir) + "/")
        if isinstance(listing, Path):
            source = f"read_parquet({sql_literal(str(listing))}, file_row_number = true)"
            pos, image_id = "file_row_number", "id"
        else:
            name = f"listing_{k}"
            con.register(name, pa.Table.from_pylist(
                [{"id": int(e["id"]), "file_name": e["file_name"], "pos": i} for i, e in enumerate(listing)],
                schema=pa.schema([("id", pa.int64()), ("file_name", pa.string()), ("pos", pa.int64())]),
            ))  # fmt: skip
            source, pos, image_id = name, "pos", "id"
        parts.append(
            f"SELECT {k} AS part, {pos} AS pos, {sql_literal(split)} AS split, CAST({image_id} AS BIGINT) "
            f"AS image_id, file_name, {prefix} || file_name AS path FROM {source}"
        )
    if not parts:
        return "SELECT NULL::INT AS part, NULL::BIGINT AS pos, NULL AS split, NULL::BIGINT AS image_id, " \
               "NULL AS file_name, NULL AS path WHERE false"  # fmt: skip
    return " UNION ALL ".join(parts)


def _plan_sql(listing: str, dataset: str, experts: list[str], hashes: dict[str, str], aux_key: str, limit,
              retry_errors: bool) -> tuple[str, list]:  # fmt: skip
    ok = " AND status = 'ok'" if retry_errors else ""
    keys = [(f"has_{i}", n, hashes[n]) for i, n in enumerate(experts)] + [("has_aux", "aux", aux_key)]
    flags = ",\n".join(f"bool_or(expert = ? AND config_hash = ?{ok}) AS {col}" for col, _, _ in keys)
    wanted = sorted({n for _, n, _ in keys} | {"decode"})
    params: list = [p for _, n, h in keys for p in (n, h)] + [DECODE_KEY, DECODE_KEY, dataset, *wanted]
    todo = ", ".join(
        f"CASE WHEN NOT coalesce(d.has_{i}, false) THEN {sql_literal(n)} END" for i, n in enumerate(experts)
    )
    done_some = " OR ".join(f"coalesce(d.has_{i}, false)" for i in range(len(experts))) or "false"
    sql = f"""
        WITH listing AS ({f"SELECT * FROM ({listing}) ORDER BY part, pos LIMIT {int(limit)}" if limit is not None else listing}),
        ledger AS (
            SELECT image_id, {flags},
                bool_or(expert = 'decode' AND config_hash = ? AND status = 'ok') AS decode_ok,
                bool_or(expert = 'decode' AND config_hash = ?) AS decode_any
            FROM done WHERE dataset = ? AND expert IN ({", ".join("?" for _ in wanted)})
            GROUP BY image_id
        ),
        joined AS (
            SELECT l.part, l.pos, l.split, l.image_id, l.file_name, l.path,
                concat_ws(',', {todo}) AS todo,
                coalesce(d.has_aux, false) AS has_aux,
                coalesce(d.decode_ok, false) AS decode_committed,
                coalesce(d.decode_any AND NOT d.decode_ok, false) AS decode_failed,
                ({done_some}) AS partial
            FROM listing l LEFT JOIN ledger d USING (image_id)
        )
        SELECT * FROM joined
        WHERE {"" if retry_errors else "NOT decode_failed AND "}(todo <> '' OR NOT has_aux)
        ORDER BY part, pos
    """
    return sql, params


def make_plan(corpus, profile, hashes: dict[str, str], wh, aux_key: str, spool: Path, run_id: str, limit=None,
              splits=None, retry_errors: bool = False) -> Plan:  # fmt: skip
    """Plan `corpus` against `wh`'s ledger into Parquet files under `spool` (replaced if it exists),
    each row stamped with `run_id`.
    With `retry_errors`, keys that failed before are planned again; the commit lets a retry finish a
    failed key, never a finished one."""

    def attempt(memory: str) -> Plan:
        plan = Plan(corpus.name, todo={n: 0 for n in profile.experts}, spool=spool)
        shutil.rmtree(spool, ignore_errors=True)
        spool.mkdir(parents=True)
        con = wh.connect()
        try:
            bounded(con, memory, str(spool / "duckdb.tmp"))
            _spool(con, plan, corpus, hashes, wh, aux_key, run_id, limit, splits, retry_errors)
        finally:
            con.close()
        return plan

    with plain_errors():
        plan = with_memory_steps(attempt)
    shutil.rmtree(spool / "duckdb.tmp", ignore_errors=True)
    plan.skipped = plan.listed - plan.count
    return plan


def _spool(con, plan: Plan, corpus, hashes, wh, aux_key, run_id, limit, splits, retry_errors) -> None:
    """Run the planning query and write its rows, batch by batch, as Parquet files of stage rows."""
    experts = list(plan.todo)
    assert plan.spool is not None
    listing = _listing_sql(con, corpus, splits)
    limited = f"SELECT * FROM ({listing}) {f'LIMIT {int(limit)}' if limit is not None else ''}"
    plan.listed = con.execute(f"SELECT count(*) FROM ({limited})").fetchall()[0][0]
    sql, params = _plan_sql(listing, corpus.name, experts, hashes, aux_key, limit, retry_errors)
    for k, batch in enumerate(con.sql(sql, params=params).to_arrow_reader(BATCH_ROWS)):
        if not batch.num_rows:
            continue
        table = _stage_rows(batch, corpus.name, experts, hashes, wh, run_id)
        for todo in pc.value_counts(batch.column("todo")).to_pylist():
            for n in todo["values"].split(","):
                if n in plan.todo:
                    plan.todo[n] += todo["counts"]
        path = plan.spool / f"part-{k:05d}.parquet"
        # ~256 groups per file for small plans (every actor gets work), at most 64 rows for big ones
        group = min(GROUP_ROWS[1], max(GROUP_ROWS[0], -(-table.num_rows // 256)))
        _write_groups(table, path, group)
        plan.files.append(path)
        plan.count += table.num_rows


def _write_groups(table: pa.Table, path: Path, group: int) -> None:
    """`table` as a Parquet file of row groups of `group` rows, but its last TAIL_ROWS rows one per group.
    A row group is one block of the Ray job, done by one actor: ending on long blocks leaves the actors
    that finish first idle while the others work through theirs (with blocks of 4 on 2 CPUs, up to
    four images' time of one core). Ending on single rows, the actors finish within about one image of
    each other. A few more groups per file cost nothing."""
    body = max(0, table.num_rows - TAIL_ROWS)
    with pq.ParquetWriter(path, table.schema) as writer:
        if body:
            writer.write_table(table.slice(0, body), row_group_size=group)
        for i in range(body, table.num_rows):
            writer.write_table(table.slice(i, 1))


def _stage_rows(batch: pa.RecordBatch, dataset: str, experts: list[str], hashes, wh, run_id: str) -> pa.Table:
    """Plan rows as the stages want them (new_row's columns, in its order), stored records filled in."""
    n = batch.num_rows
    row, schema = _template()
    stored = _stored_records(batch, dataset, experts, hashes, wh)
    cols: dict[str, pa.Array] = {}
    for name, value in row.items():
        typ = schema.field(name).type
        if name in _FROM_QUERY:
            cols[name] = batch.column(name).cast(typ)
        elif name.endswith("_records") and name.removesuffix("_records") in stored:
            cols[name] = pa.array(stored[name.removesuffix("_records")], typ)
        else:
            cols[name] = pa.array([dataset if name == "dataset" else value] * n, typ)
    cols["decode_committed"] = batch.column("decode_committed").cast(pa.bool_())
    cols["run_id"] = pa.array([run_id] * n, pa.string())
    return pa.table(cols)


def _stored_records(batch, dataset: str, experts: list[str], hashes, wh) -> dict[str, list[str]]:
    """Per finished expert, its stored records (JSON) for the partly done images of this batch."""
    import json

    partial = batch.column("partial").to_pylist()
    if not any(partial):
        return {}
    ids = batch.column("image_id").to_pylist()
    todos = [t.split(",") for t in batch.column("todo").to_pylist()]
    out = {}
    for expert in experts:
        need = [i for i, p, t in zip(ids, partial, todos, strict=True) if p and expert not in t]
        if not need:
            continue
        found = current_records(wh, dataset, expert, need, config_hash=hashes[expert])
        out[expert] = [
            json.dumps(found[i]) if p and expert not in t and i in found else ""
            for i, p, t in zip(ids, partial, todos, strict=True)
        ]
    return out
