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

from core.errors import DatasetError

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


def find_image(corpus: Corpus, image: str) -> ImageRef:
    """One image of a corpus by file name, file stem or image id (what `moai viz` and `moai generate` take)."""
    for ref in corpus.images():
        if image in (ref.file_name, Path(ref.file_name).stem, str(ref.image_id)):
            return ref
    raise DatasetError(f"No image '{image}' in dataset '{corpus.name}' (give a file name, stem or image id).")


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
