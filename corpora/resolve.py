"""Find a corpus by dataset name: the built-in generated ones (`sample`, `signs`), COCO 2017, a folder
registered with `--images`, or any COCO-style folder under the data root."""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import DatasetError
from corpora.layout import Corpus, data_root, validate_name


def resolve_corpus(name: str, images: str | Path | None = None, root: Path | None = None) -> Corpus:
    """Return the corpus for `name`, building or registering it when that is what the name asks for."""
    validate_name(name)
    root = Path(root) if root is not None else data_root()
    if images is not None:
        from corpora.folder import register_folder

        return register_folder(name, Path(images), root)
    if name == "coco":
        return _coco(root)
    if name == "sample":
        from corpora.sample import build_sample

        return build_sample(root / "sample")
    if name == "signs":
        from corpora.signs import build_signs

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
