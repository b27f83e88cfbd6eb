"""The `sample` corpus: real photos that ship inside installed packages, laid out like COCO 2017.

Nothing is downloaded: the files come from scikit-image's `skimage/data/` and ultralytics'
`assets/`. Building is deterministic and idempotent (an existing, complete corpus is reused).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from core.errors import DatasetError
from corpora.coco_categories import coco_categories_json
from corpora.layout import Corpus

SPLIT = "val2017"

# (file stem in the corpus, package, file inside the package's data folder, what it shows)
SOURCES: list[tuple[str, str, str, str]] = [
    ("astronaut", "skimage", "data/astronaut.png", "astronaut Eileen Collins in a flight suit, US flag"),
    ("coffee", "skimage", "data/coffee.png", "a cup of coffee on a saucer with a spoon"),
    ("chelsea", "skimage", "data/chelsea.png", "a tabby cat"),
    ("motorcycle_left", "skimage", "data/motorcycle_left.png", "a motorcycle in a garage (left stereo view)"),
    (
        "motorcycle_right",
        "skimage",
        "data/motorcycle_right.png",
        "a motorcycle in a garage (right stereo view)",
    ),
    ("rocket", "skimage", "data/rocket.jpg", "a rocket on its launch pad"),
    ("page", "skimage", "data/page.png", "a scanned page of printed text (grayscale)"),
    ("text", "skimage", "data/text.png", "hand-written and printed text on a card (grayscale)"),
    ("camera", "skimage", "data/camera.png", "a man with a camera on a tripod (grayscale)"),
    ("horse", "skimage", "data/horse.png", "silhouette of a horse (binary)"),
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", "galaxies in the Hubble deep field"),
    ("bus", "ultralytics", "assets/bus.jpg", "a bus and people on a street"),
    ("zidane", "ultralytics", "assets/zidane.jpg", "two men in suits, one with a tie"),
]


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"The sample corpus needs the '{package}' package; run `make setup`.")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise DatasetError(f"The sample corpus expected {path} inside the installed '{package}' package.")
    return path


def build_sample(root: Path) -> Corpus:
    corpus = Corpus("sample", root)
    listing = corpus.annotations_file(SPLIT)
    qa_file = root / "annotations" / f"qa_{SPLIT}.json"
    if (
        listing.is_file()
        and qa_file.is_file()
        and all((root / "images" / SPLIT / f"{stem}.jpg").is_file() for stem, *_ in SOURCES)
    ):
        return corpus

    from PIL import Image

    image_dir = root / "images" / SPLIT
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images = []
    for image_id, (stem, package, relative, description) in enumerate(SOURCES, start=1):
        with Image.open(_package_file(package, relative)) as im:
            # COCO images are JPEGs; keep grayscale as grayscale (COCO has some), drop alpha.
            im = im.convert("L") if im.mode in ("L", "1", "I;16", "I") else im.convert("RGB")
            target = image_dir / f"{stem}.jpg"
            tmp = target.with_suffix(".jpg.tmp")
            im.save(tmp, format="JPEG", quality=95)
            os.replace(tmp, target)
            images.append(
                {
                    "id": image_id,
                    "file_name": target.name,
                    "width": im.width,
                    "height": im.height,
                    "license": 0,
                    "source": f"{package}/{relative}",
                    "description": description,
                }
            )
    document = {
        "info": {
            "description": "moai-forge sample corpus: photos shipped inside scikit-image and ultralytics",
            "version": "1.0",
            "year": 2026,
        },
        "licenses": [{"id": 0, "name": "as distributed with the source package", "url": ""}],
        "images": images,
        "annotations": [],
        "categories": coco_categories_json(),
    }
    tmp = listing.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1), encoding="utf-8")
    os.replace(tmp, listing)
    _write_qa(qa_file, {image["file_name"]: image["id"] for image in images})
    return corpus


def _write_qa(path: Path, ids: dict[str, int]) -> None:
    """A few questions per image, written by a person looking at the photos (not generated)."""
    source = json.loads((Path(__file__).with_name("sample_qa.json")).read_text(encoding="utf-8"))
    qa = [
        {"image_id": ids[q["file_name"]], "type": q["type"], "question": q["question"], "answer": q["answer"]}
        for q in source
    ]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(qa, indent=1), encoding="utf-8")
    os.replace(tmp, path)
