"""Corpora in the COCO 2017 layout: one reader for `sample`, `coco`, `signs` and registered folders.

A corpus lives in a folder laid out like COCO 2017::

    <root>/annotations/instances_<split>.json   # {"images": [{"id", "file_name", "width", "height"}...]}
    <root>/annotations/images_<split>.parquet   # or the same listing as a Parquet table (registered
                                                # folders: id, file_name, width, height, size, mtime_ns)
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
        found = set()
        for pattern, prefix in (("instances_*.json", "instances_"), ("images_*.parquet", "images_")):
            for ann in (self.root / "annotations").glob(pattern):
                split = ann.stem.removeprefix(prefix)
                if self.image_dir(split) is not None:
                    found.add(split)
        return sorted(found)

    def image_dir(self, split: str) -> Path | None:
        for candidate in (self.root / split, self.root / "images" / split):
            if candidate.is_dir():
                return candidate
        return None

    def annotations_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def listing_table(self, split: str) -> Path:
        """A split's listing as a Parquet table (registered folders); when it exists it is the listing."""
        return self.root / "annotations" / f"images_{split}.parquet"

    def _image_dir(self, split: str) -> Path:
        image_dir = self.image_dir(split)
        if image_dir is None:
            raise DatasetError(
                f"Dataset '{self.name}' has no image folder for split '{split}' under {self.root}."
            )
        return image_dir

    def listings(self, splits: list[str] | None = None) -> Iterator[tuple[str, Path, Path | list[dict]]]:
        """(split, image folder, listing) per split: the listing is a Parquet table's path (read it in
        bounded memory) or the COCO JSON's image entries."""
        for split in splits or self.splits:
            image_dir = self._image_dir(split)
            table = self.listing_table(split)
            if table.is_file():
                yield split, image_dir, table
                continue
            with open(self.annotations_file(split), encoding="utf-8") as f:
                yield split, image_dir, json.load(f).get("images", [])

    def images(self, splits: list[str] | None = None) -> Iterator[ImageRef]:
        for split, image_dir, listing in self.listings(splits):
            for entry in _entries(listing):
                yield ImageRef(
                    dataset=self.name,
                    split=split,
                    image_id=int(entry["id"]),
                    file_name=entry["file_name"],
                    path=image_dir / entry["file_name"],
                    width=entry.get("width"),
                    height=entry.get("height"),
                )


def _entries(listing: Path | list[dict]) -> Iterator[dict]:
    if isinstance(listing, list):
        yield from listing
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(listing).iter_batches(columns=["id", "file_name", "width", "height"]):
        yield from batch.to_pylist()


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
