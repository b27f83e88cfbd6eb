"""The driver at scale: registration, planning, committing and the nothing-to-do rerun at N images.

    python -m benchmarks.scale [--sizes 10000,100000] [--out outputs/bench]   → outputs/bench/scale.json
    python -m benchmarks.scale --sizes 1000000 --steps register,plan,fill,rerun   (1M: opt-in, ~2 min)

SYNTHETIC: the corpus is N hard links to one 8x8 PNG (distinct names in folders of 10,000), and the
configuration is the cheap OCR-only profile `signs-ocr`. The experts do not run: the commit step
feeds every planned row through the Ray job's real write path with the expert's identity and "nothing
found" as its output: the worker's share (`stage_on_worker`, the Ray job's own last step: expert rows,
verbalizer, aux rows, then `Warehouse.stage`, every `commit_every` images) timed apart, and the driver's
share (`Committer.publish`: the key check and the manifest update, a compaction of small files every
64 commits; a last compaction at the end) as the commit rate. So the numbers are the driver's own
costs, what stays when the experts scale out on a cluster:

- register: `moai` registering the folder the first time (one header read per file, in parallel);
- plan: `moai plan --no-probe` over the registered folder (re-registration: a stat per file; then the
  DuckDB anti-join of the listing against the ledger, spooled to Parquet), nothing annotated yet;
- commit: images and rows the driver commits per second, files written (before and after compaction),
  and apart, the seconds the workers spent making and writing the rows;
- rerun: `moai annotate` when everything is done (re-registration, planning, nothing to run).

At 1M the commit step takes most of an hour on 2 cores; `--steps register,plan,fill,rerun` fills the
ledger in bulk instead (`fill`: one commit per 100,000 images with the keys a run writes) to measure
the nothing-to-do rerun there.

Each step runs in its own process; its peak RSS (ru_maxrss) is the driver's. Run it on a quiet machine:
the load average before each step is in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILE = "signs-ocr"
SIZES = (10_000, 100_000)
PER_FOLDER = 10_000


def make_folder(folder: Path, n: int) -> None:
    """n hard links to a tiny PNG (same bytes, distinct names), PER_FOLDER per subfolder, each linking
    its own hidden copy (a file system caps the links per file: 65,000 on ext4)."""
    import io

    from PIL import Image

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(png, format="PNG")
    source = None
    for i in range(n):
        sub = folder / f"d{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            sub.mkdir()
            source = sub / ".source.png"  # hidden: not listed
            source.write_bytes(png.getvalue())
        os.link(source, sub / f"img_{i:08d}.png")


# --------------------------------------------------------------------------------------------- steps
def _cli(args: list[str]) -> int:
    from cli.main import main

    return main(args)


def step_register(name: str, folder: str, wh: str) -> dict:
    from corpora.resolve import resolve_corpus

    corpus = resolve_corpus(name, images=folder)
    return {"images": sum(1 for _ in corpus.images())}


def step_plan(name: str, folder: str, wh: str) -> dict:
    args = [
        "plan",
        "--dataset",
        name,
        "--images",
        folder,
        "--profile",
        PROFILE,
        "--warehouse",
        wh,
        "--no-probe",
    ]
    return {"rc": _cli(args)}


def step_rerun(name: str, folder: str, wh: str) -> dict:
    """`moai annotate` over a warehouse that holds everything: it must find nothing to do."""
    from warehouse.store import Warehouse

    args = ["annotate", "--dataset", name, "--images", folder, "--profile", PROFILE, "--warehouse", wh]
    rc = _cli(args)
    last = (
        Warehouse(wh)
        .query(
            "SELECT images_listed, images_processed FROM runs WHERE dataset = ? ORDER BY finished_at DESC LIMIT 1",
            [name],
        )
        .to_pylist()[0]
    )
    return {"rc": rc, "listed": last["images_listed"], "processed": last["images_processed"]}


def step_commit(name: str, folder: str, wh_path: str) -> dict:
    """Every planned image through the Ray job's write-and-commit path, the expert's output being
    'nothing found': the rows made and staged as a worker does (`worker_s`, apart), then published by
    the driver's commits (`commit_s`, the rates)."""
    import pyarrow as pa

    from corpora.decode import decode_image
    from corpora.resolve import resolve_corpus
    from pipeline.annotate import Committer, run_tag, stage_on_worker
    from pipeline.plan import make_plan
    from pipeline.profiles import load_job, load_profile, plan_hashes
    from pipeline.stages import ExpertStage
    from verbalize.aux import aux_hash, verbalizer_hash
    from warehouse.store import Warehouse

    corpus = resolve_corpus(name, images=folder)
    profile, job, wh = load_profile(PROFILE), load_job(name), Warehouse(wh_path)
    hashes = plan_hashes(profile)
    vhash = verbalizer_hash(profile.verbalize)
    aux_key = aux_hash(vhash, hashes)
    identity = {n: ExpertStage(n, c).identity_json for n, c in profile.experts.items()}
    first = next(corpus.images())
    decoded = decode_image(first.path)
    decode = {"width": int(decoded.image.shape[1]), "height": int(decoded.image.shape[0]),
              "source_mode": decoded.source_mode, "exif_rotated": bool(decoded.exif_rotated),
              "frames": int(decoded.frames)}  # fmt: skip
    plan = make_plan(corpus, profile, hashes, wh, aux_key, wh.root / "_plans" / "bench", "bench-scale")
    rows_written, worker_s, committed_s = 0, 0.0, 0.0
    committer = Committer(wh, job.commit_every)
    worker = {"root": str(wh.root.resolve()), "tag": run_tag(name, "bench"), "profile": profile,
              "hashes": hashes, "run_id": "bench-scale", "vhash": vhash, "aux_key": aux_key}  # fmt: skip
    batch: list[dict] = []
    for i, row in enumerate(plan.rows(), 1):
        row.update(decode)
        for n in profile.experts:
            row[f"{n}_records"], row[f"{n}_identity"] = "[]", identity[n]
        batch.append(row)
        if len(batch) == job.commit_every or i == plan.count:
            t = time.perf_counter()
            summary = stage_on_worker(pa.Table.from_pylist(batch), **worker).to_pylist()  # a worker's share
            worker_s += time.perf_counter() - t
            rows_written += sum(sum(json.loads(r["row_counts"]).values()) for r in summary)
            t = time.perf_counter()
            committer.publish(json.loads(summary[0]["staged"]))  # the driver's share
            committed_s += time.perf_counter() - t
            batch = []
    files_before = sum(len(v) for v in wh.manifest()["tables"].values())
    t = time.perf_counter()
    wh.compact()
    plan.remove()
    wh.remove_incoming(worker["tag"])
    return {
        "images": plan.count,
        "commits": committer.commits,
        "commit_every": job.commit_every,
        "rows": rows_written,
        "worker_s": round(worker_s, 2),
        "commit_s": round(committed_s, 2),
        "rows_per_s": round(rows_written / committed_s, 1) if committed_s else None,
        "images_per_s": round(plan.count / committed_s, 1) if committed_s else None,
        "files_before_compaction": files_before,
        "compact_s": round(time.perf_counter() - t, 2),
        "files_after_compaction": sum(len(v) for v in wh.manifest()["tables"].values()),
    }


def step_fill(name: str, folder: str, wh_path: str) -> dict:
    """The `done` ledger filled in bulk (one commit per 100,000 images) with exactly the keys a run of
    PROFILE writes: the input of a nothing-to-do rerun at sizes where the commit step takes too long.
    Not a commit-throughput figure."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from corpora.resolve import resolve_corpus
    from pipeline.profiles import load_profile, plan_hashes
    from verbalize.aux import aux_hash, verbalizer_hash
    from warehouse.schema import DECODE_KEY
    from warehouse.store import Warehouse

    corpus, profile, wh = resolve_corpus(name, images=folder), load_profile(PROFILE), Warehouse(wh_path)
    hashes = plan_hashes(profile)
    keys = [
        ("decode", DECODE_KEY),
        *hashes.items(),
        ("aux", aux_hash(verbalizer_hash(profile.verbalize), hashes)),
    ]
    n = 0
    for _, _, listing in corpus.listings():
        for batch in pq.ParquetFile(listing).iter_batches(batch_size=100_000, columns=["id"]):
            ids = batch.column("id")
            m = len(ids)
            wh.commit({"done": pa.table({
                "dataset": pa.array([name] * m * len(keys)),
                "image_id": pa.concat_arrays([ids] * len(keys)),
                "expert": pa.array([e for e, _ in keys for _ in range(m)]),
                "config_hash": pa.array([h for _, h in keys for _ in range(m)]),
                "status": pa.array(["ok"] * m * len(keys)),
                "n_records": pa.array([0] * m * len(keys), pa.int32()),
                "seconds": pa.array([0.0] * m * len(keys), pa.float32()),
                "run_id": pa.array(["bench-fill"] * m * len(keys)),
            })})  # fmt: skip
            n += m
    return {"images": n, "done_rows": n * len(keys)}


STEPS = {"register": step_register, "plan": step_plan, "commit": step_commit, "rerun": step_rerun}
EXTRA_STEPS = {"fill": step_fill}


def _child(step: str, name: str, folder: str, wh: str) -> None:
    start = time.perf_counter()
    out = {**STEPS, **EXTRA_STEPS}[step](name, folder, wh)
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("RESULT " + json.dumps(out), flush=True)


def run_step(step: str, name: str, folder: Path, wh: Path, env: dict) -> dict:
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--child", step, name, str(folder), str(wh)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(
            f"scale benchmark: step {step} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "load_before": round(load, 2)}


def measure(n: int, work: Path, steps: list[str] | None = None) -> dict:
    folder, data, wh = work / f"images-{n}", work / "data", work / f"wh-{n}"
    t = time.perf_counter()
    make_folder(folder, n)
    setup_s = time.perf_counter() - t
    env = {**os.environ, "MOAI_DATA": str(data), "MOAI_EXECUTOR": "local", "MOAI_OFFLINE": "1"}
    name = f"scale{n}"
    out: dict = {"images": n, "setup_s": round(setup_s, 1)}
    for step in steps or list(STEPS):
        out[step] = run_step(step, name, folder, wh, env)
        print(f"[bench scale] {n:>9,} images  {step:<8} {out[step]['seconds']:>8.1f} s  "
              f"peak RSS {out[step]['peak_rss_mb']:>7.0f} MB", file=sys.stderr)  # fmt: skip
    if "register" in out and "plan" in out:
        out["plan_total_s"] = round(out["register"]["seconds"] + out["plan"]["seconds"], 2)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(wh, ignore_errors=True)
    shutil.rmtree(data / name, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated image counts")
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help="of register,plan,commit,rerun in order; `fill` (bulk ledger) can replace commit at 1M",
    )
    parser.add_argument("--child", nargs=4, metavar=("STEP", "NAME", "FOLDER", "WH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="moai-scale-"))
    results = {
        "what": "SYNTHETIC: N hard links to one 8x8 PNG; profile signs-ocr; experts not run (their output "
        "'nothing found' goes through the driver's real commit path). Driver costs only.",
        "cpus": os.cpu_count(),
        "sizes": {},
    }
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            results["sizes"][str(n)] = measure(n, work, args.steps.split(","))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["load_after"] = round(os.getloadavg()[0], 2)
    (out / "scale.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"[bench scale] written to {out / 'scale.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
