"""`moai annotate`: plan what is missing, run the experts, verbalize, commit exactly once.

corpus → plan (pipeline/plan.py: listing ⋈ ledger in DuckDB, spooled to Parquet)
       → decode → detection → segmentation → sgg → ocr
       → verbalize + write the rows → commit (atomic, every `commit_every` images) → runs row + summary

In the Ray job the workers verbalize and write the rows (`stage_on_worker` → Warehouse.stage, files
under `<warehouse>/_incoming/`); the driver's commit checks their keys and publishes the files in the
manifest as they are (Warehouse.commit_staged). The local executor does it all in this process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from annotators.registry import EXPERT_NAMES, EXPERTS, make_expert
from core.errors import UserError
from core.paths import DEFAULT_WAREHOUSE
from corpora.resolve import resolve_corpus
from pipeline.estimate import Estimate, estimate
from pipeline.plan import Plan, make_plan
from pipeline.profiles import JobSpec, Profile, load_job, load_profile, plan_hashes
from pipeline.terminal import Progress, quiet
from verbalize.aux import aux_hash, aux_rows, verbalize_row, verbalizer_hash
from warehouse.rows import table_rows_for
from warehouse.store import INCOMING, Warehouse

COMPACT_EVERY = 64  # commits between compactions during a run (and the files a partition must reach)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in (
        "moai-forge",
        "torch",
        "ultralytics",
        "onnxruntime",
        "segment-anything",
        "rapidocr",
        "rapidocr-onnxruntime",
        "ray",
        "duckdb",
        "pyarrow",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _resolve(dataset: str, images, profile, allow_random_weights: bool, commit_every):
    """The corpus, its job spec and the profile, with the random-weights rule applied."""
    corpus = resolve_corpus(dataset, images=images)
    job: JobSpec = load_job(corpus.name)
    profile = load_profile(profile or job.profile)
    allow_random = bool(allow_random_weights or job.allow_random_weights)
    random_experts = profile.random_init_experts()
    if random_experts and not allow_random:
        raise UserError(
            f"Profile '{profile.name}' runs {', '.join(random_experts)} with random-init weights, and dataset "
            f"'{corpus.name}' must be annotated with pretrained weights. Use a profile with real weights "
            "(PROFILE=...), or pass --allow-random-weights to accept random outputs (recorded in every row)."
        )
    if random_experts:
        print(
            f"[annotate] NOTE: {', '.join(random_experts)} run with RANDOM-INIT weights (profile "
            f"'{profile.name}'); their rows say weights_sha256='random-init'.",
            file=sys.stderr,
        )
    if commit_every:
        job.commit_every = commit_every
    return corpus, job, profile


def annotate(
    dataset: str,
    *,
    images: str | None = None,
    profile: str | None = None,
    warehouse: str | Path = DEFAULT_WAREHOUSE,
    limit: int | None = None,
    allow_random_weights: bool = False,
    commit_every: int | None = None,
    executor: str | None = None,
    retry_errors: bool = False,
) -> int:
    """`moai annotate`: resolve the corpus, its job and profile, then run (see run_annotation)."""
    corpus, job, profile = _resolve(dataset, images, profile, allow_random_weights, commit_every)
    return run_annotation(
        corpus,
        profile,
        job,
        Warehouse(warehouse),
        limit=limit,
        executor=executor or os.environ.get("MOAI_EXECUTOR", "ray"),
        retry_errors=retry_errors,
    )


def plan(
    dataset: str,
    *,
    images: str | None = None,
    profile: str | None = None,
    warehouse: str | Path = DEFAULT_WAREHOUSE,
    limit: int | None = None,
    allow_random_weights: bool = False,
    executor: str | None = None,
    retry_errors: bool = False,
    probe: bool = True,
) -> Estimate:
    """`moai plan`: what `moai annotate` with the same arguments would do, and its estimated cost.
    Writes nothing to the warehouse (the probe runs the experts here, on a few images)."""
    corpus, job, profile = _resolve(dataset, images, profile, allow_random_weights, None)
    preflight(profile)
    wh = Warehouse(warehouse)
    hashes = plan_hashes(profile)
    aux_key = aux_hash(verbalizer_hash(profile.verbalize), hashes)
    spool = Path(tempfile.mkdtemp(prefix="moai-plan-"))  # a dry run writes nothing to the warehouse
    try:
        work = make_plan(corpus, profile, hashes, wh, aux_key, spool, "plan", limit=limit, splits=job.splits,
                         retry_errors=retry_errors)  # fmt: skip
        executor = executor or os.environ.get("MOAI_EXECUTOR", "ray")
        return estimate(work, profile, hashes, wh, executor, job.batch_size, probe=probe)
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def run_annotation(
    corpus,
    profile: Profile,
    job: JobSpec,
    wh: Warehouse,
    *,
    limit: int | None = None,
    executor: str = "ray",
    out=sys.stdout,
    retry_errors: bool = False,
) -> int:
    """Annotate what is missing. One run per dataset and warehouse at a time (a second is refused in
    one line); every commit re-checks its keys, so even runs that bypass the lock never double a row."""
    preflight(profile)  # before the lock or anything else is created: a missing weight changes nothing
    with wh.run_lock(corpus.name):
        return _run_annotation(corpus, profile, job, wh, limit, executor, out, retry_errors)


def preflight(profile: Profile) -> None:
    """Every expert's weight files found, fetched or refused before any model loads or a cluster
    starts: a missing file is one paragraph in seconds, not an actor failure a minute later."""
    for name, config in profile.experts.items():
        make_expert(name, config).prepare()


def _run_annotation(corpus, profile, job, wh, limit, executor, out, retry_errors) -> int:
    started = datetime.now(timezone.utc)
    run_id = started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    wh.recover()
    hashes = plan_hashes(profile)
    vhash = verbalizer_hash(profile.verbalize)
    aux_key = aux_hash(vhash, hashes)
    tag = run_tag(corpus.name, run_id)  # this run's plan spool and the folder its workers write rows to
    _remove_run_folders(wh, corpus.name)
    plan = make_plan(corpus, profile, hashes, wh, aux_key, wh.root / "_plans" / tag, run_id, limit=limit,
                     splits=job.splits, retry_errors=retry_errors)  # fmt: skip
    try:
        return _run_plan(
            corpus, profile, job, wh, executor, out, plan, run_id, started, hashes, vhash, aux_key
        )
    finally:
        _remove_run_folders(wh, corpus.name)


def _remove_run_folders(wh: Warehouse, dataset: str) -> None:
    """Every plan spool and workers' row folder of `dataset`'s runs, this one's included. Called at a
    run's start and end, with the dataset's run lock held, so none of them belongs to a live run. At the
    end too: the workers of a killed run can still be finishing a call, and write its rows, after the
    next run started (never read: no commit adopts them)."""
    for folder in (wh.root / "_plans", wh.root / INCOMING):
        for stale in folder.iterdir() if folder.is_dir() else []:
            if _run_of(stale.name, dataset):
                shutil.rmtree(stale, ignore_errors=True)


RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def run_tag(dataset: str, run_id: str) -> str:
    """The name of a run's plan spool (`_plans/`) and of its workers' rows (`_incoming/`)."""
    return f"{dataset}--{run_id}"


def _run_of(name: str, dataset: str) -> bool:
    """Whether `name` is a run_tag of exactly this dataset (dataset `a` is not `a--b`)."""
    prefix = run_tag(dataset, "")
    return name.startswith(prefix) and bool(RUN_ID.fullmatch(name[len(prefix) :]))


def _run_plan(
    corpus, profile, job, wh, executor, out, plan: Plan, run_id, started, hashes, vhash, aux_key
) -> int:
    print(
        f"[annotate] dataset={corpus.name} profile={profile.name} run={run_id}: {plan.listed} images listed, "
        f"{plan.skipped} already done, {plan.count} to process",
        file=sys.stderr,
    )
    expected = estimate(plan, profile, hashes, wh, executor, job.batch_size, probe=False).seconds
    if plan.count:
        print(
            f"[annotate] estimate: ~{expected:.0f} s from this warehouse's history" if expected is not None
            else "[annotate] estimate: none yet (no earlier run of these experts here; `moai plan` probes)",
            file=sys.stderr,
        )  # fmt: skip
    tally = Tally(list(profile.experts))
    start = time.perf_counter()
    if plan.count:
        log_path = Path(wh.root).parent / "logs" / f"annotate-{run_id}.log"
        print(f"[annotate] worker and library output: {log_path}", file=sys.stderr)
        with quiet(log_path) as terminal:
            progress = Progress(plan.count, list(profile.experts), stream=terminal)
            committer = Committer(wh, job.commit_every)
            finish = {"root": str(wh.root.resolve()), "tag": run_tag(corpus.name, run_id), "profile": profile,
                      "hashes": hashes, "run_id": run_id, "vhash": vhash, "aux_key": aux_key}  # fmt: skip
            for row in _unwrap_worker_errors(_stream(plan, profile, job, executor, wh, terminal, finish)):
                if "row_counts" in row:  # a worker wrote its image's rows (the Ray job): commit its files
                    tally.add(row, json.loads(row["row_counts"]))
                    if row["staged"]:
                        committer.publish(json.loads(row["staged"]))
                else:  # the rows are made and written here (the local executor)
                    tables = row_tables(row, profile, hashes, run_id, vhash, aux_key)
                    tally.add(row, {table: len(rows) for table, rows in tables.items()})
                    committer.add(tables)
                tally.counts.setdefault("startup_s", round(time.perf_counter() - start, 2))
                progress.update(row)
            progress.close()
            committer.flush()
    elapsed = time.perf_counter() - start
    wh.commit(
        {"runs": [_runs_row(run_id, corpus, profile, job, executor, hashes, plan, tally, started, elapsed)]}
    )
    wh.compact()
    print_summary(
        out, corpus.name, run_id, plan, tally.counts, tally.seconds, elapsed, tally.errors, wh, profile
    )
    return 0


def row_tables(
    row: dict, profile: Profile, hashes, run_id: str, vhash: str, aux_key: str
) -> dict[str, list[dict]]:
    """One finished stage row as the rows it adds to each table: the experts' rows and ledger keys,
    and (when the image decoded) its verbalized aux text with the aux key."""
    tables = table_rows_for(row, hashes, row["decode_committed"])
    if not row["decode_reason"]:
        aux, done = aux_rows(row["dataset"], row["image_id"], run_id, verbalize_row(row, profile.verbalize), vhash,
                             aux_key, _random_init(row, profile))  # fmt: skip
        tables.setdefault("aux_text", []).append(aux)
        tables["done"].append(done)
    return tables


SUMMARY = (
    "todo",
    "decode_reason",
    *(f"{n}_{f}" for n in EXPERT_NAMES for f in ("error", "seconds", "identity")),
)


def stage_on_worker(
    table, *, root: str, tag: str, profile: Profile, hashes, run_id: str, vhash: str, aux_key: str
):
    """The Ray job's last step, on a worker: up to `commit_every` finished images → their rows of every
    table, written under the warehouse's `_incoming/<tag>/` (Warehouse.stage). Out: one small row per
    image with what the driver counts; the first also names the files, which the driver commits
    (Warehouse.commit_staged). Files of a task that Ray re-runs, or that no commit adopts, stay
    invisible and are removed with the tag when the run ends (or by the dataset's next run)."""
    import pyarrow as pa

    merged: dict[str, list[dict]] = {}
    out = []
    for row in table.to_pylist():
        tables = row_tables(row, profile, hashes, run_id, vhash, aux_key)
        for name, rows in tables.items():
            merged.setdefault(name, []).extend(rows)
        counts = json.dumps({name: len(rows) for name, rows in tables.items()})
        out.append({**{k: row[k] for k in SUMMARY}, "row_counts": counts, "staged": ""})
    if out:
        out[0]["staged"] = json.dumps(Warehouse(root).stage(merged, tag))
    return pa.Table.from_pylist(out)


class Committer:
    """The driver's commits: one every `commit_every` images (all their tables at once), and a
    compaction of the small files every COMPACT_EVERY commits, so a long run keeps few files and its
    commits (whose key check reads the ledger) stay cheap."""

    def __init__(self, wh: Warehouse, commit_every: int):
        self.wh, self.commit_every = wh, commit_every
        self.pending: dict[str, list[dict]] = {}
        self.images = self.commits = 0

    def add(self, tables: dict[str, list[dict]]) -> None:
        """One image's rows, by table."""
        for table, rows in tables.items():
            self.pending.setdefault(table, []).extend(rows)
        self.images += 1
        if self.images >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        if not self.images:
            return
        self.wh.commit(self.pending)
        self.pending, self.images = {}, 0
        self._committed()

    def publish(self, staged: list[str]) -> None:
        """Commit the files a worker wrote (`stage_on_worker`)."""
        self.wh.commit_staged(staged)
        self._committed()

    def _committed(self) -> None:
        self.commits += 1
        if self.commits % COMPACT_EVERY == 0:
            self.wh.compact(min_files=COMPACT_EVERY, tiered=True)


def _stream(plan: Plan, profile: Profile, job: JobSpec, executor: str, wh: Warehouse, terminal=sys.stderr,
            finish: dict | None = None):  # fmt: skip
    """Finished rows from the chosen executor, for the experts this plan still needs. With `finish`
    (stage_on_worker's arguments), the Ray job writes the rows on its workers and sends summaries."""
    from pipeline.executors import StageSpec, init_ray, run_local, run_ray

    needed = [n for n in profile.experts if plan.todo.get(n)]
    if executor == "local":
        specs = [StageSpec([(n, profile.experts[n])], job.batch_size) for n in needed]
        return run_local(plan.batches(job.batch_size), specs, job.batch_size)
    if executor != "ray":
        raise UserError(f"unknown executor {executor!r}; use 'ray' or 'local'")
    import ray

    print(f"[annotate] executor: {init_ray()}", file=terminal)
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    # a GPU share asked of a cluster without GPUs waits forever
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    shares = {n: job.gpus.get(n, 0.0) for n in needed} if gpus else {}
    specs = []
    for group, actors, gpu_share in actor_groups(expert_costs(profile, needed, wh), job, cpus, shares, gpus):
        experts = []
        for n in group:
            config = dict(profile.experts[n])
            if EXPERTS[n].reads_threads(config) and "threads" not in config:
                config["threads"] = 1  # one thread per actor: the cores go to more actors
            experts.append((n, config))
        memory = sum(EXPERTS[n].memory_mb(c) for n, c in experts)
        specs.append(StageSpec(experts, job.batch_size, actors, 0.25, gpu_share, memory))
    print(
        "[annotate] actors: " + ", ".join(f"{s.name} {s.actors}" for s in specs) + f" (on {cpus} CPUs)",
        file=terminal,
    )
    # The workers write (and the driver commits) at most `commit_every` images at a time. The last expert
    # actors write the rows of each call (one plan row group when they are the first too, and those are
    # small in small plans); a later pool or a write task gets `rows` images, fewer in small runs: the
    # driver hears of an image only once it is written, and progress should move.
    rows = max(1, min(job.commit_every, plan.count // 32))
    writer = (stage_on_worker, finish, rows, job.commit_every) if finish else None
    return run_ray(plan.files, specs, job.batch_size, writer)


def expert_costs(profile: Profile, needed: list[str], wh: Warehouse) -> dict[str, float]:
    """Model ms per image of each needed expert, one thread: from this warehouse's runs of the same
    config, else its file's COST_MS."""
    from pipeline.estimate import expert_ms_from_history, run_history

    hashes = plan_hashes(profile)
    runs = run_history(wh)
    cost = {}
    for n in needed:
        found = expert_ms_from_history(runs, n, profile.experts[n], hashes[n])
        cost[n] = (
            found[0] if found and found[1].endswith("same config") else EXPERTS[n].cost_ms(profile.experts[n])
        )
    return cost


def actor_groups(
    cost: dict[str, float],
    job: JobSpec,
    cpus: int,
    gpu_shares: dict[str, float] | None = None,
    gpus: float = 0.0,
) -> list[tuple[list[str], int, float]]:
    """The Ray job's actor pools: (experts, in dependency order; number of actors; GPU share per actor,
    the largest of its experts'). Each expert's fair share of the cluster's CPUs is in proportion to its
    model time per image. An expert whose share is under half a CPU (and that has no actor count in the
    job spec and no GPU share) gets no pool of its own: it runs in the actors of the expert before it
    (or, first in line, of the one after), so a cheap expert costs no process, no model copy per idle
    actor and no hop between actors. A pool gets the job spec's count, else its experts' summed share
    rounded, at least one, and no more than the cluster's `gpus` hold at its GPU share (more would wait
    for a GPU, unscheduled). On 2 CPUs with the starter profile this is one pool of 2 actors running
    detection, SAM, the scene graph and OCR each on one thread (two pipelines, no core waiting on
    another); on 16, OCR has a pool of its own."""
    gpu_shares = gpu_shares or {}
    order = list(cost)
    total = sum(cost.values()) or 1.0
    share = {n: cpus * cost[n] / total for n in order}

    def alone(n: str) -> bool:
        return share[n] >= 0.5 or n in job.actors or bool(gpu_shares.get(n))

    groups: list[list[str]] = []
    waiting: list[str] = []  # cheap experts before the first pool of their own
    for n in order:
        if alone(n):
            groups.append([*waiting, n])
            waiting = []
        elif groups:
            groups[-1].append(n)
        else:
            waiting.append(n)
    if waiting:  # no expert needed a pool of its own: one pool for all
        groups.append(waiting)
    out = []
    for group in groups:
        named = [job.actors[n] for n in group if n in job.actors]
        actors = max(named) if named else max(1, round(sum(share[n] for n in group)))
        gpu_share = max(gpu_shares.get(n, 0.0) for n in group)
        if gpu_share and not named:
            actors = min(actors, max(1, int(gpus / gpu_share + 1e-9)))
        out.append((group, actors, gpu_share))
    return out


def _random_init(row: dict, profile: Profile) -> bool:
    """Whether any expert behind this image's aux text ran with random weights."""
    return any(
        json.loads(row[f"{n}_identity"] or "{}").get("weights_sha256") == "random-init" for n in EXPERT_NAMES
    ) or any(profile.experts[n].get("weights") == "random-init" for n in profile.experts)


class Tally:
    """What a run did, per expert: images, errors, model seconds, rows written, random weights."""

    def __init__(self, experts: list[str]):
        self.experts = experts
        self.counts: Counter = Counter()
        self.seconds: Counter = Counter()
        self.random_by_expert: dict[str, bool] = {}

    def add(self, row: dict, row_counts: dict[str, int]) -> None:
        """One finished image: its stage row (or the summary of it a worker sent) and the rows it
        added to each table."""
        for name in self.experts:
            if name in row["todo"].split(",") and not row["decode_reason"]:
                self.counts[f"{name}_{'errors' if row[f'{name}_error'] else 'images'}"] += 1
                self.seconds[name] += row[f"{name}_seconds"]
                ident = json.loads(row[f"{name}_identity"] or "{}")
                if ident:
                    self.random_by_expert[name] = ident.get("weights_sha256") == "random-init"
        for table, n in row_counts.items():
            if table != "done":
                self.counts[f"rows_{table}"] += n
        self.counts["decode_errors"] += bool(row["decode_reason"])

    @property
    def errors(self) -> int:
        return self.counts["decode_errors"] + sum(self.counts[f"{n}_errors"] for n in EXPERT_NAMES)


def _runs_row(run_id, corpus, profile, job, executor, hashes, plan, tally: Tally, started, elapsed) -> dict:
    """The run's row in `runs`: what it was asked, what it did, and with which versions."""
    counts = {**tally.counts, **{f"{k}_model_seconds": round(v, 3) for k, v in tally.seconds.items()}}
    config = {"profile": profile.experts, "verbalize": profile.verbalize, "plan_hashes": hashes,
              "executor": executor, "job": job.__dict__}  # fmt: skip
    return {
        "run_id": run_id,
        "dataset": corpus.name,
        "profile": profile.name,
        "started_at": started,
        "finished_at": datetime.now(timezone.utc),
        "images_listed": plan.listed,
        "images_processed": plan.count,
        "errors": tally.errors,
        "images_per_s": plan.count / elapsed if elapsed > 0 and plan.count else 0.0,
        "counts_json": json.dumps(counts),
        "config_json": json.dumps(config),
        "versions_json": json.dumps(_versions()),
        "random_init_experts": ",".join(sorted(n for n, r in tally.random_by_expert.items() if r)),
    }


def _unwrap_worker_errors(stream):
    """Re-raise a user-facing error (e.g. a missing weight file) that an actor hit while loading its
    model as that error, not as Ray's wrapper with a remote traceback."""
    from core.errors import WeightsError

    try:
        yield from stream
    except UserError:
        raise
    except Exception as err:
        cause = err
        while cause is not None:
            if isinstance(cause, UserError):
                raise cause from None
            cause = getattr(cause, "cause", None) or cause.__cause__
        text = str(err)
        for kind in (WeightsError, UserError):
            marker = f"{kind.__name__}: "
            if marker in text:
                message = text.split(marker, 1)[1].strip().splitlines()[0]
                raise kind(message) from None
        raise


def print_summary(out, dataset, run_id, plan, counts, seconds, elapsed, n_errors, wh, profile) -> None:
    lines = [
        f"\nannotate {dataset}  run {run_id}",
        f"  images: {plan.listed} listed, {plan.skipped} already done, {plan.count} processed "
        f"in {elapsed:.1f}s ({plan.count / elapsed if elapsed and plan.count else 0:.2f} img/s), "
        f"{n_errors} errors",
        f"  {'expert':<13}{'images':>8}{'errors':>8}{'ms/img':>9}  rows",
    ]
    for name in profile.experts:
        table = EXPERTS[name].table
        n = counts[f"{name}_images"]
        ms = 1000 * seconds[name] / max(n + counts[f"{name}_errors"], 1)
        lines.append(
            f"  {name:<13}{n:>8}{counts[f'{name}_errors']:>8}{ms:>9.0f}  {counts[f'rows_{table}']} {table}"
        )
    if wh.skipped_keys:
        lines.append(
            f"  {wh.skipped_keys} results were already committed by another run and were not added again"
        )
    lines.append(f'  warehouse: {wh.root}  (query it: make sql, or moai sql "SELECT ...")')
    print("\n".join(lines), file=out)
