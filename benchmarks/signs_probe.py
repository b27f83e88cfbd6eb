"""A quick probe while choosing a signs config: train on one question type, answer that type on `val`.

    python -m benchmarks.signs_probe --type has_text --steps 400 [--preset smollm2-135m]
        [--set model.expert_init=unit] [--no-aux] --out outputs/signs-probe/<name>   → <out>/probe.json

Run after `make signs-benchmark` (it reads that run's warehouse). One run of configs/train-signs.yaml
(or --config), seed 0, one thread, trained for `--steps` steps on questions of `--type` alone (the
train split), then exported and asked every `val` question of that type (greedy, as the benchmark
answers). `--preset` puts that preset's LLM in place of the tiny one, as `benchmarks.signs_step` does.
Written: val accuracy, the training losses, times and the load. Never touches the test split. Not in
`make bench`. `CONFIG_SEARCH` f1-f4 (benchmarks/signs.py) ran from a one-off script before this module
existed; this module builds the same training config, key for key (checked once against theirs).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml

from benchmarks.signs import (
    CONFIG,
    DATASET,
    _overrides,
    arm_config,
    build_items,
    corpus_key,
    run_arm,
    train_losses,
)
from benchmarks.signs_step import with_preset
from corpora.resolve import resolve_corpus
from trainer.config import claim_run_folder, resolve_config

DEFAULT_IN_MAKE_BENCH = False


def probe_config(base: dict, qtype: str, steps: int, warehouse: Path, out: Path, use_aux: bool) -> dict:
    """The probe's training config: a benchmark arm of `base` (seed 0) trained on `qtype` questions only
    for `steps` steps, in `out`/probe."""
    cfg = arm_config(base, "probe", use_aux, 0, warehouse, out)
    cfg["data"]["train_types"] = [qtype]
    cfg["trainer"]["max_steps"] = steps
    cfg["run"].update({"name": "probe", "out": str(out), "checkpoint_every": steps, "threads": 1})
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", required=True, help="the question type to train on and answer")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--preset", default=None, help="put this preset's LLM in place of the tiny one")
    parser.add_argument("--set", action="append", default=[], help="override, e.g. model.expert_init=unit")
    parser.add_argument("--no-aux", action="store_true", help="the aux input removed (model.use_aux false)")
    parser.add_argument("--warehouse", default="outputs/signs-warehouse", help="as `make signs-benchmark`'s")
    parser.add_argument("--out", default="outputs/signs-probe")
    args = parser.parse_args(argv)

    corpus = resolve_corpus(DATASET)
    warehouse = Path(args.warehouse) / corpus_key(corpus)
    if not warehouse.is_dir():
        raise SystemExit(f"signs_probe: no signs warehouse at {warehouse}: run `make signs-benchmark` first")
    items = [i for i in build_items(warehouse, corpus, "val")["eval"] if i["type"] == args.type]
    if not items:
        raise SystemExit(f"signs_probe: no val question of type {args.type!r}")
    base = resolve_config(args.config)
    if args.preset:
        base = with_preset(base, args.preset)
    for section, values in _overrides(args.set, None).items():
        base[section].update(values)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = probe_config(base, args.type, args.steps, warehouse, out, not args.no_aux)
    config, items_file = out / "config.yaml", out / "items.json"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    items_file.write_text(json.dumps({"probe": items}), encoding="utf-8")

    load = os.getloadavg()[0]
    run_dir = out / "probe"
    claim_run_folder(run_dir, overwrite=True)  # a rerun replaces the earlier probe
    run_arm([config], items_file, ("probe",), out)  # train, export, answer: as a benchmark arm does
    run = json.loads((out / "answers.json").read_text(encoding="utf-8"))
    answers = run["answers"]["probe"]
    correct = [a["correct"] for a in answers]
    report = {
        "benchmark": "signs_probe",
        "type": args.type,
        "steps": args.steps,
        "preset": cfg["model"].get("preset", "tiny"),
        "overrides": args.set,
        "use_aux": not args.no_aux,
        "val_accuracy": round(sum(correct) / len(correct), 4),
        "val_questions": len(correct),
        "train_s": round(run["train_s"], 1),
        "eval_s": round(run["eval_s"], 1),
        "load_average_1min_at_start": round(load, 2),
        "train_losses": train_losses(run_dir),
        "answers": [
            {"question": i["question"], "answer": i["answer"], "prediction": a["prediction"]}
            for i, a in zip(items, answers, strict=True)
        ],
    }
    (out / "probe.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("answers", "train_losses")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
