"""Corpora in the COCO 2017 layout: one reader for `sample`, `coco`, `signs` and registered folders.

A corpus lives in a folder laid out like COCO 2017::

    <root>/annotations/instances_<split>.json   # {"images": [{"id", "file_name", "width", "height"}...]}
    <root>/<split>/<file_name>                  # the official COCO layout (train2017/, val2017/)
    <root>/images/<split>/<file_name>           # the layout our generated corpora use

`resolve_corpus(name)` finds (or, for built-in generated corpora, builds) the folder for a dataset
name and refuses names that could escape the data root.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DatasetError

# \A...\Z, not ^...$: "$" also matches before a final "\n", which let "abc\n" through. Anchored this
# way the pattern is safe with match(), search() and fullmatch() alike.
DATASET_NAME = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,63}\Z")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GENERATED = ("sample", "signs")  # built on first use from files that ship inside installed packages


@dataclass(frozen=True)
class ImageRef:
    """One image of a corpus, as listed by its annotations file (nothing decoded yet)."""

    dataset: str
    split: str
    image_id: int
    file_name: str
    path: Path
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Corpus:
    name: str
    root: Path

    @property
    def splits(self) -> list[str]:
        found = []
        for ann in sorted((self.root / "annotations").glob("instances_*.json")):
            split = ann.stem.removeprefix("instances_")
            if self.image_dir(split) is not None:
                found.append(split)
        return found

    def image_dir(self, split: str) -> Path | None:
        for candidate in (self.root / split, self.root / "images" / split):
            if candidate.is_dir():
                return candidate
        return None

    def annotations_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def images(self, splits: list[str] | None = None) -> Iterator[ImageRef]:
        for split in splits or self.splits:
            image_dir = self.image_dir(split)
            if image_dir is None:
                raise DatasetError(
                    f"Dataset '{self.name}' has no image folder for split '{split}' under {self.root}."
                )
            with open(self.annotations_file(split), encoding="utf-8") as f:
                listing = json.load(f)
            for entry in listing.get("images", []):
                yield ImageRef(
                    dataset=self.name,
                    split=split,
                    image_id=int(entry["id"]),
                    file_name=entry["file_name"],
                    path=image_dir / entry["file_name"],
                    width=entry.get("width"),
                    height=entry.get("height"),
                )


def data_root() -> Path:
    return Path(os.environ.get("MOAI_DATA", "data"))


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        raise DatasetError(
            f"Refusing dataset name {name!r}: a dataset name is 1-64 characters of lowercase letters, digits, "
            "'-' and '_', starting with a letter or digit (it becomes a folder under the data root and a "
            "partition value in the warehouse, so paths such as '../x' are not allowed)."
        )
    return name


def resolve_corpus(name: str, images: str | Path | None = None, root: Path | None = None) -> Corpus:
    """Return the corpus for `name`, building or registering it when that is what the name asks for."""
    validate_name(name)
    root = Path(root) if root is not None else data_root()
    if images is not None:
        from pipeline.corpora.folder import register_folder

        return register_folder(name, Path(images), root)
    if name == "coco":
        return _coco(root)
    if name == "sample":
        from pipeline.corpora.sample import build_sample

        return build_sample(root / "sample")
    if name == "signs":
        from pipeline.corpora.signs import build_signs

        return build_signs(root / "signs")
    corpus = Corpus(name, root / name)
    if corpus.root.is_dir() and corpus.splits:
        return corpus
    raise DatasetError(
        f"No dataset named '{name}': {corpus.root.resolve()} holds no COCO-style corpus "
        "(annotations/instances_<split>.json plus its images). Built-in datasets: sample, signs, coco. "
        f"To use a folder of your own images run: make annotate DATASET={name} IMAGES=/path/to/folder"
    )


def _coco(root: Path) -> Corpus:
    coco_root = Path(os.environ.get("COCO_ROOT", root / "coco"))
    corpus = Corpus("coco", coco_root)
    if coco_root.is_dir() and corpus.splits:
        return corpus
    raise DatasetError(
        f"COCO 2017 was not found at {coco_root.resolve()} (set COCO_ROOT to point elsewhere). "
        "Expected the official layout: train2017/ and/or val2017/ holding the images, and "
        "annotations/instances_train2017.json / instances_val2017.json (captions_*.json and "
        "panoptic_*.json are used when present). Nothing is downloaded automatically: fetch COCO 2017 "
        "from cocodataset.org, unpack it there, and run the command again."
    )
