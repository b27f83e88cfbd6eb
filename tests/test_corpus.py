"""Corpora: the sample corpus opens in pycocotools; names are validated; COCO without data is explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import DatasetError
from corpora.layout import Corpus, validate_name
from corpora.resolve import resolve_corpus
from corpora.sample import SOURCES, build_sample


def test_sample_corpus_opens_in_pycocotools(sample_corpus):
    from pycocotools.coco import COCO

    coco = COCO(str(sample_corpus.annotations_file("val2017")))
    assert len(coco.getImgIds()) == len(SOURCES) >= 11
    assert len(coco.getCatIds()) == 80
    astronaut = next(i for i in coco.loadImgs(coco.getImgIds()) if i["file_name"] == "astronaut.jpg")
    assert (astronaut["width"], astronaut["height"]) == (512, 512)
    for info in coco.loadImgs(coco.getImgIds()):
        assert (sample_corpus.root / "images" / "val2017" / info["file_name"]).is_file()


def test_sample_listing_matches_files(sample_corpus):
    from PIL import Image

    refs = list(sample_corpus.images())
    assert [r.image_id for r in refs] == list(range(1, len(SOURCES) + 1))
    for ref in refs:
        with Image.open(ref.path) as im:
            assert im.format == "JPEG"
            assert (im.width, im.height) == (ref.width, ref.height)


def test_sample_build_is_idempotent_and_deterministic(tmp_path, sample_corpus):
    again = build_sample(tmp_path / "sample")
    a = (sample_corpus.root / "images" / "val2017" / "bus.jpg").read_bytes()
    b = (again.root / "images" / "val2017" / "bus.jpg").read_bytes()
    assert a == b
    before = again.annotations_file("val2017").stat().st_mtime_ns
    build_sample(tmp_path / "sample")
    assert again.annotations_file("val2017").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "name",
    [
        "../../etc",
        "..",
        "a/b",
        "/etc",
        "Sample",
        "ABC",
        "",
        "x" * 65,
        "name with space",
        ".hidden",
        "-leading-dash",
        "abc\n",  # "$" matches before a final newline: ^...$ with match() let this through
        "abc\r",
        "x\x00",
        "\nabc",
        "a\nb",
        "café",
    ],
)
def test_bad_dataset_names_are_refused(name, tmp_path):
    with pytest.raises(DatasetError, match="Refusing dataset name"):
        resolve_corpus(name, root=tmp_path)
    with pytest.raises(DatasetError, match="Refusing dataset name"):
        validate_name(name)


@pytest.mark.parametrize("name", ["a", "mine", "coco-2017", "my_set", "0", "x" * 64, "a-_9"])
def test_good_dataset_names_are_accepted(name):
    assert validate_name(name) == name


def test_coco_without_data_explains_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("COCO_ROOT", raising=False)
    with pytest.raises(DatasetError) as err:
        resolve_corpus("coco", root=tmp_path)
    message = str(err.value)
    assert str((tmp_path / "coco").resolve()) in message
    assert "COCO_ROOT" in message and "Nothing is downloaded" in message


def test_coco_official_layout_is_read(tmp_path, monkeypatch, sample_corpus):
    """The official layout (val2017/ beside annotations/) is found through COCO_ROOT."""
    root = tmp_path / "coco2017"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    src = sample_corpus.image_dir("val2017") / "bus.jpg"
    (root / "val2017" / "000000000139.jpg").write_bytes(src.read_bytes())
    listing = {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "width": 810, "height": 1080}],
        "annotations": [],
        "categories": [],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(listing))
    monkeypatch.setenv("COCO_ROOT", str(root))
    corpus = resolve_corpus("coco", root=tmp_path / "unused")
    (ref,) = list(corpus.images())
    assert corpus.splits == ["val2017"]
    assert ref.image_id == 139 and ref.path == root / "val2017" / "000000000139.jpg" and ref.path.is_file()


def test_folder_registration_keeps_ids_stable(tmp_path, sample_corpus):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    src = sample_corpus.image_dir("val2017")
    (folder / "b.jpg").write_bytes((src / "bus.jpg").read_bytes())
    (folder / "sub" / "a.jpg").write_bytes((src / "coffee.jpg").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")

    corpus = resolve_corpus("mine", images=folder, root=tmp_path / "data")
    first = {r.file_name: r.image_id for r in corpus.images()}
    assert set(first) == {"b.jpg", "sub/a.jpg", "broken.png"}  # broken files are listed; decode reports them
    assert next(r for r in corpus.images() if r.file_name == "b.jpg").width == 810

    (folder / "c.jpg").write_bytes((src / "rocket.jpg").read_bytes())
    corpus = resolve_corpus("mine", images=folder, root=tmp_path / "data")
    second = {r.file_name: r.image_id for r in corpus.images()}
    assert {k: second[k] for k in first} == first
    assert second["c.jpg"] not in first.values()
    # later runs can use the name alone
    assert isinstance(resolve_corpus("mine", root=tmp_path / "data"), Corpus)


def test_folder_registered_elsewhere_is_refused(tmp_path, sample_corpus):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "x.jpg").write_bytes((sample_corpus.image_dir("val2017") / "bus.jpg").read_bytes())
    resolve_corpus("mine", images=a, root=tmp_path / "data")
    with pytest.raises(DatasetError, match="already registered"):
        resolve_corpus("mine", images=b, root=tmp_path / "data")


def test_unknown_dataset_says_how_to_register(tmp_path):
    with pytest.raises(DatasetError, match="IMAGES="):
        resolve_corpus("nothing-here", root=tmp_path)


def test_images_folder_must_exist(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        resolve_corpus("mine", images=Path(tmp_path / "missing"), root=tmp_path)
