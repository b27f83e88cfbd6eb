"""The `moai` command line. Heavy imports (torch, ray, lightning) happen inside the subcommands."""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import UserError


def _cmd_datasets(args: argparse.Namespace) -> int:
    from pipeline.corpus import resolve_corpus

    corpus = resolve_corpus(args.dataset, images=args.images)
    n = 0
    for split in corpus.splits:
        count = sum(1 for _ in corpus.images([split]))
        n += count
        print(f"{corpus.name}\t{split}\t{count} images\t{corpus.image_dir(split)}")
    return 0 if n else 1


def _cmd_annotate(args: argparse.Namespace) -> int:
    from pipeline.annotate import annotate

    return annotate(args)


def _cmd_sql(args: argparse.Namespace) -> int:
    from warehouse.sql import run_query, shell
    from warehouse.store import Warehouse

    wh = Warehouse(args.warehouse or "outputs/warehouse")
    if args.shell or not args.query:
        return shell(wh)
    import duckdb

    try:
        return run_query(wh, args.query, args.format)
    except duckdb.Error as err:
        raise UserError(f"query failed: {err}") from None


def _cmd_warehouse(args: argparse.Namespace) -> int:
    from warehouse.check import check, repair
    from warehouse.store import Warehouse

    wh = Warehouse(args.warehouse or "outputs/warehouse")
    report = check(wh)
    print("\n".join(report.lines()))
    if args.action == "check" or report.ok:
        return 0 if report.ok else 1
    if not args.yes:
        answer = input(
            "Move unreadable and unaccounted files to _quarantine/ (nothing is deleted), forget the ledger "
            "keys whose rows are lost so the next `moai annotate` redoes them, and drop rows that have no "
            "key? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    repair(wh)
    after = check(wh)
    print("after repair: " + "; ".join(after.lines()))
    return 0 if after.ok else 1


def _cmd_viz(args: argparse.Namespace) -> int:
    from pathlib import Path

    from warehouse.viz import viz

    out = viz(
        args.dataset,
        args.image,
        Path(args.out) if args.out else None,
        args.warehouse or "outputs/warehouse",
        min_score=args.min_score,
    )
    print(out)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.format == "run":
        from trainer.export import export_run

        if not args.run:
            raise UserError("moai export run needs --run outputs/train/<run>")
        print(export_run(args.run, args.out))
        return 0
    from warehouse.export import export_coco
    from warehouse.store import Warehouse

    counts = export_coco(Warehouse(args.warehouse or "outputs/warehouse"), args.dataset, Path(args.out))
    print(" ".join(f"{k}={v}" for k, v in counts.items()), f"-> {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from trainer.train import train

    run_dir = train(args.config, resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    import torch

    from trainer.cache import fill_caches
    from trainer.train import build, prepare_instructions, resolve_config

    data = {"dataset": args.dataset, "warehouse": args.warehouse}
    cfg = resolve_config(args.config, {"data": {k: v for k, v in data.items() if v is not None}})
    if args.batch_size:
        cfg["data"]["batch_size"] = args.batch_size  # the tower's batch here; training is not run
    if cfg["run"].get("threads"):
        torch.set_num_threads(int(cfg["run"]["threads"]))
    module, datamodule, _, dcfg = build(cfg)
    prepare_instructions(dcfg)  # the vision cache covers the images that instructions use
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for fill in fill_caches(module.model, datamodule.tokenizer, dcfg, device, only_enabled=False):
        print(fill)
    return 0


def _cmd_verbalize(args: argparse.Namespace) -> int:
    from pipeline.reverbalize import reverbalize
    from warehouse.store import Warehouse

    thresholds = {
        k: v
        for k, v in {
            "segmentation_threshold": args.segmentation_threshold,
            "detection_threshold": args.detection_threshold,
            "sgg_top_k": args.sgg_top_k,
            "sgg_threshold": args.sgg_threshold,
            "ocr_threshold": args.ocr_threshold,
            "include_unlabeled": args.include_unlabeled or None,
        }.items()
        if v is not None
    }
    reverbalize(Warehouse(args.warehouse or "outputs/warehouse"), args.dataset, thresholds)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.corpus import resolve_corpus
    from trainer.export import generate_answer, load_data_config, load_exported, load_tokenizer
    from warehouse.store import Warehouse

    corpus = resolve_corpus(args.dataset)
    ref = next(
        (r for r in corpus.images() if args.image in (r.file_name, Path(r.file_name).stem, str(r.image_id))),
        None,
    )
    if ref is None:
        raise UserError(f"No image '{args.image}' in dataset '{args.dataset}'.")
    aux = (
        Warehouse(args.warehouse or "outputs/warehouse")
        .query(
            "SELECT text FROM aux_text WHERE dataset = ? AND image_id = ? ORDER BY run_id DESC LIMIT 1",
            [args.dataset, ref.image_id],
        )
        .to_pylist()
    )
    model = load_exported(args.model)
    answer = generate_answer(
        model,
        args.question,
        ref.path,
        aux[0]["text"] if aux else "",
        load_tokenizer(args.model),
        load_data_config(args.model),
    )
    print(answer)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainer.evaluate import evaluate, model_answer_fn, write_report

    if not Path(args.model, "export.json").is_file():
        raise UserError(
            f"{args.model} is not an exported model; train one (make train) and export it with "
            "`moai export run --run outputs/train/<run> --out <folder>`."
        )
    report = evaluate(
        model_answer_fn(args.model),
        args.warehouse or "outputs/warehouse",
        args.dataset,
        args.split or None,
        args.limit,
        use_aux=not args.no_aux,
    )
    out = Path(args.out or Path("outputs") / "eval" / f"{args.dataset}-{Path(args.model).name}")
    write_report(report, out)
    print((out / "results.md").read_text(), end="")
    print(f"written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moai", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="resolve a dataset (building `sample` if needed) and list its splits")
    p.add_argument("--dataset", default="sample")
    p.add_argument("--images", help="register this folder of images under the dataset name")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("annotate", help="run the expert models over a corpus into the warehouse")
    p.add_argument("--dataset", default="sample")
    p.add_argument("--images", help="register this folder of images under the dataset name first")
    p.add_argument("--profile", default=None, help="expert profile (configs/profiles/<name>.yaml)")
    p.add_argument("--warehouse", default=None, help="warehouse folder (default outputs/warehouse)")
    p.add_argument("--limit", type=int, default=None, help="annotate at most this many images")
    p.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="let experts without pretrained weights run with random init (recorded per row)",
    )
    p.add_argument("--commit-every", type=int, default=None, help="images per warehouse commit (job default)")
    p.add_argument(
        "--executor",
        choices=["ray", "local"],
        default=None,
        help="ray (default: a local Ray runtime, or the cluster in RAY_ADDRESS) or local (one process)",
    )
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="try again the images and experts that failed in earlier runs (e.g. a file fixed since)",
    )
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("sql", help="query the warehouse: one statement, or an interactive read-only session")
    p.add_argument("query", nargs="?", help="SQL to run (omit for an interactive session)")
    p.add_argument("--format", choices=["table", "csv"], default="table")
    p.add_argument("--shell", action="store_true", help="interactive read-only session")
    p.add_argument("--warehouse", default=None, help="warehouse folder (default outputs/warehouse)")
    p.set_defaults(func=_cmd_sql)

    p = sub.add_parser("warehouse", help="check the warehouse's files and ledger, or repair them")
    p.add_argument("action", choices=["check", "repair"])
    p.add_argument("--yes", action="store_true", help="repair without asking")
    p.add_argument("--warehouse", default=None, help="warehouse folder (default outputs/warehouse)")
    p.set_defaults(func=_cmd_warehouse)

    p = sub.add_parser("viz", help="draw one image's stored records to a PNG")
    p.add_argument("image", help="file name, stem or image id")
    p.add_argument("--dataset", default="sample")
    p.add_argument("--out", default=None, help="PNG path (default outputs/viz/<dataset>/<stem>.png)")
    p.add_argument("--min-score", type=float, default=0.3, help="hide detections scoring below this")
    p.add_argument("--warehouse", default=None)
    p.set_defaults(func=_cmd_viz)

    p = sub.add_parser("export", help="write the warehouse as COCO files (instances, detections, panoptic)")
    p.add_argument(
        "format", choices=["coco", "run"], help="coco: the warehouse as COCO files; run: a trained model"
    )
    p.add_argument("--run", default=None, help="run folder (export run)")
    p.add_argument("--dataset", default="sample")
    p.add_argument("--out", required=True)
    p.add_argument("--warehouse", default=None)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("train", help="train the MoAI Compressor and Mixer on the warehouse")
    p.add_argument("--config", default="configs/train-tiny.yaml")
    p.add_argument("--resume", default=None, help="a checkpoint to resume from (exact mid-epoch)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "cache",
        help="fill the trainer's warehouse caches (aux token ids, frozen vision features) for a config",
    )
    p.add_argument("--config", default="configs/train-tiny.yaml", help="the training config to cache for")
    p.add_argument("--dataset", default=None, help="dataset (default: the config's data.dataset)")
    p.add_argument("--warehouse", default=None, help="warehouse folder (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="images per vision-tower call")
    p.add_argument("--device", default=None, help="where the vision tower runs (default: cuda if available)")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("verbalize", help="write a new aux_text version from stored rows (no model runs)")
    p.add_argument("--dataset", default="sample")
    p.add_argument("--warehouse", default=None)
    for flag in ("segmentation", "detection", "sgg", "ocr"):
        p.add_argument(f"--{flag}-threshold", type=float, default=None)
    p.add_argument("--sgg-top-k", type=int, default=None)
    p.add_argument("--include-unlabeled", action="store_true")
    p.set_defaults(func=_cmd_verbalize)

    p = sub.add_parser("generate", help="answer a question about a warehouse image with an exported model")
    p.add_argument("--model", required=True, help="a folder written by `moai export run`")
    p.add_argument("--dataset", default="sample")
    p.add_argument("--image", required=True, help="file name, stem or image id")
    p.add_argument("--question", required=True)
    p.add_argument("--warehouse", default=None)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser(
        "eval", help="exact-match accuracy of an exported model over a QA table, by question type"
    )
    p.add_argument(
        "--model", default="outputs/export/tiny-sample", help="a folder written by `moai export run`"
    )
    p.add_argument("--dataset", default="sample")
    p.add_argument("--split", action="append", help="only these splits (repeatable)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--no-aux", action="store_true", help="answer without the aux text")
    p.add_argument("--warehouse", default=None)
    p.add_argument("--out", default=None, help="report folder (default outputs/eval/<dataset>-<model>)")
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"moai {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"moai {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
