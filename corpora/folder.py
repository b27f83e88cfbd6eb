"""Register any folder of images as a named corpus (COCO layout, the folder linked, never copied).

`data/<name>/images/default` becomes a symlink to the folder and
`data/<name>/annotations/images_default.parquet` lists every file with an image suffix (hidden files
and folders, whose names start with '.', are left out; symlinked folders are not followed): one row
per file with `id, file_name, width, height, size, mtime_ns`, and the id high-water mark `next_id` in
the table's metadata. A Parquet table, not a COCO JSON: a million-file listing is read in bounded
memory (`Corpus.listings`, and the planner's DuckDB join against the ledger) and rewritten in seconds.
`moai export-coco` writes COCO JSON from the warehouse for tools that want it.

Image ids identify file *contents*, because the warehouse's exactly-once ledger is keyed by image id:

- an unchanged file keeps its id across re-registration;
- a file whose size or mtime_ns changed gets a new id (and its width/height are read again), so the
  annotation job annotates it as a new image;
- an id is never reused: the listing keeps a high-water mark `next_id` that never decreases, so a
  file added after another was removed cannot inherit the removed file's id (and its annotations).

Registration streams: the folder walk is written to a Parquet spool in 50k-row batches, DuckDB (one
thread, memory limit 64 MB, spilling beyond; core/duck.py raises it step by step if a merge still runs
out) joins it with the current listing and sorts it by path, and the new listing is written batch by
batch. Only new or changed files have their headers read (width/height), in a pool of processes when
there are many. Listings written by earlier versions (`instances_default.json`, with or without the
`size`, `mtime_ns` and `next_id` fields) are read once, keep their ids (entries without stamps adopt
the file's current ones), and are replaced by the Parquet table.

Two registrations of one name at once (two `moai annotate` runs started together) take turns on a lock
file in `data/<name>/`: the second sees the first's listing, so both agree on every id.

Files that cannot be decoded are still listed (width/height null); the annotation job records them in
`errors`. Folders (or files) that cannot be read at all are skipped with a warning on stderr.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from core.duck import bounded, open_connection, sql_literal, with_memory_steps
from core.errors import DatasetError
from corpora.layout import IMAGE_SUFFIXES, Corpus

SPLIT = "default"
SHOWN_PROBLEMS = 5  # paths named in the warning; the rest are only counted
PARALLEL_FROM = 2000  # files from which new files' headers are read by a pool of processes
BATCH_ROWS = 50_000  # rows per batch while scanning and merging: the memory a registration holds
SCAN_SCHEMA = pa.schema([("file_name", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64())])
LISTING_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("file_name", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
    ]
)


def _image_size(path: str | Path) -> tuple[int | None, int | None]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return im.width, im.height
    except Exception:
        return None, None


class HeaderReader:
    """Reads image headers, in a pool of processes (one per core) when `parallel`. The pool starts
    before any DuckDB connection exists: a fork copies only the forking thread, so it must happen while
    this process has no other threads holding locks (fork when single-threaded, else forkserver)."""

    def __init__(self, parallel: bool):
        self.pool = None
        workers = os.cpu_count() or 1
        if not parallel or workers < 2:
            return
        import multiprocessing
        import threading
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
        try:
            self.pool = ProcessPoolExecutor(workers, mp_context=context)
            self.pool.submit(int).result()  # start the workers now
        except Exception:  # no processes to be had here (e.g. a forkserver without __main__): serial
            self.close()

    def __call__(self, paths: list[str]) -> list[tuple[int | None, int | None]]:
        if self.pool is not None:
            from concurrent.futures.process import BrokenProcessPool

            try:
                chunk = max(16, len(paths) // ((os.cpu_count() or 1) * 16))
                return list(self.pool.map(_image_size, paths, chunksize=chunk))
            except BrokenProcessPool:
                self.close()
        return [_image_size(p) for p in paths]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _scan(folder: Path, out: Path) -> tuple[int, list[OSError]]:
    """Image files under `folder` (posix path relative to it, size, mtime_ns) written to the Parquet
    file `out` in batches; returns how many and the errors met listing it."""
    problems: list[OSError] = []
    batch: dict[str, list] = {"file_name": [], "size": [], "mtime_ns": []}
    count = 0
    with pq.ParquetWriter(out, SCAN_SCHEMA) as writer:
        # onerror: a folder that cannot be listed is reported, not silently dropped as rglob did.
        for dirpath, dirnames, filenames in os.walk(folder, onerror=problems.append):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # pruned in place: never entered
            prefix = Path(dirpath).relative_to(folder).as_posix()
            prefix = "" if prefix == "." else prefix + "/"
            for fname in filenames:
                if fname.startswith(".") or PurePosixPath(fname).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, fname))  # follows symlinked files
                except FileNotFoundError:  # a dangling symlink, or removed while we walked
                    continue
                except OSError as e:
                    problems.append(e)
                    continue
                if stat.S_ISREG(st.st_mode):
                    batch["file_name"].append(prefix + fname)
                    batch["size"].append(st.st_size)
                    batch["mtime_ns"].append(st.st_mtime_ns)
            if len(batch["file_name"]) >= BATCH_ROWS:
                count += _flush(writer, batch)
        count += _flush(writer, batch)
    return count, problems


def _flush(writer, batch: dict[str, list]) -> int:
    n = len(batch["file_name"])
    if n:
        writer.write_table(pa.table(batch, schema=SCAN_SCHEMA))
        for values in batch.values():
            values.clear()
    return n


def _warn(folder: Path, name: str, problems: list[OSError]) -> None:
    shown = "; ".join(f"{e.filename} ({e.strerror or e})" for e in problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    print(
        f"warning: {len(problems)} path(s) under {folder} could not be read and were left out of "
        f"dataset '{name}': {shown}{more}. Make them readable and register the folder again to "
        "include their images.",
        file=sys.stderr,
    )


def _old_listing(con, corpus: Corpus) -> tuple[str, int]:
    """The current listing as a relation (Parquet, or an earlier version's COCO JSON, or none) and the
    id high-water mark it implies."""
    table_path = corpus.listing_table(SPLIT)
    if table_path.is_file():
        meta = pq.read_schema(table_path).metadata or {}
        relation, next_id = f"read_parquet({sql_literal(str(table_path))})", int(meta.get(b"next_id", b"1"))
    else:
        doc = {}
        if corpus.annotations_file(SPLIT).is_file():
            doc = json.loads(corpus.annotations_file(SPLIT).read_text(encoding="utf-8"))
        entries = [{c: e.get(c) for c in LISTING_SCHEMA.names} for e in doc.get("images", [])]
        con.register("legacy_listing", pa.Table.from_pylist(entries, schema=LISTING_SCHEMA))
        relation, next_id = "legacy_listing", int(doc.get("next_id", 1))
    # Listings without next_id: never go below any id already handed out.
    top = con.execute(f"SELECT coalesce(max(id), 0) FROM {relation}").fetchall()[0][0]
    return relation, max(next_id, int(top) + 1)


def _joined_sql(scan: Path, old: str) -> str:
    """The scan joined with the current listing: per file its old entry, and whether it keeps it."""
    return f"""
        SELECT s.file_name, s.size, s.mtime_ns, o.id AS old_id, o.width AS old_width, o.height AS old_height,
            -- an entry listed before stamps were recorded adopts the file's current ones
            coalesce(o.id IS NOT NULL AND coalesce(o.size, s.size) = s.size
                     AND coalesce(o.mtime_ns, s.mtime_ns) = s.mtime_ns, false) AS keep,
            -- sorting by this string orders paths component by component ('/' below every character that
            -- can follow it): a folder's files stay together, and DuckDB sorts a string far leaner than a list
            replace(s.file_name, '/', chr(1)) AS path_key
        FROM read_parquet({sql_literal(str(scan))}) s LEFT JOIN {old} o USING (file_name)"""


def _merge(con, joined: str, next_id: int, folder: Path, read: HeaderReader, out) -> int:
    """Write the new listing to the Parquet writer `out`, batch by batch: unchanged files keep their
    entry, new or changed ones get the next ids in path order (by path components: a folder's files
    stay together) and their headers read. Returns how many ids were handed out."""
    fresh = 0
    # Sorted by DuckDB (it spills); ids are handed out while streaming the sorted rows, so no window
    # over all of them is ever held in memory.
    for batch in con.sql(f"SELECT * FROM ({joined}) ORDER BY path_key").to_arrow_reader(BATCH_ROWS):
        keep = batch.column("keep").to_pylist()
        names = batch.column("file_name").to_pylist()
        ids = batch.column("old_id").to_pylist()
        width, height = batch.column("old_width").to_pylist(), batch.column("old_height").to_pylist()
        new = [i for i, k in enumerate(keep) if not k]
        for i, (w, h) in zip(new, read([str(folder / names[i]) for i in new]), strict=True):
            ids[i], width[i], height[i] = next_id + fresh, w, h
            fresh += 1
        out.write_table(pa.table({"id": pa.array(ids, pa.int64()), "file_name": batch.column("file_name"),
                                  "width": pa.array(width, pa.int32()), "height": pa.array(height, pa.int32()),
                                  "size": batch.column("size"), "mtime_ns": batch.column("mtime_ns")},
                                 schema=out.schema))  # fmt: skip
    return fresh


def register_folder(name: str, folder: Path, root: Path) -> Corpus:
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise DatasetError(f"IMAGES={folder} is not a folder; point IMAGES at a folder of image files.")
    if name in ("sample", "coco"):
        raise DatasetError(f"'{name}' is a built-in dataset name; register your folder under another name.")
    corpus = Corpus(name, root / name)
    corpus.root.mkdir(parents=True, exist_ok=True)
    with open(corpus.root / ".register.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the OS if this process dies
        _link(name, folder, corpus)
        _register_locked(name, folder, corpus)
    return corpus


def _link(name: str, folder: Path, corpus: Corpus) -> None:
    link = corpus.root / "images" / SPLIT
    if link.is_symlink() or link.exists():
        current = link.resolve()
        if current != folder:
            raise DatasetError(
                f"Dataset '{name}' is already registered to {current}, not {folder}. Choose another "
                f"DATASET name, or remove {corpus.root} to re-register it."
            )
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(folder, link, target_is_directory=True)


def _register_locked(name: str, folder: Path, corpus: Corpus) -> None:
    listing = corpus.listing_table(SPLIT)
    listing.parent.mkdir(parents=True, exist_ok=True)
    spool = Path(tempfile.mkdtemp(prefix=".register-", dir=listing.parent))
    try:
        count, problems = _scan(folder, spool / "scan.parquet")
        if problems:
            _warn(folder, name, problems)
        if not count:
            raise DatasetError(f"IMAGES={folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        read = HeaderReader(parallel=count >= PARALLEL_FROM)  # before DuckDB starts its threads
        try:
            _write_listing(corpus, folder, spool, read, listing)
        finally:
            read.close()
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    corpus.annotations_file(SPLIT).unlink(missing_ok=True)  # an earlier version's listing, now replaced


def _write_listing(corpus: Corpus, folder: Path, spool: Path, read: HeaderReader, listing: Path) -> None:
    """Merge the scan with the current listing in DuckDB (bounded memory, spilling to `spool`) and
    replace the listing atomically: the id high-water mark in it must never be torn or lost."""
    tmp = listing.with_name(f"{listing.name}.{os.getpid()}.tmp")  # two registrations never share it

    def merge(memory: str) -> None:
        con = open_connection()
        try:
            bounded(con, memory, str(spool / "duckdb.tmp"))
            old, next_id = _old_listing(con, corpus)
            joined = _joined_sql(spool / "scan.parquet", old)
            # counted first: the listing's schema, written before its rows, carries the new high-water mark
            fresh = con.execute(f"SELECT count(*) FROM ({joined}) WHERE NOT keep").fetchall()[0][0]
            schema = LISTING_SCHEMA.with_metadata({"next_id": str(next_id + fresh)})
            with open(tmp, "wb") as f:
                with pq.ParquetWriter(f, schema, compression="zstd") as writer:
                    written = _merge(con, joined, next_id, folder, read, writer)
                f.flush()
                os.fsync(f.fileno())
        finally:
            con.close()
        assert written == fresh, (written, fresh)

    try:
        with_memory_steps(merge)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, listing)
