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

Only new or changed files have their headers read (width/height), in parallel processes when there
are many. Listings written by earlier versions (`instances_default.json`, with or without the `size`,
`mtime_ns` and `next_id` fields) are read once, keep their ids (entries without stamps adopt the
file's current ones), and are replaced by the Parquet table.

Files that cannot be decoded are still listed (width/height null); the annotation job records them in
`errors`. Folders (or files) that cannot be read at all are skipped with a warning on stderr.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import DatasetError
from corpora.layout import IMAGE_SUFFIXES, Corpus

SPLIT = "default"
SHOWN_PROBLEMS = 5  # paths named in the warning; the rest are only counted
PARALLEL_FROM = 2000  # new files from which headers are read by a pool of processes
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


def _image_sizes(paths: list[str]) -> list[tuple[int | None, int | None]]:
    """Headers of many files: in a pool of processes (one per core) when there are many."""
    workers = os.cpu_count() or 1
    if len(paths) < PARALLEL_FROM or workers < 2:
        return [_image_size(p) for p in paths]
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # fork when this process has one thread (the CLI registers before DuckDB or Ray start threads):
    # cheapest; otherwise forkserver, as a fork could inherit another thread's held lock.
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(_image_size, paths, chunksize=max(64, len(paths) // (workers * 16))))
    except (BrokenProcessPool, OSError):  # no processes to be had here (e.g. a forkserver without __main__)
        return [_image_size(p) for p in paths]


@dataclass
class Scan:
    """Image files under a folder, in listing order: posix paths relative to it, sizes, mtimes."""

    names: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    problems: list[OSError] = field(default_factory=list)


def _scan(folder: Path) -> Scan:
    """Image files under `folder` and the errors met listing it."""
    found: list[tuple[tuple[str, ...], int, int]] = []
    problems: list[OSError] = []
    # onerror: a folder that cannot be listed is reported, not silently dropped as rglob did.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=problems.append):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # pruned in place: never entered
        parts = Path(dirpath).relative_to(folder).parts
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
                found.append(((*parts, fname), st.st_size, st.st_mtime_ns))
    found.sort(key=lambda f: f[0])  # by path components: a folder's files stay together
    scan = Scan(problems=problems)
    for parts, size, mtime in found:
        scan.names.append("/".join(parts))
        scan.sizes.append(size)
        scan.mtimes.append(mtime)
    return scan


def _warn(folder: Path, name: str, problems: list[OSError]) -> None:
    shown = "; ".join(f"{e.filename} ({e.strerror or e})" for e in problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    print(
        f"warning: {len(problems)} path(s) under {folder} could not be read and were left out of "
        f"dataset '{name}': {shown}{more}. Make them readable and register the folder again to "
        "include their images.",
        file=sys.stderr,
    )


def _old_listing(corpus: Corpus) -> tuple[pa.Table, int]:
    """The current listing (Parquet, or an earlier version's COCO JSON) and its next id."""
    table_path = corpus.listing_table(SPLIT)
    if table_path.is_file():
        old = pq.read_table(table_path)
        next_id = int((old.schema.metadata or {}).get(b"next_id", b"1"))
    elif corpus.annotations_file(SPLIT).is_file():
        doc = json.loads(corpus.annotations_file(SPLIT).read_text(encoding="utf-8"))
        entries = [{c: e.get(c) for c in LISTING_SCHEMA.names} for e in doc.get("images", [])]
        old, next_id = pa.Table.from_pylist(entries, schema=LISTING_SCHEMA), doc.get("next_id", 1)
    else:
        return LISTING_SCHEMA.empty_table(), 1
    # Listings without next_id: never go below any id already handed out.
    top = pc.max(old["id"]).as_py() if old.num_rows else 0
    return old.cast(LISTING_SCHEMA), max(next_id, (top or 0) + 1)


def _merge(scan: Scan, old: pa.Table, next_id: int, folder: Path) -> tuple[pa.Table, int]:
    """The new listing: unchanged files keep their entry, new or changed ones get the next ids."""
    found = pa.table(
        {
            "file_name": pa.array(scan.names, pa.string()),
            "size": pa.array(scan.sizes, pa.int64()),
            "mtime_ns": pa.array(scan.mtimes, pa.int64()),
            "pos": pa.array(range(len(scan.names)), pa.int64()),
        }
    )
    previous = old.rename_columns([f"old_{c}" if c != "file_name" else c for c in old.column_names])
    joined = found.join(previous, "file_name", join_type="left outer").sort_by("pos")
    # An entry listed before stamps were recorded adopts the file's current ones (nothing to compare).
    old_size = pc.coalesce(joined["old_size"], joined["size"])
    old_mtime = pc.coalesce(joined["old_mtime_ns"], joined["mtime_ns"])
    keep = pc.and_(
        pc.is_valid(joined["old_id"]),
        pc.and_(pc.equal(old_size, joined["size"]), pc.equal(old_mtime, joined["mtime_ns"])),
    )
    keep = pc.fill_null(keep, False).to_numpy(zero_copy_only=False)
    fresh = np.flatnonzero(~keep)
    ids = joined["old_id"].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan
    ids[fresh] = np.arange(next_id, next_id + len(fresh))
    width = joined["old_width"].to_numpy(zero_copy_only=False).astype(np.float64)
    height = joined["old_height"].to_numpy(zero_copy_only=False).astype(np.float64)
    names = joined["file_name"].to_pylist() if len(fresh) else []
    for i, (w, h) in zip(fresh, _image_sizes([str(folder / names[i]) for i in fresh]), strict=True):
        width[i], height[i] = (np.nan, np.nan) if w is None else (w, h)
    listing = pa.table(
        {
            "id": pa.array(ids.astype(np.int64)),
            "file_name": joined["file_name"],
            "width": pa.array(width, pa.float64(), from_pandas=True).cast(pa.int32()),
            "height": pa.array(height, pa.float64(), from_pandas=True).cast(pa.int32()),
            "size": joined["size"],
            "mtime_ns": joined["mtime_ns"],
        },
        schema=LISTING_SCHEMA,
    )
    return listing, next_id + len(fresh)


def _write_atomically(path: Path, table: pa.Table, next_id: int) -> None:
    # The listing holds the id high-water mark: a torn or lost write could hand out an id twice.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two registrations at once never share it
    table = table.replace_schema_metadata({"next_id": str(next_id)})
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def register_folder(name: str, folder: Path, root: Path) -> Corpus:
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise DatasetError(f"IMAGES={folder} is not a folder; point IMAGES at a folder of image files.")
    if name in ("sample", "coco"):
        raise DatasetError(f"'{name}' is a built-in dataset name; register your folder under another name.")
    corpus = Corpus(name, root / name)
    link = corpus.root / "images" / SPLIT
    if link.is_symlink() or link.exists():
        current = link.resolve()
        if current != folder:
            raise DatasetError(
                f"Dataset '{name}' is already registered to {current}, not {folder}. Choose another "
                f"DATASET name, or remove {corpus.root} to re-register it."
            )
    else:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(folder, link, target_is_directory=True)

    scan = _scan(folder)
    if scan.problems:
        _warn(folder, name, scan.problems)
    if not scan.names:
        raise DatasetError(f"IMAGES={folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    old, next_id = _old_listing(corpus)
    listing, next_id = _merge(scan, old, next_id, folder)
    _write_atomically(corpus.listing_table(SPLIT), listing, next_id)
    corpus.annotations_file(SPLIT).unlink(missing_ok=True)  # an earlier version's listing, now replaced
    return corpus
