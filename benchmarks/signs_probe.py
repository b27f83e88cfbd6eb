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
import time
from pathlib import Path

import torch
import yaml

from benchmarks.signs import CONFIG, DATASET, _overrides, build_items, corpus_key, train_losses
from benchmarks.signs_step import with_preset
from corpora.resolve import resolve_corpus
from trainer.config import resolve_config

DEFAULT_IN_MAKE_BENCH = False


def probe_config(base: dict, qtype: str, steps: int, warehouse: Path, out: Path, use_aux: bool) -> dict:
    """The probe's training config: `base` trained on `qtype` questions only for `steps` steps, seed 0."""
    cfg = json.loads(json.dumps(base))
    cfg["seed_everything"] = 0
    cfg["model"].update({"use_aux": use_aux, "seed": 0})
    cfg["data"].update({"dataset": DATASET, "warehouse": str(warehouse), "seed": 0, "train_types": [qtype]})
    cfg["trainer"]["max_steps"] = steps
    cfg["run"] = {**cfg["run"], "name": "probe", "out": str(out), "checkpoint_every": steps, "threads": 1}
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

    from trainer.evaluate import is_correct
    from trainer.export import export_run, generate_answers, load_data_config, load_exported, load_tokenizer
    from trainer.train import train

    torch.set_num_threads(1)
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
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")

    load = os.getloadavg()[0]
    started = time.perf_counter()
    run_dir = train(out / "config.yaml", overwrite=True)
    trained = time.perf_counter()
    exported = export_run(run_dir, out / "export")
    model, tokenizer, data_cfg = load_exported(exported), load_tokenizer(exported), load_data_config(exported)
    use = [(i["question"], i["image"], i["aux"] if model.config.use_aux else "") for i in items]
    predictions = generate_answers(model, use, tokenizer, data_cfg, max_new_tokens=8, images={})
    correct = [bool(is_correct(p, i["answer"])) for p, i in zip(predictions, items, strict=True)]
    report = {
        "benchmark": "signs_probe",
        "type": args.type,
        "steps": args.steps,
        "preset": cfg["model"].get("preset", "tiny"),
        "overrides": args.set,
        "use_aux": not args.no_aux,
        "val_accuracy": round(sum(correct) / len(correct), 4),
        "val_questions": len(correct),
        "train_s": round(trained - started, 1),
        "eval_s": round(time.perf_counter() - trained, 1),
        "load_average_1min_at_start": round(load, 2),
        "train_losses": train_losses(run_dir),
        "answers": [
            {"question": i["question"], "answer": i["answer"], "prediction": p}
            for i, p in zip(items, predictions, strict=True)
        ],
    }
    (out / "probe.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("answers", "train_losses")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
