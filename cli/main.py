"""The `moai` command line: a table of commands, each only parsing its arguments, calling one function
of the package it belongs to, and printing. Heavy imports (torch, ray, lightning) happen inside them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.paths import DEFAULT_WAREHOUSE


# ------------------------------------------------------------------------------ the annotation half
def datasets(a) -> int:
    from corpora.resolve import resolve_corpus

    corpus = resolve_corpus(a.dataset, images=a.images)
    counts = {split: sum(1 for _ in corpus.images([split])) for split in corpus.splits}
    for split, n in counts.items():
        print(f"{corpus.name}\t{split}\t{n} images\t{corpus.image_dir(split)}")
    return 0 if sum(counts.values()) else 1


def annotate(a) -> int:
    from pipeline.annotate import annotate

    return annotate(
        a.dataset, images=a.images, profile=a.profile, warehouse=a.warehouse, limit=a.limit,
        allow_random_weights=a.allow_random_weights, commit_every=a.commit_every, executor=a.executor,
        retry_errors=a.retry_errors,
    )  # fmt: skip


def plan(a) -> int:
    from pipeline.annotate import plan

    estimate = plan(
        a.dataset, images=a.images, profile=a.profile, warehouse=a.warehouse, limit=a.limit,
        allow_random_weights=a.allow_random_weights, executor=a.executor, retry_errors=a.retry_errors,
        probe=not a.no_probe,
    )  # fmt: skip
    print("\n".join(estimate.lines()))
    return 0


def verbalize(a) -> int:
    from pipeline.reverbalize import reverbalize
    from warehouse.store import Warehouse

    given = {
        "segmentation_threshold": a.segmentation_threshold,
        "detection_threshold": a.detection_threshold,
        "sgg_top_k": a.sgg_top_k,
        "sgg_threshold": a.sgg_threshold,
        "ocr_threshold": a.ocr_threshold,
        "include_unlabeled": a.include_unlabeled or None,
    }
    reverbalize(Warehouse(a.warehouse), a.dataset, {k: v for k, v in given.items() if v is not None})
    return 0


# ------------------------------------------------------------------------------ the warehouse
def sql(a) -> int:
    import duckdb

    from warehouse.sql import run_query, shell
    from warehouse.store import Warehouse

    if a.shell or not a.query:
        return shell(Warehouse(a.warehouse))
    try:
        return run_query(Warehouse(a.warehouse), a.query, a.format)
    except duckdb.Error as err:
        raise UserError(f"query failed: {err}") from None


def warehouse(a) -> int:
    from warehouse.check import check, repair
    from warehouse.store import Warehouse

    wh = Warehouse(a.warehouse)
    if a.action == "compact":  # also upgrades files written before they carried their dataset column
        print(f"{wh.compact(min_files=1)} files merged into fewer; replaced files stay readable for an hour")
        return 0
    report = check(wh)
    print("\n".join(report.lines()))
    if a.action == "check" or report.ok:
        return 0 if report.ok else 1
    question = (
        "Move unreadable and unaccounted files to _quarantine/ (nothing is deleted), forget the ledger keys "
        "whose rows are lost so the next `moai annotate` redoes them, and drop rows that have no key? [y/N] "
    )
    if not a.yes and input(question).strip().lower() not in ("y", "yes"):
        print("nothing changed")
        return 1
    repair(wh)
    after = check(wh)
    print("after repair: " + "; ".join(after.lines()))
    return 0 if after.ok else 1


def viz(a) -> int:
    from warehouse.viz import viz

    print(viz(a.dataset, a.image, Path(a.out) if a.out else None, a.warehouse, min_score=a.min_score))
    return 0


def export_coco(a) -> int:
    from warehouse.export import export_coco
    from warehouse.store import Warehouse

    counts = export_coco(Warehouse(a.warehouse), a.dataset, Path(a.out), unlabeled=a.unlabeled)
    print(" ".join(f"{k}={v}" for k, v in counts.items()), f"-> {a.out}")
    return 0


# ------------------------------------------------------------------------------ the training half
def train(a) -> int:
    from trainer.config import check_before_training

    # a config error or a used run folder is refused before the trainer's imports (Lightning: ~8 s)
    check_before_training(a.config, a.resume, a.overwrite)
    from trainer.train import train

    print(f"run folder: {train(a.config, resume=a.resume, overwrite=a.overwrite)}")
    return 0


def cache(a) -> int:
    from trainer.train import cache_for_config

    for fill in cache_for_config(a.config, a.dataset, a.warehouse, a.batch_size, a.device):
        print(fill)
    return 0


def export_model(a) -> int:
    from trainer.export import export_run

    print(export_run(a.run, a.out))
    return 0


def generate(a) -> int:
    from trainer.export import answer_about

    print(answer_about(a.model, a.dataset, a.image, a.question, a.warehouse))
    return 0


def evaluate(a) -> int:
    from trainer.evaluate import evaluate, model_answer_fn, write_report

    report = evaluate(
        model_answer_fn(a.model), a.warehouse, a.dataset, a.split or None, a.limit, use_aux=not a.no_aux
    )
    out = Path(a.out or Path("outputs") / "eval" / f"{a.dataset}-{Path(a.model).name}")
    write_report(report, out)
    print((out / "results.md").read_text(), end="")
    print(f"written to {out}")
    return 0


# ------------------------------------------------------------------------------ arguments
def _warehouse(p) -> None:
    p.add_argument(
        "--warehouse", default=str(DEFAULT_WAREHOUSE), help="warehouse folder (default %(default)s)"
    )


def _dataset(p) -> None:
    p.add_argument("--dataset", default="sample")


def _datasets_args(p) -> None:
    _dataset(p)
    p.add_argument("--images", help="register this folder of images under the dataset name")


def _annotate_args(p) -> None:
    _dataset(p)
    p.add_argument("--images", help="register this folder of images under the dataset name first")
    p.add_argument("--profile", default=None, help="expert profile (configs/profiles/<name>.yaml, or a path)")
    _warehouse(p)
    p.add_argument("--limit", type=int, default=None, help="annotate at most this many images")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="let experts without pretrained weights run with random init (recorded per row)")  # fmt: skip
    p.add_argument("--commit-every", type=int, default=None, help="images per warehouse commit (job default)")
    p.add_argument("--executor", choices=["ray", "local"], default=None,
                   help="ray (default: a local Ray runtime, or the cluster in RAY_ADDRESS) or local (one process)")  # fmt: skip
    p.add_argument("--retry-errors", action="store_true",
                   help="try again the images and experts that failed in earlier runs (e.g. a file fixed since)")  # fmt: skip


def _plan_args(p) -> None:
    _annotate_args(p)
    p.add_argument("--no-probe", action="store_true", help="estimate from this warehouse's history only")


def _verbalize_args(p) -> None:
    _dataset(p)
    _warehouse(p)
    for flag in ("segmentation", "detection", "sgg", "ocr"):
        p.add_argument(f"--{flag}-threshold", type=float, default=None)
    p.add_argument("--sgg-top-k", type=int, default=None)
    p.add_argument("--include-unlabeled", action="store_true")


def _sql_args(p) -> None:
    p.add_argument("query", nargs="?", help="SQL to run (omit for an interactive session)")
    p.add_argument("--format", choices=["table", "csv"], default="table")
    p.add_argument("--shell", action="store_true", help="interactive read-only session")
    _warehouse(p)


def _warehouse_args(p) -> None:
    p.add_argument("action", choices=["check", "repair", "compact"])
    p.add_argument("--yes", action="store_true", help="repair without asking")
    _warehouse(p)


def _viz_args(p) -> None:
    p.add_argument("image", help="file name, stem or image id")
    _dataset(p)
    p.add_argument("--out", default=None, help="PNG path (default outputs/viz/<dataset>/<stem>.png)")
    p.add_argument("--min-score", type=float, default=0.3, help="hide detections scoring below this")
    _warehouse(p)


def _export_coco_args(p) -> None:
    _dataset(p)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--unlabeled", choices=("void", "stuff"), default="void",
        help="panoptic export of SAM regions no detector labeled: void pixels (default), or one stuff "
        "segment per image of category 201 'unlabeled' (panopticapi's PQ then has a stuff row)",
    )  # fmt: skip
    _warehouse(p)


def _train_args(p) -> None:
    p.add_argument("--config", default="configs/train-tiny.yaml")
    p.add_argument("--resume", default=None, help="a checkpoint to resume from (exact mid-epoch)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in the same run folder (its checkpoints, metrics, logs and plots)",
    )


def _cache_args(p) -> None:
    p.add_argument("--config", default="configs/train-tiny.yaml", help="the training config to cache for")
    p.add_argument("--dataset", default=None, help="dataset (default: the config's data.dataset)")
    p.add_argument("--warehouse", default=None, help="warehouse folder (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="images per vision-tower call")
    p.add_argument("--device", default=None, help="where the vision tower runs (default: cuda if available)")


def _export_model_args(p) -> None:
    p.add_argument("--run", required=True, help="a training run folder (outputs/train/<run>)")
    p.add_argument("--out", required=True)


def _generate_args(p) -> None:
    p.add_argument("--model", required=True, help="a folder written by `moai export-model`")
    _dataset(p)
    p.add_argument("--image", required=True, help="file name, stem or image id")
    p.add_argument("--question", required=True)
    _warehouse(p)


def _eval_args(p) -> None:
    p.add_argument(
        "--model", default="outputs/export/tiny-sample", help="a folder written by `moai export-model`"
    )
    _dataset(p)
    p.add_argument("--split", action="append", help="only these splits (repeatable)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--no-aux", action="store_true", help="answer without the aux text")
    _warehouse(p)
    p.add_argument("--out", default=None, help="report folder (default outputs/eval/<dataset>-<model>)")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS = [
    Command("datasets", "resolve a dataset (building `sample` if needed) and list its splits", _datasets_args,
            datasets),
    Command("plan", "what `moai annotate` with these arguments would do, and an estimate of its time and disk",
            _plan_args, plan),
    Command("annotate", "run the expert models over a corpus into the warehouse", _annotate_args, annotate),
    Command("verbalize", "write a new aux_text version from stored rows (no model runs)", _verbalize_args, verbalize),
    Command("sql", "query the warehouse: one statement, or an interactive read-only session", _sql_args, sql),
    Command("warehouse", "check the warehouse's files and ledger, repair them, or compact them", _warehouse_args,
            warehouse),
    Command("viz", "draw one image's current records to a PNG", _viz_args, viz),
    Command("export-coco", "write a dataset's current records as COCO files (instances, detections and "
            "segmentations results, panoptic)",
            _export_coco_args, export_coco),
    Command("train", "train the MoAI Compressor and Mixer on the warehouse", _train_args, train),
    Command("cache", "fill the trainer's warehouse caches (aux token ids, frozen vision features)", _cache_args, cache),
    Command("export-model", "export a training run's trained weights as a loadable model folder",
            _export_model_args, export_model),
    Command("generate", "answer a question about a warehouse image with an exported model", _generate_args, generate),
    Command("eval", "exact-match accuracy of an exported model over a QA table, by question type", _eval_args, evaluate),
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moai", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as err:
        print(f"moai {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"moai {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
