"""The annotation job (Ray Data, one actor pool per expert) vs a naive sequential loop.

    python -m benchmarks.pipeline [--copies 2] [--profile shared-onnx]  → outputs/bench/pipeline.json

Both run the same experts with the same configs over the same images (the sample photos, repeated
`copies` times under distinct names). The naive loop is one process calling decode → detection →
segmentation → sgg → ocr one image at a time; its per-expert model seconds are the "pure model
time". Reported: naive_s / job_s (goal ≥ 1.5× on 2 cores) and the job's wall time over the pure
model time (overhead; goal ≤ 15%; negative when the job overlaps experts across cores).
Ray start-up and model loading are inside the job's wall time, as a user experiences them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from corpora.decode import decode_image
from corpora.resolve import resolve_corpus
from corpora.sample import build_sample
from pipeline.annotate import run_annotation
from pipeline.profiles import JobSpec, load_profile
from pipeline.stages import ExpertStage, new_row
from warehouse.store import Warehouse


def naive_loop(corpus, profile) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    stages = [ExpertStage(name, cfg, batch_size=1) for name, cfg in profile.experts.items()]
    model_seconds = {s.name: 0.0 for s in stages}
    for ref in corpus.images():
        row = new_row(ref, list(profile.experts))
        decoded = decode_image(ref.path).image
        row.update(pixels=decoded.tobytes(), height=decoded.shape[0], width=decoded.shape[1])
        for stage in stages:
            stage([row])
            model_seconds[stage.name] += row[f"{stage.name}_seconds"]
    return time.perf_counter() - start, model_seconds


def run(copies: int = 2, profile_name: str = "shared-onnx", out_dir: Path = Path("outputs/bench")) -> dict:
    import ray

    work = Path(tempfile.mkdtemp(prefix="moai-bench-"))
    try:
        sample = build_sample(Path("data") / "sample")
        folder = work / "images"
        folder.mkdir()
        for k in range(copies):
            for ref in sample.images():
                shutil.copy(ref.path, folder / f"{k}_{ref.file_name}")
        corpus = resolve_corpus("bench", images=folder, root=work / "data")
        profile = load_profile(profile_name)
        n = sum(1 for _ in corpus.images())

        naive_s, model_seconds = naive_loop(corpus, profile)
        pure = sum(model_seconds.values())
        job = JobSpec(
            dataset="bench", profile=profile_name, allow_random_weights=True, batch_size=2, commit_every=16
        )
        start = time.perf_counter()
        run_annotation(corpus, profile, job, Warehouse(work / "wh"), executor="ray")
        job_s = time.perf_counter() - start
        ray.shutdown()
        report = {
            "benchmark": "pipeline",
            "profile": profile_name,
            "images": n,
            "cpus": os.cpu_count(),
            "naive_seconds": round(naive_s, 2),
            "job_seconds": round(job_s, 2),
            "speedup_job_over_naive": round(naive_s / job_s, 3),
            "pure_model_seconds": round(pure, 2),
            "model_seconds_by_expert": {k: round(v, 2) for k, v in model_seconds.items()},
            "job_overhead_over_pure_model_time": round(job_s / pure - 1, 3),
            "goals": {"speedup": 1.5, "overhead": 0.15},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pipeline.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--profile", default="shared-onnx")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    run(args.copies, args.profile, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
