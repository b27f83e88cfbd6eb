"""Register any folder of images as a named corpus (COCO layout, the folder linked, never copied).

`data/<name>/images/default` becomes a symlink to the folder and
`data/<name>/annotations/instances_default.json` lists every file with an image suffix. Image ids
are stable across re-registration: known files keep their id, new files get new ids. Files that
cannot be read are still listed (without a size); the annotation job records them in `errors`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.corpus import IMAGE_SUFFIXES, Corpus
from pipeline.errors import DatasetError

SPLIT = "default"


def _image_size(path: Path) -> tuple[int | None, int | None]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return im.width, im.height
    except Exception:
        return None, None


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
    known: dict[str, dict] = {}
    if listing.is_file():
        known = {e["file_name"]: e for e in json.loads(listing.read_text(encoding="utf-8"))["images"]}
    next_id = max((e["id"] for e in known.values()), default=0) + 1
    images = []
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for path in files:
        rel = path.relative_to(folder).as_posix()
        entry = known.get(rel)
        if entry is None:
            width, height = _image_size(path)
            entry = {"id": next_id, "file_name": rel, "width": width, "height": height}
            next_id += 1
        images.append(entry)
    if not images:
        raise DatasetError(f"IMAGES={folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    listing.parent.mkdir(parents=True, exist_ok=True)
    tmp = listing.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"images": images, "annotations": [], "categories": []}), encoding="utf-8")
    os.replace(tmp, listing)
    return corpus
