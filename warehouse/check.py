"""`moai warehouse check` and `moai warehouse repair`: find what is wrong with a warehouse, and mend it
without losing or doubling anything.

check:  every file the manifest names exists and reads to its last row, and its `dataset` column (when
        it has one: files written before it existed take the folder's) says the folder's name; files
        nobody accounts for; the `done` ledger agrees with the rows (a finished key has its rows, every
        row has its key).
repair: (after confirmation) moves unreadable files to `_quarantine/` and out of the manifest, then
        makes the ledger agree with what is left: keys whose rows were lost are forgotten, so the next
        `moai annotate` redoes exactly those, and rows whose key is gone are dropped, so that redo
        cannot double them. A table whose files' `dataset` column disagrees with their folder is
        rewritten with the folder's name (the value every project reader has used). Rewritten files have
        the table's columns, `dataset` included, like a commit's; they replace the old files in one
        manifest publish.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from core.duck import sql_literal as _sql_str
from warehouse.schema import LEDGER_KEYS
from warehouse.store import Warehouse

KEY = ("dataset", "image_id", "expert", "config_hash")


@dataclass
class Report:
    unreadable: dict[str, str] = field(default_factory=dict)  # manifest file -> why
    mislabeled: dict[str, str] = field(default_factory=dict)  # file -> the other dataset names in it
    stray: list[str] = field(default_factory=list)  # files on disk nobody accounts for
    lost_rows: dict[str, int] = field(default_factory=dict)  # table -> finished keys missing rows
    orphan_rows: dict[str, int] = field(default_factory=dict)  # table -> rows with no ledger key
    files: int = 0
    rows: int = 0

    @property
    def ok(self) -> bool:
        return not (self.unreadable or self.mislabeled or self.stray or self.lost_rows or self.orphan_rows)

    def lines(self) -> list[str]:
        out = [f"{self.files} files, {self.rows} rows committed"]
        out += [f"unreadable: {rel}: {why}" for rel, why in self.unreadable.items()]
        out += [
            f"dataset column disagrees with the folder: {rel} holds rows of {names}"
            for rel, names in self.mislabeled.items()
        ]
        out += [f"not in the manifest (quarantined at the next write): {rel}" for rel in self.stray]
        out += [f"ledger says done but rows are missing: {n} keys of {t}" for t, n in self.lost_rows.items()]
        out += [f"rows without a ledger key: {n} in {t}" for t, n in self.orphan_rows.items()]
        out.append("warehouse OK" if self.ok else "problems found: `moai warehouse repair` mends them")
        return out


def _read_error(path) -> str | None:
    """Why the file cannot be read to its end, or None."""
    if not path.is_file():
        return "listed in the manifest but missing on disk"
    try:
        source = pq.ParquetFile(path)
        for i in range(source.num_row_groups):  # reads every page: catches damage past the footer too
            source.read_row_group(i)
    except (OSError, pa.ArrowException) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return None


def _foreign_datasets(path, rel: str) -> str | None:
    """The dataset names in a readable file's `dataset` column other than its folder's, or None (a file
    without the column, from before files carried it, takes the folder's name)."""
    source = pq.ParquetFile(path)
    if "dataset" not in source.schema_arrow.names:
        return None
    folder = rel.split("/dataset=", 1)[1].split("/", 1)[0]
    names = set(source.read(columns=["dataset"]).column("dataset").unique().to_pylist()) - {folder}
    return ", ".join(sorted(map(repr, names))) if names else None


def _col(spec: str, alias: str) -> str:
    """A LEDGER_KEYS part as SQL for a table alias: a quoted constant as is, a column qualified."""
    return spec if spec.startswith("'") else f"{alias}.{spec}"


def _ledger_sql(table: str) -> tuple[str | None, str]:
    """(lost keys, orphan rows) queries for one ledger-keyed table. An error row's key never has an
    'ok' ledger row, so `errors` can lose nothing the ledger needs: its lost-keys query is None."""
    expert, chash = LEDGER_KEYS[table]
    rows = f"SELECT dataset, image_id, {expert} AS expert, {chash} AS config_hash, count(*) AS n FROM {table} GROUP BY ALL"
    ledger = "SELECT dataset, image_id, expert, config_hash, bool_or(status = 'ok') AS ok, max(n_records) AS n FROM done GROUP BY ALL"
    expected = "1" if table == "images" else "l.n"  # the decode step's ledger row counts no records
    lost = (
        f"SELECT l.dataset, l.image_id, l.expert, l.config_hash FROM ({ledger}) l LEFT JOIN ({rows}) r "
        f"USING (dataset, image_id, expert, config_hash) WHERE l.ok AND l.expert = {expert} "
        f"AND coalesce(r.n, 0) < {expected}"
    )
    orphans = (
        f"SELECT r.* FROM ({rows}) r ANTI JOIN ({ledger}) l USING (dataset, image_id, expert, config_hash)"
    )
    return (None if table == "errors" else lost), orphans


def check(wh: Warehouse) -> Report:
    manifest = wh.manifest()  # a lost or garbled manifest is its own clear error
    report = Report()
    named = {r for files in manifest["tables"].values() for r in files}
    for rels in manifest["tables"].values():
        for rel in rels:
            report.files += 1
            why = _read_error(wh.root / rel)
            if why:
                report.unreadable[rel] = why
            else:
                report.rows += pq.ParquetFile(wh.root / rel).metadata.num_rows
                foreign = _foreign_datasets(wh.root / rel, rel)
                if foreign:
                    report.mislabeled[rel] = foreign
    named |= {r["file"] for r in manifest["retired"]}
    report.stray = [p.relative_to(wh.root).as_posix() for p in wh._unaccounted_files(named)]
    if report.unreadable:
        return report  # the ledger cannot be compared with rows that cannot be read
    con = wh.connect()
    try:
        for table in LEDGER_KEYS:
            lost, orphans = _ledger_sql(table)
            n_lost = con.sql(f"SELECT count(*) FROM ({lost})").fetchall()[0][0] if lost else 0
            n_orphans = con.sql(f"SELECT coalesce(sum(n), 0) FROM ({orphans})").fetchall()[0][0]
            if n_lost:
                report.lost_rows[table] = n_lost
            if n_orphans:
                report.orphan_rows[table] = int(n_orphans)
    finally:
        con.close()
    return report


def repair(wh: Warehouse) -> Report:
    """Mend what `check` found (the caller has asked for confirmation). Returns the check before."""
    before = check(wh)
    with wh._lock():
        wh._recover_locked()  # strays go to _quarantine (kept, never deleted)
        manifest = wh.manifest()
        if before.unreadable:
            quarantine = wh.root / "_quarantine" / (time.strftime("%Y%m%dT%H%M%S") + "-repair")
            for table, rels in manifest["tables"].items():
                manifest["tables"][table] = [r for r in rels if r not in before.unreadable]
            wh._publish(manifest)
            for rel in before.unreadable:
                if (wh.root / rel).is_file():
                    (quarantine / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(wh.root / rel, quarantine / rel)
        _agree_ledger_with_rows(wh, relabel={rel.split("/", 1)[0] for rel in before.mislabeled})
    return before


def _agree_ledger_with_rows(wh: Warehouse, relabel: set[str] = frozenset()) -> None:
    """Forget finished keys whose rows are gone, then drop rows whose key is gone, and rewrite the
    `relabel` tables (their `dataset` column from the folder names, as the views read it); one publish."""
    con = wh.connect()
    try:
        # an error row's key never has an 'ok' ledger row, so `errors` can lose nothing the ledger needs
        lost = pa.concat_tables(
            [con.sql(_ledger_sql(t)[0]).to_arrow_table() for t in LEDGER_KEYS if t != "errors"]
        )
        rewrites: dict[str, str] = {}  # table -> SELECT of the rows to keep
        if lost.num_rows:
            con.register("lost_keys", lost)
            rewrites["done"] = (
                "SELECT t.* FROM done t ANTI JOIN lost_keys k USING (dataset, image_id, expert, config_hash)"
            )
        for table in LEDGER_KEYS:
            expert, chash = LEDGER_KEYS[table]
            done = rewrites.get("done", "SELECT * FROM done")
            keep = (
                f"SELECT t.* FROM {table} t SEMI JOIN ({done}) d ON t.dataset = d.dataset AND "
                f"t.image_id = d.image_id AND {_col(expert, 't')} = d.expert AND {_col(chash, 't')} = d.config_hash"
            )
            if (
                con.sql(f"SELECT count(*) FROM ({keep})").fetchall()[0][0]
                != con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            ):
                rewrites[table] = keep
        for table in relabel:
            rewrites.setdefault(table, f"SELECT * FROM {table}")
        if not rewrites:
            return
        manifest = wh.manifest()
        commit_id = uuid.uuid4().hex[:16]
        new: list[str] = []
        for table, keep in rewrites.items():
            datasets = [r[0] for r in con.sql(f"SELECT DISTINCT dataset FROM {table}").fetchall()]
            for dataset in datasets:
                rel = f"{table}/dataset={dataset}/part-repair-{commit_id}.parquet"
                (wh.root / "_staging" / rel).parent.mkdir(parents=True, exist_ok=True)
                con.sql(
                    f"COPY (SELECT * FROM ({keep}) WHERE dataset = {_sql_str(dataset)}) "
                    f"TO {_sql_str(wh.root / '_staging' / rel)} (FORMAT parquet, COMPRESSION zstd)"
                )
                new.append(rel)
        journal = wh._journal(commit_id, new)
        for rel in new:
            (wh.root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(wh.root / "_staging" / rel, wh.root / rel)
        for table in rewrites:
            old = manifest["tables"].get(table, [])
            manifest["retired"] += [{"file": r, "at": time.time()} for r in old]
            manifest["tables"][table] = [r for r in new if r.startswith(f"{table}/")]
        wh._publish(manifest)
        journal.unlink(missing_ok=True)
    finally:
        con.close()
