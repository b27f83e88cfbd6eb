"""`moai eval`: exact-match (VQA-style, one reference answer) accuracy over any QA table, by question type.

Generic on purpose: the rows come from the warehouse's `instructions` table joined with images and
their aux text, so the same harness scores the sample QA, the `signs` test split, or POPE-style
yes/no questions built from COCO annotations. Answers are normalized before comparison (case,
punctuation, articles, whitespace, number words), as the VQA evaluation does.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from corpora.resolve import resolve_corpus
from trainer.data import load_examples
from warehouse.store import Warehouse

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def is_correct(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


AnswerFn = Callable[[str, Path, str], str]  # (question, image path, aux text) -> answer


def evaluate(
    answer_fn: AnswerFn,
    warehouse: str | Path,
    dataset: str,
    splits: list[str] | None = None,
    limit: int | None = None,
    use_aux: bool = True,
) -> dict:
    """Score `answer_fn` on every instruction of `dataset` (optionally some splits / the first `limit`)."""
    corpus = resolve_corpus(dataset)
    examples = load_examples(Warehouse(warehouse), dataset, splits).to_pylist()[:limit]
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    predictions = []
    start = time.perf_counter()
    items = [
        (
            row["question"],
            corpus.image_dir(row["image_split"]) / row["file_name"],
            row["aux_text"] if use_aux else "",
        )
        for row in examples
    ]
    batch = getattr(answer_fn, "batch", None)  # a model's answer function also answers many at once
    answers = batch(items) if batch is not None else [answer_fn(*item) for item in items]
    for row, prediction in zip(examples, answers, strict=True):
        correct = is_correct(prediction, row["answer"])
        per_type[row["type"]][0] += correct
        per_type[row["type"]][1] += 1
        predictions.append(
            {
                "sample_id": row["sample_id"],
                "image_id": row["image_id"],
                "type": row["type"],
                "question": row["question"],
                "answer": row["answer"],
                "prediction": prediction,
                "correct": correct,
            }
        )
    total_correct = sum(c for c, _ in per_type.values())
    return {
        "dataset": dataset,
        "splits": splits,
        "examples": len(examples),
        "use_aux": use_aux,
        "accuracy": round(total_correct / len(examples), 4) if examples else 0.0,
        "by_type": {
            t: {"accuracy": round(c / n, 4), "correct": c, "total": n}
            for t, (c, n) in sorted(per_type.items())
        },
        "seconds": round(time.perf_counter() - start, 2),
        "predictions": predictions,
    }


def model_answer_fn(model_dir: str | Path) -> AnswerFn:
    """Greedy answers from a folder written by `moai export-model`."""
    from core.errors import UserError
    from trainer.export import (
        generate_answer,
        generate_answers,
        load_data_config,
        load_exported,
        load_tokenizer,
    )

    if not Path(model_dir, "export.json").is_file():
        raise UserError(
            f"{model_dir} is not an exported model; train one (make train) and export it with "
            "`moai export-model --run outputs/train/<run> --out <folder>`."
        )

    model, tokenizer, data_cfg = (
        load_exported(model_dir),
        load_tokenizer(model_dir),
        load_data_config(model_dir),
    )
    model.eval()

    images: dict = {}

    def answer(question: str, image: Path, aux_text: str) -> str:
        return generate_answer(model, question, image, aux_text, tokenizer, data_cfg)

    def batch(items: list[tuple[str, Path, str]]) -> list[str]:
        return generate_answers(model, items, tokenizer, data_cfg, images=images)

    answer.batch = batch
    if data_cfg.aux_map and model.config.use_aux:
        loaded: dict = {}

        def aux_maps(warehouse, dataset: str, image_id: int):
            """The image's panoptic-map image, or None when the dataset has no segmentation."""
            from trainer.data import aux_maps as load_maps
            from trainer.inputs import aux_map_image

            key = (str(warehouse), dataset)
            if key not in loaded:
                loaded[key] = load_maps(Warehouse(warehouse), dataset)
            maps = loaded[key]
            return None if maps is None else aux_map_image(maps.get(image_id, []), data_cfg.image_size)

        answer.aux_maps = aux_maps
    return answer


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in report["predictions"]))
    summary = {k: v for k, v in report.items() if k != "predictions"}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    lines = ["| question type | accuracy | correct / total |", "|---|---|---|"]
    lines += [
        f"| {t} | {v['accuracy']:.1%} | {v['correct']} / {v['total']} |"
        for t, v in summary["by_type"].items()
    ]
    lines.append(f"| **all** | **{summary['accuracy']:.1%}** | {summary['examples']} examples |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
