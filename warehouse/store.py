"""A Parquet warehouse with atomic, manifest-published commits, read through DuckDB views.

Layout (Hive partitions by table and dataset, never by image)::

    <root>/_manifest.json                          # the only source of truth for readers
    <root>/<table>/dataset=<name>/part-<commit>.parquet
    <root>/_staging/<commit>/...                   # being written; never read

A commit writes its files under `_staging`, moves them into place, then atomically replaces
`_manifest.json` (write temp + fsync + rename). A crash before the rename leaves files no manifest
names; the next writer deletes them. Readers build their views from the manifest, so they never
see partial files. One writer at a time (an fcntl lock on `<root>/.lock`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.schema import TABLES

ROW_GROUP_ROWS = 128 * 1024
COMPACT_WHEN_FILES = 8  # per (table, dataset) partition
TARGET_FILE_BYTES = 256 * 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Warehouse:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "_manifest.json"

    # ------------------------------------------------------------------------------ reading
    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            return {"version": 0, "tables": {}}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def files(self, table: str, dataset: str | None = None) -> list[Path]:
        rel = self.manifest()["tables"].get(table, [])
        if dataset is not None:
            rel = [r for r in rel if f"/dataset={dataset}/" in f"/{r}"]
        return [self.root / r for r in rel]

    def connect(self, database: str = ":memory:"):
        """A DuckDB connection with one view per table over the committed files only."""
        import duckdb

        con = duckdb.connect(database)
        manifest = self.manifest()
        for table, schema in TABLES.items():
            files = [str(self.root / r) for r in manifest["tables"].get(table, [])]
            if files:
                listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(
                    f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet([{listing}], "
                    "hive_partitioning = true, union_by_name = true)"
                )
            else:
                con.register(f"__empty_{table}", schema.empty_table())
                con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM __empty_{table}")
        return con

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        con = self.connect()
        try:
            return con.sql(sql, params=params).to_arrow_table() if params else con.sql(sql).to_arrow_table()
        finally:
            con.close()

    # ------------------------------------------------------------------------------ writing
    @contextmanager
    def _lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _publish(self, manifest: dict) -> None:
        manifest["version"] = int(manifest.get("version", 0)) + 1
        tmp = self.manifest_path.with_name(f"_manifest.{uuid.uuid4().hex}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.manifest_path)
        _fsync_dir(self.root)

    def recover(self) -> list[Path]:
        """Delete files a crashed writer left behind (not named by the manifest). Returns them."""
        with self._lock():
            return self._recover_locked()

    def _recover_locked(self) -> list[Path]:
        shutil.rmtree(self.root / "_staging", ignore_errors=True)
        for stale in self.root.glob("_manifest.*.tmp"):
            stale.unlink(missing_ok=True)
        named = {self.root / r for files in self.manifest()["tables"].values() for r in files}
        removed = []
        for table in TABLES:
            for path in (self.root / table).rglob("*.parquet") if (self.root / table).is_dir() else []:
                if path not in named:
                    path.unlink()
                    removed.append(path)
        return removed

    def commit(self, tables: dict[str, pa.Table | list[dict]], commit_id: str | None = None) -> str:
        """Atomically add rows to several tables at once (all or nothing). Returns the commit id."""
        commit_id = commit_id or uuid.uuid4().hex[:16]
        with self._lock():
            self._recover_locked()
            staging = self.root / "_staging" / commit_id
            placed: list[tuple[Path, Path]] = []
            for table, rows in tables.items():
                data = (
                    rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=TABLES[table])
                )
                if data.num_rows == 0:
                    continue
                data = data.cast(TABLES[table])
                for dataset in sorted(set(data.column("dataset").to_pylist())):
                    part = data.filter(pa.compute.equal(data.column("dataset"), dataset)).drop_columns(
                        ["dataset"]
                    )
                    rel = Path(table) / f"dataset={dataset}" / f"part-{commit_id}.parquet"
                    tmp = staging / rel
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                    pq.write_table(part, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
                    with open(tmp, "rb") as f:
                        os.fsync(f.fileno())
                    placed.append((tmp, rel))
            if not placed:
                return commit_id
            manifest = self.manifest()
            for tmp, rel in placed:
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, self.root / rel)
                manifest["tables"].setdefault(rel.parts[0], []).append(rel.as_posix())
            self._publish(manifest)  # the commit point
            shutil.rmtree(staging, ignore_errors=True)
        return commit_id

    def _merge_files(self, partition: str, rels: list[str], schema: pa.Schema) -> list[str]:
        """Stream the files' row groups into new files of at most ~TARGET_FILE_BYTES (memory: one row group)."""
        schema = schema.remove(schema.get_field_index("dataset"))  # the partition path carries it
        out: list[str] = []
        writer, written = None, 0
        try:
            for r in rels:
                source = pq.ParquetFile(self.root / r)
                for i in range(source.num_row_groups):
                    group = source.read_row_group(i).cast(schema)
                    if writer is None or written >= TARGET_FILE_BYTES:
                        if writer is not None:
                            writer.close()
                        out.append(f"{partition}/part-compact-{uuid.uuid4().hex[:16]}.parquet")
                        target = self.root / "_staging" / out[-1]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        writer, written = pq.ParquetWriter(target, schema, compression="zstd"), 0
                    writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
                    written += group.nbytes
        finally:
            if writer is not None:
                writer.close()
        for rel in out:
            os.replace(self.root / "_staging" / rel, self.root / rel)
        return out

    def compact(self, tables: Iterable[str] | None = None, min_files: int = COMPACT_WHEN_FILES) -> int:
        """Merge partitions holding many small files into few large ones. Returns files removed."""
        removed = 0
        with self._lock():
            self._recover_locked()
            manifest = self.manifest()
            for table in tables or list(manifest["tables"]):
                by_partition: dict[str, list[str]] = {}
                for rel in manifest["tables"].get(table, []):
                    by_partition.setdefault(str(Path(rel).parent), []).append(rel)
                for partition, rels in by_partition.items():
                    if len(rels) < min_files:
                        continue
                    new_rels = self._merge_files(partition, rels, TABLES[table])
                    keep = [r for r in manifest["tables"][table] if r not in set(rels)]
                    manifest["tables"][table] = keep + new_rels
                    self._publish(manifest)
                    for r in rels:
                        (self.root / r).unlink(missing_ok=True)
                    removed += len(rels)
            shutil.rmtree(self.root / "_staging", ignore_errors=True)
        return removed
