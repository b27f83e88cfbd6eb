"""Register any folder of images as a named corpus (COCO layout, the folder linked, never copied).

`data/<name>/images/default` becomes a symlink to the folder and
`data/<name>/annotations/instances_default.json` lists every file with an image suffix (hidden files
and folders, whose names start with '.', are left out; symlinked folders are not followed).

Image ids identify file *contents*, because the warehouse's exactly-once ledger is keyed by image id:

- an unchanged file keeps its id across re-registration;
- a file whose size or mtime_ns changed gets a new id (and its width/height are read again), so the
  annotation job annotates it as a new image;
- an id is never reused: the listing keeps a high-water mark `next_id` that never decreases, so a
  file added after another was removed cannot inherit the removed file's id (and its annotations).

Each entry records the `size` and `mtime_ns` it was registered with. Entries of listings written
before these fields existed adopt the file's current size and mtime_ns once and keep their id (there
is nothing to compare against); `next_id` then starts after their largest id. The extra keys leave
the listing a valid COCO instances file (pycocotools ignores them).

Files that cannot be decoded are still listed (width/height null); the annotation job records them in
`errors`. Folders (or files) that cannot be read at all are skipped with a warning on stderr.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path, PurePosixPath

from core.errors import DatasetError
from corpora.layout import IMAGE_SUFFIXES, Corpus

SPLIT = "default"
SHOWN_PROBLEMS = 5  # paths named in the warning; the rest are only counted


def _image_size(path: Path) -> tuple[int | None, int | None]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return im.width, im.height
    except Exception:
        return None, None


def _scan(folder: Path) -> tuple[dict[str, os.stat_result], list[OSError]]:
    """Image files under `folder` (posix path relative to it -> stat) and the errors met listing it."""
    found: dict[str, os.stat_result] = {}
    problems: list[OSError] = []
    # onerror: a folder that cannot be listed is reported, not silently dropped as rglob did.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=problems.append):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # pruned in place: never entered
        for fname in filenames:
            if fname.startswith(".") or PurePosixPath(fname).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(dirpath, fname)
            try:
                st = path.stat()  # follows symlinked files, like Path.is_file() did
            except FileNotFoundError:  # a dangling symlink, or removed while we walked
                continue
            except OSError as e:
                problems.append(e)
                continue
            if stat.S_ISREG(st.st_mode):
                found[path.relative_to(folder).as_posix()] = st
    return found, problems


def _warn(folder: Path, name: str, problems: list[OSError]) -> None:
    shown = "; ".join(f"{e.filename} ({e.strerror or e})" for e in problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    print(
        f"warning: {len(problems)} path(s) under {folder} could not be read and were left out of "
        f"dataset '{name}': {shown}{more}. Make them readable and register the folder again to "
        "include their images.",
        file=sys.stderr,
    )


def _write_atomically(path: Path, payload: dict) -> None:
    # The listing holds the id high-water mark: a torn or lost write could hand out an id twice.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two registrations at once never share it
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f)
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

    listing = corpus.annotations_file(SPLIT)
    old = json.loads(listing.read_text(encoding="utf-8")) if listing.is_file() else {}
    known: dict[str, dict] = {e["file_name"]: e for e in old.get("images", [])}
    # Old listings have no next_id; never go below any id already handed out.
    next_id = max(old.get("next_id", 1), max((e["id"] for e in known.values()), default=0) + 1)

    found, problems = _scan(folder)
    if problems:
        _warn(folder, name, problems)
    images = []
    for rel in sorted(found, key=lambda r: PurePosixPath(r).parts):
        st = found[rel]
        entry = known.get(rel)
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if entry is not None and not stamp.keys() <= entry.keys():  # listed before stamps were recorded
            entry = {**entry, **stamp}
        if entry is None or any(entry[k] != v for k, v in stamp.items()):
            width, height = _image_size(folder / rel)
            entry = {"id": next_id, "file_name": rel, "width": width, "height": height, **stamp}
            next_id += 1
        images.append(entry)
    if not images:
        raise DatasetError(f"IMAGES={folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    _write_atomically(listing, {"images": images, "annotations": [], "categories": [], "next_id": next_id})
    return corpus
