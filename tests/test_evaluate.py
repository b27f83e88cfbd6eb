"""`moai eval`'s harness: VQA-style normalization, exact match, per-type accuracy, aux on/off."""

from __future__ import annotations

import json

import pytest

from pipeline.instructions import import_instructions
from trainer.evaluate import evaluate, is_correct, normalize_answer, write_report
from verbalize.aux import aux_rows
from warehouse.store import Warehouse


@pytest.mark.parametrize(
    "prediction,answer,ok",
    [
        ("A cat.", "a cat", True),
        ("The Bus", "bus", True),
        ("two", "2", True),
        ("  blue ", "blue", True),
        ("red", "a red", True),
        ("cats", "a cat", False),
        ("yes", "no", False),
        ("3", "three", True),
    ],
)
def test_answers_are_normalized_like_vqa(prediction, answer, ok):
    assert is_correct(prediction, answer) is ok
    assert normalize_answer("The  Space-Shuttle!") == "space shuttle"


def test_per_type_accuracy_and_aux_switch(tmp_path, sample_corpus, monkeypatch):
    monkeypatch.setenv("MOAI_DATA", str(sample_corpus.root.parent))
    wh = Warehouse(tmp_path / "wh")
    images = [
        {
            "dataset": "sample",
            "split": "val2017",
            "image_id": r.image_id,
            "file_name": r.file_name,
            "width": r.width,
            "height": r.height,
            "source_mode": "RGB",
            "exif_rotated": False,
            "frames": 1,
            "run_id": "r",
        }
        for r in sample_corpus.images()
    ]
    pairs = [
        aux_rows("sample", i["image_id"], "r", {"text": f"aux for {i['file_name']}", "segmentation_text": "",
                 "detection_text": "", "sgg_text": "", "ocr_text": ""}, "v", "c", False)
        for i in images
    ]  # fmt: skip
    aux, done = [a for a, _ in pairs], [d for _, d in pairs]
    wh.commit({"images": images, "aux_text": aux, "done": done})  # the ledger makes them current
    import_instructions(wh, sample_corpus)
    seen_aux = []
    qa = json.loads((sample_corpus.root / "annotations" / "qa_val2017.json").read_text())
    truth = {q["question"] + str(q["image_id"]): q for q in qa}

    def oracle(question, image, aux_text):  # right on yes/no, wrong elsewhere
        seen_aux.append(aux_text)
        key = question + str(next(q["image_id"] for q in qa if q["question"] == question))
        return truth[key]["answer"] if truth[key]["type"] == "yesno" else "no idea"

    report = evaluate(oracle, wh.root, "sample")
    n_yesno = sum(q["type"] == "yesno" for q in qa)
    assert report["examples"] == len(qa)
    assert report["by_type"]["yesno"] == {"accuracy": 1.0, "correct": n_yesno, "total": n_yesno}
    assert report["by_type"]["colour"]["accuracy"] == 0.0
    assert report["accuracy"] == round(n_yesno / len(qa), 4)
    assert all(a.startswith("aux for ") for a in seen_aux)

    seen_aux.clear()
    assert evaluate(oracle, wh.root, "sample", limit=3, use_aux=False)["examples"] == 3
    assert seen_aux == ["", "", ""]
    write_report(report, tmp_path / "out")
    assert "| yesno | 100.0% |" in (tmp_path / "out" / "results.md").read_text()
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == len(qa)
