"""`make signs-benchmark`: does verbalized expert knowledge make the model answer better? End to end.

    generate the `signs` corpus → annotate it with the real OCR expert (jobs/signs.yaml)
    → train one model twice: (a) with the aux text, (b) with the aux input removed
    → export both → answer the test split (its words and numbers never occur in training)
    → outputs/signs/results.json, results.md, results.png

The comparison is fair by construction: both arms are the same YAML (`configs/train-signs.yaml`) with
only `model.use_aux` flipped, so architecture, parameter count, data order, steps and seed are equal.
The two runs train side by side, one core each (their step times are recorded so an imbalance shows).
A second invocation reuses the corpus and the warehouse's annotations (exactly-once ledger) and
retrains. Not part of plain `make bench` (it takes minutes): `python -m benchmarks signs` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

DEFAULT_IN_MAKE_BENCH = False  # benchmarks/__main__ skips it unless named
CONFIG = Path("configs/train-signs.yaml")
DATASET, TEST_SPLIT = "signs", "test"
ARMS = {"with_aux": True, "without_aux": False}
ARM_COLOURS = {"with_aux": "tab:blue", "without_aux": "tab:gray"}


def _moai(*args: str, log: Path | None = None) -> subprocess.Popen:
    """`moai …` in a child process (its own torch threads; stdout/stderr to `log` when given)."""
    out = open(log, "w", encoding="utf-8") if log else None  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args], stdout=out, stderr=subprocess.STDOUT if out else None
    )


def _wait(procs: dict[str, subprocess.Popen], logs: dict[str, Path] | None = None) -> None:
    failed = {name: p.wait() for name, p in procs.items()}
    failed = {name: rc for name, rc in failed.items() if rc}
    if failed:
        where = "; ".join(f"{n}: exit {rc}, log {logs[n] if logs else '(above)'}" for n, rc in failed.items())
        raise SystemExit(f"signs-benchmark: a step failed ({where})")


def arm_config(base: dict, arm: str, use_aux: bool, warehouse: Path, out: Path) -> dict:
    """The shared training config with only the aux switch (and where to write) changed."""
    cfg = json.loads(json.dumps(base))  # deep copy
    cfg.setdefault("model", {})["use_aux"] = use_aux
    cfg.setdefault("data", {}).update({"dataset": DATASET, "warehouse": str(warehouse)})
    cfg.setdefault("run", {}).update({"name": arm, "out": str(out / "train")})
    return cfg


def ocr_coverage(warehouse: Path, corpus) -> dict:
    """How much of the answer text the expert delivered: drawn sign texts found verbatim in the aux text."""
    from trainer.data import load_examples
    from warehouse.store import Warehouse

    aux = {r["image_id"]: r["aux_text"] for r in load_examples(Warehouse(warehouse), DATASET).to_pylist()}
    found = total = 0
    for split in corpus.splits:
        doc = json.loads(corpus.annotations_file(split).read_text(encoding="utf-8"))
        for a in doc["annotations"]:
            total += 1
            found += a["text"] in aux.get(a["image_id"], "").replace(",", " ").replace(".", " ").split()
    return {"sign_texts": total, "read_exactly": found, "fraction": round(found / max(total, 1), 4)}


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train_loss) rows from the run's own metrics.csv (none if the run logged nothing)."""
    import csv

    if not (run_dir / "metrics.csv").is_file():
        return []
    with open(run_dir / "metrics.csv", encoding="utf-8") as f:
        return [(int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(f) if r.get("train_loss")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks signs", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG), help="the shared training config of both arms")
    parser.add_argument("--out", default="outputs/signs")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps (smoke runs)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test questions")
    args = parser.parse_args(argv)

    from corpora.resolve import resolve_corpus
    from pipeline.instructions import import_instructions
    from trainer.config import resolve_config
    from trainer.evaluate import evaluate, model_answer_fn, write_report
    from trainer.export import export_run
    from warehouse.store import Warehouse

    out = Path(args.out)
    warehouse = out / "warehouse"
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    start = time.perf_counter()

    t = time.perf_counter()
    corpus = resolve_corpus(DATASET)  # generated on first use, deterministic from its seed
    times["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _wait({"annotate": _moai("annotate", "--dataset", DATASET, "--warehouse", str(warehouse))})
    times["annotate_s"] = time.perf_counter() - t

    base = resolve_config(args.config)
    if args.max_steps is not None:
        base["trainer"]["max_steps"] = args.max_steps
    configs = {arm: arm_config(base, arm, use_aux, warehouse, out) for arm, use_aux in ARMS.items()}
    import_instructions(Warehouse(warehouse), corpus)  # once here, so the two runs' imports find nothing new
    (out / "configs").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    logs = {arm: out / "logs" / f"train-{arm}.log" for arm in ARMS}
    procs = {}
    t = time.perf_counter()
    for arm, cfg in configs.items():
        path = out / "configs" / f"{arm}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        procs[arm] = _moai("train", "--config", str(path), log=logs[arm])
    _wait(procs, logs)
    times["train_s"] = time.perf_counter() - t

    reports = {}
    t = time.perf_counter()
    for arm, use_aux in ARMS.items():
        exported = export_run(out / "train" / arm, out / "export" / arm)
        report = evaluate(
            model_answer_fn(exported), warehouse, DATASET, [TEST_SPLIT], limit=args.limit, use_aux=use_aux
        )
        write_report(report, out / "eval" / arm)
        reports[arm] = report
    times["eval_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - start

    results = summarize(reports, configs, times, ocr_coverage(warehouse, corpus), out)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (out / "results.md").write_text(results_table(results), encoding="utf-8")
    plot(results, out)
    print(results_table(results))
    print(f"written to {out}/results.json, results.md, results.png")
    return 0


def _last_step(run_dir: Path) -> int:
    """Optimizer steps the run took: its last logged step + 1."""
    losses = train_losses(run_dir)
    return losses[-1][0] + 1 if losses else 0


def summarize(reports: dict, configs: dict, times: dict, coverage: dict, out: Path) -> dict:
    import torch

    with_aux, without = reports["with_aux"], reports["without_aux"]
    types = sorted(set(with_aux["by_type"]) | set(without["by_type"]))
    return {
        "dataset": DATASET,
        "split": TEST_SPLIT,
        "examples": with_aux["examples"],
        "with_aux": with_aux["accuracy"],
        "without_aux": without["accuracy"],
        "difference_points": round(100 * (with_aux["accuracy"] - without["accuracy"]), 1),
        "by_type": {
            t: {arm: reports[arm]["by_type"].get(t, {}).get("accuracy") for arm in ARMS} for t in types
        },
        "counts_by_type": {t: with_aux["by_type"].get(t, {}).get("total") for t in types},
        "ocr_coverage": coverage,
        "seeds": {"seed_everything": configs["with_aux"].get("seed_everything"), "corpus": 0},
        "steps": {arm: _last_step(out / "train" / arm) for arm in ARMS},
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "config": configs["with_aux"],
        "only_difference": "model.use_aux (true for with_aux, false for without_aux)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def results_table(results: dict) -> str:
    lines = [
        "| question type | questions | with aux | without aux | difference |",
        "|---|---:|---:|---:|---:|",
    ]
    for t, accs in results["by_type"].items():
        a, b = accs["with_aux"] or 0.0, accs["without_aux"] or 0.0
        lines.append(
            f"| {t} | {results['counts_by_type'][t]} | {a:.1%} | {b:.1%} | {100 * (a - b):+.1f} pts |"
        )
    lines.append(
        f"| **all** | {results['examples']} | **{results['with_aux']:.1%}** | "
        f"**{results['without_aux']:.1%}** | **{results['difference_points']:+.1f} pts** |"
    )
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> None:
    """Accuracy by question type (both arms) and the two training-loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.train import moving_average

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
    types = list(results["by_type"])
    width = 0.38
    for i, (arm, colour) in enumerate(ARM_COLOURS.items()):
        values = [100 * (results["by_type"][t][arm] or 0.0) for t in types]
        xs = [x + (i - 0.5) * width for x in range(len(types))]
        bars.bar(xs, values, width, label=f"{arm} ({100 * results[arm]:.1f}% overall)", color=colour)
    bars.set_xticks(range(len(types)), types, rotation=15)
    bars.set_ylabel("exact-match accuracy on the test split (%)")
    bars.set_ylim(0, 100)
    bars.legend(loc="upper right", fontsize=8)
    bars.set_title(f"signs: with vs without aux text ({results['difference_points']:+.1f} points)")
    for arm, colour in ARM_COLOURS.items():
        rows = train_losses(out / "train" / arm)
        if not rows:
            continue
        steps, losses = zip(*rows, strict=True)
        curves.plot(steps, losses, color=colour, alpha=0.25)
        curves.plot(steps, moving_average(losses, max(1, len(losses) // 15)), color=colour, label=arm)
    curves.set_xlabel("step")
    curves.set_ylabel("training loss (answer tokens, nats)")
    curves.legend()
    curves.set_title("training curves (same seed, data order, steps)")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
