"""The annotation job (Ray Data, actor pools that follow cost) vs a naive sequential loop.

    python -m benchmarks.pipeline [--images 26] [--profile starter]  → outputs/bench/pipeline.json

Both run the same experts with the same configs over the same images (the sample photos, repeated
under distinct names up to `images`). The naive loop is one process calling decode → detection →
segmentation → sgg → ocr one image at a time; its per-expert model seconds are the "pure model
time". Reported: job_s / naive_s (goal ≤ 0.9 on 2 cores at 100 images), the job's start-up (Ray and
model loading, until its first image is finished) apart from its steady state (images/s after it),
how busy the cores were (CPU time used by every process / (cores × wall), from /proc/stat, so run it
on a quiet machine: the load average before each part is in the report), and the job's wall time
over the pure model time. Start-up is inside the job's wall time, as a user experiences it. Where the
job's core-seconds went (`job_core_seconds`): the expert actors, the driver, Ray's other processes
(daemons, Ray Data's own actors, the workers), the rest (processes gone between two readings, anything
else running) and idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
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


class RayProcessCpu:
    """CPU seconds of the Ray processes on this machine (the job's: the benchmark wants a quiet
    machine), by kind: the expert actors, and every other one (Ray's daemons and agents, Ray Data's own
    actors, the workers that write the rows). Read from /proc every `every` seconds by a thread, so a
    process that ends before the job does (Ray stops an actor pool when its work is done) still counts,
    up to its last reading."""

    def __init__(self, every: float = 2.0):
        self.every, self.seen = every, {}  # pid -> (kind, cpu seconds)
        self.stop = threading.Event()

    def read(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(pid) != os.getpid() and ("ray::" in cmd or "/ray/" in cmd):
                # a worker becomes an expert actor (its title says so) and stays one, whatever its title later
                was = self.seen.get(pid, ("",))[0]
                kind = (
                    "expert_actors"
                    if "ExpertStage" in cmd or was == "expert_actors"
                    else "other_ray_processes"
                )
                self.seen[pid] = (kind, (int(fields[11]) + int(fields[12])) / hz)  # utime + stime

    def __enter__(self):
        def loop():
            while not self.stop.wait(self.every):
                self.read()

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.read()

    def totals(self) -> dict[str, float]:
        out = {"expert_actors": 0.0, "other_ray_processes": 0.0}
        for kind, cpu in self.seen.values():
            out[kind] += cpu
        return out


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class Busy:
    """How busy the cores were between start and stop (1.0: every core all the time)."""

    def __enter__(self):
        self.load = os.getloadavg()[0]
        self.start = _cpu_times()
        return self

    def __exit__(self, *exc):
        busy, total = (b - a for a, b in zip(self.start, _cpu_times(), strict=True))
        self.fraction = busy / total if total else 0.0


def run(images: int = 26, profile_name: str = "starter", out_dir: Path = Path("outputs/bench")) -> dict:
    import ray

    work = Path(tempfile.mkdtemp(prefix="moai-bench-"))
    try:
        sample = build_sample(Path("data") / "sample")
        folder = work / "images"
        folder.mkdir()
        refs = list(sample.images())
        for k in range(images):
            ref = refs[k % len(refs)]
            shutil.copy(ref.path, folder / f"{k // len(refs)}_{ref.file_name}")
        corpus = resolve_corpus("bench", images=folder, root=work / "data")
        profile = load_profile(profile_name)
        n = sum(1 for _ in corpus.images())

        with Busy() as naive_busy:
            naive_s, model_seconds = naive_loop(corpus, profile)
        pure = sum(model_seconds.values())
        job = JobSpec(
            dataset="bench", profile=profile_name, allow_random_weights=True, batch_size=2, commit_every=16
        )
        wh = Warehouse(work / "wh")
        with Busy() as job_busy:
            start, driver = time.perf_counter(), os.times()
            with RayProcessCpu() as ray_cpu:
                run_annotation(corpus, profile, job, wh, executor="ray")
            job_s = time.perf_counter() - start
            driver_s = sum(os.times()[:2]) - sum(driver[:2])
            where = ray_cpu.totals()
        ray.shutdown()
        cores = os.cpu_count() or 1
        busy_s = job_busy.fraction * cores * job_s
        where.update(driver=driver_s, rest=busy_s - sum(where.values()) - driver_s)
        where["idle"] = cores * job_s - busy_s
        counts = json.loads(wh.query("SELECT counts_json FROM runs").column(0)[0].as_py())
        startup = float(counts.get("startup_s", 0.0))
        report = {
            "benchmark": "pipeline",
            "profile": profile_name,
            "images": n,
            "cpus": os.cpu_count(),
            "naive_seconds": round(naive_s, 2),
            "job_seconds": round(job_s, 2),
            "job_over_naive": round(job_s / naive_s, 3),
            "speedup_job_over_naive": round(naive_s / job_s, 3),
            "job_startup_seconds": round(startup, 2),
            "job_steady_images_per_s": round((n - 1) / max(job_s - startup, 1e-9), 3),
            "naive_images_per_s": round(n / naive_s, 3),
            "cores_busy": {"naive": round(naive_busy.fraction, 3), "job": round(job_busy.fraction, 3)},
            # where the job's core-seconds (cores x wall) went: the expert actors, the driver, Ray's other
            # processes, the rest (processes gone between two readings, anything else running), idle
            "job_core_seconds": {k: round(v, 1) for k, v in where.items()},
            "load_average_before": {"naive": naive_busy.load, "job": job_busy.load},
            "pure_model_seconds": round(pure, 2),
            "model_seconds_by_expert": {k: round(v, 2) for k, v in model_seconds.items()},
            "job_overhead_over_pure_model_time": round(job_s / pure - 1, 3),
            "goals": {"job_over_naive_at_100_images": 0.9, "cores_busy_steady": 0.85},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pipeline.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=26, help="sample photos repeated up to this many")
    parser.add_argument("--profile", default="starter")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    run(args.images, args.profile, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
