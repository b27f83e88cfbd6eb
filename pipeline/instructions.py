"""Import instruction/QA pairs into the warehouse's `instructions` table.

Sources: our QA files (`annotations/qa_<split>.json`: [{image_id, type, question, answer}]),
LLaVA/ShareGPT conversation JSON (`conversations` with `<image>`), and COCO captions
(`captions_<split>.json`, each caption becomes "Describe the image briefly." → caption).
Re-importing a source replaces nothing and duplicates nothing: rows are keyed by `sample_id`
and existing ids are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from corpora.layout import Corpus
from warehouse.store import Warehouse

CAPTION_PROMPT = "Describe the image briefly."


def qa_rows(corpus: Corpus, split: str) -> Iterator[dict]:
    path = corpus.root / "annotations" / f"qa_{split}.json"
    if not path.is_file():
        return
    for i, q in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        yield {
            "dataset": corpus.name,
            "split": split,
            "image_id": int(q["image_id"]),
            "source": "qa",
            "sample_id": f"qa:{split}:{i}",
            "turn": 0,
            "type": q.get("type", ""),
            "question": q["question"],
            "answer": q["answer"],
        }


def caption_rows(corpus: Corpus, split: str) -> Iterator[dict]:
    path = corpus.root / "annotations" / f"captions_{split}.json"
    if not path.is_file():
        return
    for ann in json.loads(path.read_text(encoding="utf-8")).get("annotations", []):
        yield {
            "dataset": corpus.name,
            "split": split,
            "image_id": int(ann["image_id"]),
            "source": "coco-captions",
            "sample_id": f"caption:{ann['id']}",
            "turn": 0,
            "type": "caption",
            "question": CAPTION_PROMPT,
            "answer": ann["caption"].strip(),
        }


def llava_rows(path: Path, dataset: str, split: str, file_to_id: dict[str, int]) -> Iterator[dict]:
    """LLaVA/ShareGPT JSON: [{id, image, conversations: [{from: human|gpt, value}, ...]}]."""
    for record in json.loads(Path(path).read_text(encoding="utf-8")):
        image = Path(record.get("image", "")).name
        if image not in file_to_id:
            continue
        turns = record.get("conversations", [])
        for t in range(0, len(turns) - 1, 2):
            human, gpt = turns[t], turns[t + 1]
            if human.get("from") != "human" or gpt.get("from") not in ("gpt", "assistant"):
                continue
            yield {
                "dataset": dataset,
                "split": split,
                "image_id": file_to_id[image],
                "source": "llava",
                "sample_id": f"llava:{record.get('id', image)}:{t // 2}",
                "turn": t // 2,
                "type": "conversation",
                "question": human["value"].replace("<image>", "").strip(),
                "answer": gpt["value"].strip(),
            }


def import_instructions(wh: Warehouse, corpus: Corpus, llava_json: Path | None = None) -> int:
    """Import every known source for `corpus`; returns the number of new rows."""
    existing = set(
        wh.query("SELECT sample_id FROM instructions WHERE dataset = ?", [corpus.name])
        .column("sample_id")
        .to_pylist()
    )
    rows: list[dict] = []
    for split in corpus.splits:
        rows.extend(qa_rows(corpus, split))
        rows.extend(caption_rows(corpus, split))
        if llava_json is not None:
            file_to_id = {Path(r.file_name).name: r.image_id for r in corpus.images([split])}
            rows.extend(llava_rows(llava_json, corpus.name, split, file_to_id))
    new = [r for r in rows if r["sample_id"] not in existing]
    if new:
        wh.commit({"instructions": new})
    return len(new)
