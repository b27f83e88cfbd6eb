"""Instruction sources land in the `instructions` table once: QA files, LLaVA conversations, COCO captions."""

from __future__ import annotations

import json

from corpora.resolve import resolve_corpus
from pipeline.instructions import CAPTION_PROMPT, import_instructions
from warehouse.store import Warehouse


def test_qa_llava_and_captions_are_imported_once(tmp_path, sample_corpus):
    import shutil

    root = tmp_path / "data" / "mini"
    shutil.copytree(sample_corpus.root, root)
    (root / "annotations" / "captions_val2017.json").write_text(
        json.dumps(
            {"annotations": [{"id": 7, "image_id": 2, "caption": " A cup of coffee on a red saucer. "}]}
        )
    )
    llava = tmp_path / "llava.json"
    llava.write_text(
        json.dumps(
            [
                {
                    "id": "x1",
                    "image": "coco/val2017/bus.jpg",
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat vehicle is this?"},
                        {"from": "gpt", "value": "A bus."},
                        {"from": "human", "value": "What colour is it?"},
                        {"from": "gpt", "value": "Blue."},
                    ],
                },
                {
                    "id": "x2",
                    "image": "not_in_corpus.jpg",
                    "conversations": [
                        {"from": "human", "value": "<image>\nHi"},
                        {"from": "gpt", "value": "Hello"},
                    ],
                },
            ]
        )
    )
    corpus = resolve_corpus("mini", root=tmp_path / "data")
    wh = Warehouse(tmp_path / "wh")
    n = import_instructions(wh, corpus, llava_json=llava)
    assert n == 32 + 1 + 2
    assert import_instructions(wh, corpus, llava_json=llava) == 0  # nothing twice
    rows = wh.query(
        "SELECT source, image_id, turn, question, answer FROM instructions "
        "WHERE source != 'qa' ORDER BY source, turn"
    ).to_pylist()
    bus_id = next(r.image_id for r in corpus.images() if r.file_name == "bus.jpg")
    assert rows == [
        {
            "source": "coco-captions",
            "image_id": 2,
            "turn": 0,
            "question": CAPTION_PROMPT,
            "answer": "A cup of coffee on a red saucer.",
        },
        {
            "source": "llava",
            "image_id": bus_id,
            "turn": 0,
            "question": "What vehicle is this?",
            "answer": "A bus.",
        },
        {
            "source": "llava",
            "image_id": bus_id,
            "turn": 1,
            "question": "What colour is it?",
            "answer": "Blue.",
        },
    ]
