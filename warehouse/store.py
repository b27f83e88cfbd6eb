"""A Parquet warehouse with atomic, manifest-published commits, read through DuckDB views.

Layout (Hive partitions by table and dataset, never by image)::

    <root>/_manifest.json                          # the only source of truth for readers
    <root>/<table>/dataset=<name>/part-<commit>.parquet   # also a `dataset` string column inside
    <root>/_staging/<commit>/...                   # being written; never read
    <root>/_incoming/<tag>/<table>/...             # written by workers, until a commit adopts them
    <root>/_journal/<commit>.json                  # files a commit is about to place (crash recovery)
    <root>/_quarantine/<stamp>/...                 # files nobody could account for: kept, never read

The promises and how they are kept:

- **Atomic commits.** A commit writes its files under `_staging`, records their final paths in a
  journal, moves them into place, then atomically replaces `_manifest.json` (write temp + fsync +
  rename): the commit point. Readers build their views from the manifest, so they never see partial
  files. One writer at a time (an fcntl lock on `<root>/.lock`).
- **Nothing doubled.** Under that lock a commit re-checks its keys: annotation rows whose `done` ledger
  key (image, expert, config) another commit already finished, and rows of the other keyed tables
  (`schema.UNIQUE_KEYS`) already present, are dropped, so two runs racing on one dataset add each
  result once. A failed key (status `error`) may be finished later by a retry.
- **Nothing lost.** Recovery deletes only files a journal proves came from a commit that never
  published; any other file the manifest does not name is moved to `_quarantine/`, never deleted. A
  missing or garbled manifest beside data files stops every reader and writer with an explanation.
- **Readers keep working.** Compaction retires replaced files in the manifest and deletes them only
  after `retire_grace_s`, so a reader that listed them just before keeps reading.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.duck import sql_literal as _sql_str
from core.errors import WarehouseError
from warehouse.schema import LEDGER_KEYS, TABLES, UNIQUE_KEYS

ROW_GROUP_ROWS = 128 * 1024
COMPACT_WHEN_FILES = 8  # per (table, dataset) partition
TARGET_FILE_BYTES = 256 * 1024 * 1024
RETIRE_GRACE_S = 3600.0  # how long a compacted-away file stays readable for readers that listed it
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
INCOMING = "_incoming"  # rows the workers wrote, waiting for the driver's commit (see Warehouse.stage)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_durably(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, sort_keys=True, separators=(",", ":")))  # the C encoder: json.dump is slow
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def plain_errors():
    """A damaged table's view (warehouse/duck.py) raises its own message: pass it on plainly."""
    import duckdb

    try:
        yield
    except duckdb.Error as err:
        if "moai warehouse check" in str(err):
            raise WarehouseError(str(err).split("Error: ", 1)[-1].strip()) from None
        raise


class Warehouse:
    def __init__(self, root: str | Path, retire_grace_s: float = RETIRE_GRACE_S):
        self.root = Path(root)
        self.manifest_path = self.root / "_manifest.json"
        self.journal_dir = self.root / "_journal"
        self.retire_grace_s = retire_grace_s
        self.skipped_keys = 0  # results a commit dropped because another commit already holds them
        self._check_con = None  # see _checker

    # ------------------------------------------------------------------------------ reading
    def manifest(self) -> dict:
        """The committed state. A fresh warehouse is empty; a missing manifest beside data files, or a
        manifest that is not one, is an error: reading it as empty would hide (and a writer would
        delete) everything committed."""
        if not self.manifest_path.is_file():
            stray = self._unaccounted_files(named=set())
            if stray:
                raise WarehouseError(
                    f"The warehouse at {self.root} has no _manifest.json but holds {len(stray)} Parquet "
                    f"files (e.g. {stray[0].relative_to(self.root)}). The manifest says which files are "
                    "committed, so without it nothing can be read or written safely, and nothing was "
                    "changed. Restore _manifest.json from the copy or backup it was lost from (it is a "
                    "small JSON file at the warehouse root), or point --warehouse at a complete copy."
                )
            return {"version": 0, "tables": {}, "retired": []}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            ok = isinstance(manifest, dict) and isinstance(manifest.get("tables"), dict)
            ok = ok and all(
                isinstance(v, list) and all(isinstance(r, str) for r in v)
                for v in manifest["tables"].values()
            )
            problem = "it does not have the manifest's shape ({'version', 'tables': {table: [files]}})"
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            ok, problem = False, f"it is not valid JSON ({err})"
        if not ok:
            raise WarehouseError(
                f"The warehouse manifest {self.manifest_path} is unreadable: {problem}. It lists which "
                "files are committed, so nothing can be read or written safely, and nothing was changed. "
                "Restore it from a backup or the copy it came from, or point --warehouse at a complete copy."
            )
        manifest.setdefault("retired", [])
        return manifest

    def files(self, table: str, dataset: str | None = None) -> list[Path]:
        rel = self.manifest()["tables"].get(table, [])
        if dataset is not None:
            rel = [r for r in rel if f"/dataset={dataset}/" in f"/{r}"]
        return [self.root / r for r in rel]

    def connect(self, database: str = ":memory:", tables=None, manifest: dict | None = None):
        """A DuckDB connection with one view per table (all, or those in `tables`) over the committed
        files only (of `manifest`, when the caller holds it already)."""
        from core.duck import open_connection
        from warehouse.duck import build_views

        con = open_connection(database)
        build_views(con, manifest or self.manifest(), self.root, tables)
        return con

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        con = self.connect()
        try:
            with plain_errors():
                return (
                    con.sql(sql, params=params).to_arrow_table() if params else con.sql(sql).to_arrow_table()
                )
        finally:
            con.close()

    # ------------------------------------------------------------------------------ locks
    @contextmanager
    def _lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def run_lock(self, dataset: str, what: str = "moai annotate"):
        """Held for a whole annotation run of one dataset: a second run on the same dataset and
        warehouse is refused at once (the commit-time key check is the guarantee; this makes the
        second run cheap and says why). Released by the OS when the process dies, even by kill -9."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".run-{dataset}.lock"
        handle = open(path, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise WarehouseError(
                    f"Another {what} is already running on dataset '{dataset}' in {self.root} ({holder}). "
                    "Wait for it to finish (its results are committed as it goes), or annotate another "
                    "dataset; nothing was changed."
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {os.uname().nodename}, started {time.strftime('%H:%M:%S')}")
            handle.flush()
            yield
        finally:
            handle.close()

    # ------------------------------------------------------------------------------ recovery
    def _table_files(self) -> list[Path]:
        return sorted(
            p
            for table in TABLES
            if (self.root / table).is_dir()
            for p in (self.root / table).rglob("*.parquet")
        )

    def _journaled(self) -> set[str]:
        out: set[str] = set()
        for journal in self.journal_dir.glob("*.json") if self.journal_dir.is_dir() else []:
            try:
                out.update(json.loads(journal.read_text(encoding="utf-8"))["files"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a torn journal proves nothing: its files are quarantined, not deleted
        return out

    def _unaccounted_files(self, named: set[str]) -> list[Path]:
        known = named | self._journaled()
        return [p for p in self._table_files() if p.relative_to(self.root).as_posix() not in known]

    def recover(self) -> list[Path]:
        """Clean up after crashed writers. Returns the files deleted (those of unpublished commits)."""
        with self._lock():
            return self._recover_locked()

    def _crashed(self) -> bool:
        """Whether a writer died mid-commit: every writer leaves its journal, its files under _staging
        or a manifest temp file until it has published."""

        def nonempty(folder: Path) -> bool:
            return folder.is_dir() and any(folder.iterdir())

        return (
            nonempty(self.journal_dir)
            or nonempty(self.root / "_staging")
            or any(self.root.glob("_manifest.*.tmp"))
        )

    def _recover_if_crashed_locked(self) -> None:
        """What every commit and compaction does first: the full recovery when a writer died mid-commit
        (the scan of every table file grows with the warehouse, so it is not run on every commit), and
        the purge of retired files past their grace. `recover()` (each `moai annotate` starts with it)
        also puts away files nobody wrote."""
        if self._crashed():
            self._recover_locked()
        else:
            self._purge_retired_locked(self.manifest())

    def _recover_locked(self) -> list[Path]:
        manifest = self.manifest()  # refuses a lost or garbled manifest before anything is touched
        shutil.rmtree(self.root / "_staging", ignore_errors=True)
        for stale in self.root.glob("_manifest.*.tmp"):
            stale.unlink(missing_ok=True)
        named = {r for files in manifest["tables"].values() for r in files}
        named |= {r["file"] for r in manifest["retired"]}
        journaled = self._journaled()
        removed, quarantined = [], []
        quarantine = self.root / "_quarantine" / (time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:6]}")
        for path in self._table_files():
            rel = path.relative_to(self.root).as_posix()
            if rel in named:
                continue
            if rel in journaled:  # placed by a commit that crashed before publishing: never visible
                path.unlink()
                removed.append(path)
            else:  # nobody can say where it came from: keep it, out of the readers' way
                (quarantine / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, quarantine / rel)
                quarantined.append(rel)
        shutil.rmtree(self.journal_dir, ignore_errors=True)
        if quarantined:
            print(
                f"[warehouse] WARNING: {len(quarantined)} Parquet files under {self.root} were named neither "
                f"by the manifest nor by an interrupted commit (e.g. {quarantined[0]}); they were moved, not "
                f"deleted, to {quarantine}. Readers never saw them. Inspect them there and delete them "
                "when you know they are not needed.",
                file=sys.stderr,
            )
        self._purge_retired_locked(manifest)
        return removed

    def _purge_retired_locked(self, manifest: dict) -> None:
        now = time.time()
        expired = [r for r in manifest["retired"] if now - r["at"] >= self.retire_grace_s]
        if not expired:
            return
        for r in expired:  # unlinked first: a crash in between leaves names of gone files, which is harmless
            (self.root / r["file"]).unlink(missing_ok=True)
        manifest["retired"] = [r for r in manifest["retired"] if r not in expired]
        self._publish(manifest)

    # ------------------------------------------------------------------------------ writing
    def _publish(self, manifest: dict) -> None:
        manifest["version"] = int(manifest.get("version", 0)) + 1
        _write_json_durably(self.manifest_path, manifest)

    def _journal(self, commit_id: str, rels: list[str]) -> Path:
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        path = self.journal_dir / f"{commit_id}.json"
        _write_json_durably(path, {"files": rels})
        return path

    def _checker(self, tables: list[str], manifest: dict):
        """The key check's DuckDB connection, opened once per Warehouse object (opening one costs more
        than a small commit's check), its views of `tables` rebuilt from `manifest` for each commit."""
        from core.duck import open_connection
        from warehouse.duck import build_views

        if self._check_con is None:
            self._check_con = open_connection()
        build_views(self._check_con, manifest, self.root, tables)
        return self._check_con

    def _drop_committed(self, data: dict[str, pa.Table]) -> dict[str, pa.Table]:
        """Drop incoming rows whose key is already committed (see the module docstring)."""
        # One connection with views of only the tables checked here: the cost of a commit must not grow
        # with the number of tables' files it never reads. The ledger is read only over the incoming
        # images' id range, which Parquet's row-group statistics use to skip most of it.
        manifest = self.manifest()
        needed = [t for t in ("done", *UNIQUE_KEYS) if t in data and manifest["tables"].get(t)]
        con = self._checker(needed, manifest) if needed else None
        try:
            done = data.get("done")
            if done is not None and done.num_rows and "done" in needed:
                con.register(
                    "incoming", done.select(["dataset", "image_id", "expert", "config_hash", "status"])
                )
                datasets = ", ".join(_sql_str(d) for d in set(done.column("dataset").to_pylist()))
                low, high = pc.min(done.column("image_id")).as_py(), pc.max(done.column("image_id")).as_py()
                clash = con.sql(
                    f"""SELECT i.dataset, i.image_id, i.expert, i.config_hash FROM incoming i
                    JOIN (SELECT dataset, image_id, expert, config_hash, bool_or(status = 'ok') AS ok
                          FROM done WHERE dataset IN ({datasets}) AND image_id BETWEEN {int(low)} AND {int(high)}
                          GROUP BY ALL) d
                    USING (dataset, image_id, expert, config_hash)
                    WHERE d.ok OR i.status <> 'ok'"""
                ).fetchall()
                if clash:
                    taken = set(clash)
                    self.skipped_keys += len(taken)
                    for table, (expert, chash) in {**LEDGER_KEYS, "done": ("expert", "config_hash")}.items():
                        if table in data:
                            data[table] = _without(data[table], taken, expert, chash)
            for table, key in UNIQUE_KEYS.items():
                rows = data.get(table)
                if rows is None or not rows.num_rows or table not in needed:
                    continue
                con.register("incoming_keys", rows.select(list(key)))
                datasets = ", ".join(_sql_str(d) for d in set(rows.column("dataset").to_pylist()))
                cols = ", ".join(key)
                have = set(
                    con.sql(
                        f"SELECT DISTINCT {cols} FROM {table} JOIN incoming_keys USING ({cols}) "
                        f"WHERE dataset IN ({datasets})"
                    ).fetchall()
                )
                if have:
                    keys = list(zip(*(rows.column(k).to_pylist() for k in key), strict=True))
                    data[table] = rows.filter(pa.array([k not in have for k in keys]))
            # Within one commit a key counts once too.
            for table, key in UNIQUE_KEYS.items():
                if table in data and data[table].num_rows:
                    data[table] = _first_per_key(data[table], key)
        finally:
            if con is not None:
                for name in ("incoming", "incoming_keys"):
                    con.unregister(name)
        return data

    def commit(self, tables: dict[str, pa.Table | list[dict]], commit_id: str | None = None) -> str:
        """Atomically add rows to several tables at once (all or nothing); rows already committed
        (by key) are dropped. Returns the commit id."""
        commit_id = commit_id or uuid.uuid4().hex[:16]
        with self._lock():
            self._recover_if_crashed_locked()
            data = {
                t: (
                    rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=TABLES[t])
                ).cast(TABLES[t])
                for t, rows in tables.items()
            }
            self._place_and_publish(self._drop_committed(data), commit_id, {})
        return commit_id

    # -- rows written by the workers, published by the driver ---------------------------------------
    def stage(self, tables: dict[str, list[dict]], tag: str) -> list[str]:
        """Write rows as files under `_incoming/<tag>/` (no lock, no manifest: a worker calls this) and
        return their paths relative to the root, for `commit_staged`. Until a commit adopts them they
        are invisible; an abandoned tag is removed by `remove_incoming`."""
        out = []
        for table, rows in tables.items():
            if not rows:
                continue
            for dataset, part in _by_dataset(pa.Table.from_pylist(rows, schema=TABLES[table])):
                rel = f"{INCOMING}/{tag}/{table}/dataset={dataset}/part-{uuid.uuid4().hex[:16]}.parquet"
                path = self.root / rel
                tmp = path.with_name(path.name + ".tmp")  # a torn file never has a name a commit reads
                _write_durably(part, tmp)
                os.replace(tmp, path)
                out.append(rel)
        return out

    def commit_staged(self, rels: list[str], commit_id: str | None = None) -> str:
        """Publish files written by `stage` as one atomic commit. The key check is the one `commit`
        makes: when it drops nothing (the normal case) the files are moved into place as they are,
        so the driver only publishes names; when another commit already holds some keys, the rest
        of the rows are written anew and the staged files are left for `remove_incoming`."""
        commit_id = commit_id or uuid.uuid4().hex[:16]
        by_table: dict[str, list[str]] = {}
        for rel in rels:
            by_table.setdefault(rel.split("/")[2], []).append(rel)  # _incoming/<tag>/<table>/...
        with self._lock():
            self._recover_if_crashed_locked()
            # the check reads only the key columns: the driver's cost does not grow with the records
            keys = {
                t: pa.concat_tables(
                    [
                        pq.read_table(self.root / r, columns=_CHECKED[t]).cast(
                            pa.schema([TABLES[t].field(c) for c in _CHECKED[t]])
                        )
                        for r in files
                    ]  # fmt: skip
                )
                for t, files in by_table.items()
                if t in _CHECKED
            }
            sizes = {t: rows.num_rows for t, rows in keys.items()}
            skipped = self.skipped_keys
            checked = self._drop_committed(dict(keys))
            if {t: rows.num_rows for t, rows in checked.items()} == sizes and all(
                len(files) == 1 for files in by_table.values()
            ):
                self._place_and_publish({}, commit_id, {t: files[0] for t, files in by_table.items()})
            else:  # some keys are taken (or several files per table): the ordinary commit's path
                self.skipped_keys = skipped  # counted again below
                data = {
                    t: pa.concat_tables([pq.read_table(self.root / r).cast(TABLES[t]) for r in files])
                    for t, files in by_table.items()
                }
                self._place_and_publish(self._drop_committed(data), commit_id, {})
        return commit_id

    def remove_incoming(self, tag: str) -> None:
        shutil.rmtree(self.root / INCOMING / tag, ignore_errors=True)

    def _place_and_publish(self, data: dict[str, pa.Table], commit_id: str, adopt: dict[str, str]) -> None:
        """Under the lock: write `data` (table -> rows, per dataset partition) and move the staged files
        of `adopt` (table -> a file of one dataset under _incoming) into place, then publish them all in
        one manifest update, the commit point."""
        staging = self.root / "_staging" / commit_id
        placed: list[tuple[Path, str]] = []
        journal = None
        try:
            for table, rows in data.items():
                for dataset, part in _by_dataset(rows):
                    rel = f"{table}/dataset={dataset}/part-{commit_id}.parquet"
                    _write_durably(part, staging / rel)
                    placed.append((staging / rel, rel))
            for table, source in adopt.items():
                partition = source.split("/")[3]  # _incoming/<tag>/<table>/dataset=<name>/<file>
                placed.append((self.root / source, f"{table}/{partition}/part-{commit_id}.parquet"))
            if not placed:
                return
            journal = self._journal(commit_id, [rel for _, rel in placed])
            manifest = self.manifest()
            for tmp, rel in placed:
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, self.root / rel)
                manifest["tables"].setdefault(rel.split("/", 1)[0], []).append(rel)
            self._publish(manifest)  # the commit point
        except OSError as err:
            self._undo(placed, journal)
            if err.errno in DISK_FULL:
                raise WarehouseError(
                    f"The disk holding {self.root} is full ({err.strerror}). This commit was rolled back "
                    "and nothing from it is visible; every earlier commit is intact. Free some space and "
                    "run the command again: finished work is skipped."
                ) from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        journal.unlink(missing_ok=True)

    def _undo(self, placed: list[tuple[Path, str]], journal: Path | None) -> None:
        """Remove what an unpublished commit placed (best effort; recovery finishes the job)."""
        manifest_names = {r for files in self.manifest()["tables"].values() for r in files}
        for _, rel in placed:
            if rel not in manifest_names:
                (self.root / rel).unlink(missing_ok=True)
        if journal is not None:
            journal.unlink(missing_ok=True)

    def _merge_files(self, partition: str, rels: list[str], schema: pa.Schema, out: list[str]) -> None:
        """Stream the files' row groups into new staged files of at most ~TARGET_FILE_BYTES (memory: one
        row group); their final names are appended to `out`. Every merged file has the table's columns,
        `dataset` included: files of warehouses written before the files carried it get it from the
        partition folder (`partition` is `<table>/dataset=<name>`)."""
        dataset = partition.split("/dataset=", 1)[1]
        writer, written = None, 0
        try:
            for r in rels:
                source = pq.ParquetFile(self.root / r)
                for i in range(source.num_row_groups):
                    group = with_dataset_column(source.read_row_group(i), schema, dataset).cast(schema)
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

    def compact(
        self, tables: Iterable[str] | None = None, min_files: int = COMPACT_WHEN_FILES, tiered: bool = False
    ) -> int:
        """Merge partitions holding many small files into few large ones. Returns files retired (they
        stay readable for `retire_grace_s`, then a later writer deletes them). `tiered` (compactions
        during a run) merges only files of about one size (sizes within a factor of 8) once there are
        `min_files` of them, so a growing partition's big file is not rewritten at every compaction:
        each row is rewritten a few times over a run, not once per compaction."""
        retired = 0
        with self._lock():
            self._recover_if_crashed_locked()
            manifest = self.manifest()
            for table in tables or list(manifest["tables"]):
                by_partition: dict[str, list[str]] = {}
                for rel in manifest["tables"].get(table, []):
                    by_partition.setdefault(str(Path(rel).parent), []).append(rel)
                for partition, rels in by_partition.items():
                    # files already near the target size stay: compacting often never rewrites big data
                    sizes = {r: _size(self.root / r) for r in rels}
                    rels = [r for r in rels if sizes[r] < TARGET_FILE_BYTES // 4]
                    if tiered:
                        tiers: dict[int, list[str]] = {}
                        for r in rels:
                            tiers.setdefault(max(0, sizes[r] - 1).bit_length() // 3, []).append(r)
                        rels = next((t for _, t in sorted(tiers.items()) if len(t) >= min_files), [])
                    if len(rels) < min_files:
                        continue
                    new_rels: list[str] = []
                    try:
                        self._merge_files(partition, rels, TABLES[table], new_rels)
                        journal = self._journal(uuid.uuid4().hex[:16], new_rels)
                        for rel in new_rels:
                            os.replace(self.root / "_staging" / rel, self.root / rel)
                    except OSError as err:
                        self._undo([(Path(), r) for r in new_rels], None)
                        shutil.rmtree(self.root / "_staging", ignore_errors=True)
                        if err.errno in DISK_FULL:
                            return retired  # compaction is an optimisation: the data is unchanged
                        raise
                    keep = [r for r in manifest["tables"][table] if r not in set(rels)]
                    manifest["tables"][table] = keep + new_rels
                    manifest["retired"] += [{"file": r, "at": time.time()} for r in rels]
                    self._publish(manifest)
                    journal.unlink(missing_ok=True)
                    retired += len(rels)
            shutil.rmtree(self.root / "_staging", ignore_errors=True)
            self._purge_retired_locked(manifest)
        return retired


# The columns the commit-time key check reads, per table it checks (see _drop_committed).
_CHECKED = {
    "done": ["dataset", "image_id", "expert", "config_hash", "status"],
    **{table: list(key) for table, key in UNIQUE_KEYS.items()},
}


def _by_dataset(rows: pa.Table) -> Iterable[tuple[str, pa.Table]]:
    """`rows` split by dataset: a file holds one dataset's rows. Each keeps its `dataset` column (a
    string) beside the folder name: readers that ignore hive folders keep it, and no reader can type
    it as a number or date."""
    for dataset in sorted(set(rows.column("dataset").to_pylist())):
        yield dataset, rows.filter(pc.equal(rows.column("dataset"), dataset))


def _write_durably(rows: pa.Table, path: Path) -> None:
    """A zstd Parquet file at `path`, on disk (fsynced) when this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # a missing file is the readers' error to report; merging it fails loudly


def with_dataset_column(rows: pa.Table, schema: pa.Schema, dataset: str) -> pa.Table:
    """`rows` of a file in folder `dataset=<dataset>`, with its `dataset` column: a file written before
    the files carried it gets the folder's name, at the column's place in `schema`."""
    if "dataset" in rows.column_names:
        return rows
    values = pa.array([dataset] * rows.num_rows, type=pa.string())
    return rows.add_column(schema.get_field_index("dataset"), "dataset", values)


def _without(rows: pa.Table, taken: set, expert: str, chash: str) -> pa.Table:
    """`rows` minus those whose ledger key (dataset, image_id, expert, config_hash) is in `taken`."""
    n = rows.num_rows

    def column(spec: str) -> list:
        return [spec.strip("'")] * n if spec.startswith("'") else rows.column(spec).to_pylist()

    keys = zip(
        rows.column("dataset").to_pylist(),
        rows.column("image_id").to_pylist(),
        column(expert),
        column(chash),
        strict=True,
    )
    return rows.filter(pa.array([k not in taken for k in keys], type=pa.bool_()))


def _first_per_key(rows: pa.Table, key: tuple[str, ...]) -> pa.Table:
    seen: set = set()
    mask = []
    for k in zip(*(rows.column(c).to_pylist() for c in key), strict=True):
        mask.append(k not in seen)
        seen.add(k)
    return rows.filter(pa.array(mask, type=pa.bool_()))
