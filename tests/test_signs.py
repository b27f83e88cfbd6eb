"""The `signs` corpus: deterministic, disjoint vocabularies across splits, answers match the drawing."""

from __future__ import annotations

import json

from corpora.signs import SignsConfig, build_signs, split_of


def _load(root, name):
    return json.loads((root / "annotations" / name).read_text())


def test_signs_is_deterministic_and_coco_shaped(tmp_path):
    from pycocotools.coco import COCO

    cfg = SignsConfig(seed=3, images=30)
    a = build_signs(tmp_path / "a", cfg)
    b = build_signs(tmp_path / "b", cfg)
    assert a.splits == ["test", "train", "val"]
    for split in a.splits:
        assert _load(a.root, f"qa_{split}.json") == _load(b.root, f"qa_{split}.json")
        first = sorted((a.root / "images" / split).iterdir())[0]
        assert first.read_bytes() == (b.root / "images" / split / first.name).read_bytes()
    coco = COCO(str(a.annotations_file("train")))
    assert len(coco.getImgIds()) == 24 and coco.loadCats(1)[0]["name"] == "sign"


def test_answers_come_from_the_drawn_signs_and_vocabularies_are_disjoint(tmp_path):
    corpus = build_signs(tmp_path / "s", SignsConfig(seed=1, images=60))
    words = {}
    for split in corpus.splits:
        anns = _load(corpus.root, f"instances_{split}.json")["annotations"]
        by_image = {}
        for ann in anns:
            by_image.setdefault(ann["image_id"], []).append(ann)
            assert split_of(ann["text"]) == split
        words[split] = {a["text"] for a in anns}
        for q in _load(corpus.root, f"qa_{split}.json"):
            signs = by_image[q["image_id"]]
            if q["type"] == "count":
                assert q["answer"] == str(len(signs))
            elif q["type"] == "colour_of_text":
                assert any(s["colour"] == q["answer"] and s["text"] in q["question"] for s in signs)
            else:
                assert q["answer"] in {s["text"] for s in signs}
    assert not (words["train"] & words["test"]) and not (words["train"] & words["val"])
