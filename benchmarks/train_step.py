"""Why the product exists: a training step fed from the precomputed warehouse vs the same step with
the four experts computed online inside it (as MoAI's own code does), and the loader's headroom.

    python -m benchmarks.train_step [--steps 20] [--profile offline-demo]  → outputs/bench/train_step.json

Needs the sample corpus annotated (`make annotate`; done here if missing, with the same profile).
Reported: ms per step both ways and their ratio (goal ≥ 20×), the loader's rows/s on its own vs
the rows/s the model consumes, and the fraction of step time spent waiting for data (goal < 5%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from core.paths import DEFAULT_WAREHOUSE
from corpora.resolve import resolve_corpus
from pipeline.annotate import run_annotation
from pipeline.profiles import load_job, load_profile
from pipeline.stages import ExpertStage, decode_rows, new_row
from trainer.config import resolve_config
from trainer.train import build, prepare_instructions
from verbalize.aux import verbalize_row
from warehouse.store import Warehouse


def training_step(model, optimizer, batch, step: int) -> float:
    """One optimizer step on `batch` (forward, backward, update); returns the loss."""
    out = model.forward_batch(batch, step=step, return_logits=False)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.detach().item()


def _endless(dm):
    """Training batches, epoch after epoch."""
    while True:
        yield from dm.train_dataloader()


def run(steps: int = 20, profile_name: str = "offline-demo", out_dir: Path = Path("outputs/bench")) -> dict:
    torch.set_num_threads(1)
    cfg = resolve_config("configs/train-tiny.yaml", {"data": {"warehouse": str(DEFAULT_WAREHOUSE)}})
    wh = Warehouse(cfg["data"]["warehouse"])
    corpus = resolve_corpus("sample")
    profile = load_profile(profile_name)
    run_annotation(corpus, profile, load_job("sample"), wh, executor="local")  # no-op when already done
    module, dm, mcfg, dcfg = build(cfg)
    prepare_instructions(dcfg)
    dm.setup("fit")
    model = module.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    refs = {r.image_id: r for r in corpus.images()}
    rows_by_index = dm.train_set.rows

    # 1. the loader alone
    start, n = time.perf_counter(), 0
    for batch in dm.train_dataloader():
        n += batch["input_ids"].shape[0]
    loader_rows_per_s = n / (time.perf_counter() - start)

    # 2. precomputed: batches straight from the warehouse
    batches = _endless(dm)
    waits, totals = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        training_step(model, optimizer, batch, step)
        waits.append(t1 - t0)
        totals.append(time.perf_counter() - t0)

    # 3. online: the same step, with the experts run on the batch's images first
    stages = [
        ExpertStage(name, config, batch_size=len(batch["index"])) for name, config in profile.experts.items()
    ]
    online = []
    batches = _endless(dm)
    for step in range(max(3, steps // 4)):
        batch = next(batches)
        t0 = time.perf_counter()
        rows = [
            new_row(refs[rows_by_index[i]["image_id"]], list(profile.experts))
            for i in batch["index"].tolist()
        ]
        rows = decode_rows(rows)
        for stage in stages:
            rows = stage(rows)
        aux = [
            dm.tokenizer.encode(verbalize_row(r, profile.verbalize)["text"])[: dcfg.max_aux_tokens]
            for r in rows
        ]
        width = max(1, max(len(a) for a in aux))
        ids = torch.full((len(aux), width), dm.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, a in enumerate(aux):
            ids[b, : len(a)], mask[b, : len(a)] = torch.tensor(a, dtype=torch.long), 1
        batch = {**batch, "aux_input_ids": ids, "aux_attention_mask": mask}
        training_step(model, optimizer, batch, step)
        online.append(time.perf_counter() - t0)

    step_ms = 1000 * statistics.median(totals)
    online_ms = 1000 * statistics.median(online)
    batch_size = dcfg.batch_size
    report = {
        "benchmark": "train_step",
        "profile": profile_name,
        "batch_size": batch_size,
        "steps": steps,
        "cpus": os.cpu_count(),
        "torch_threads": 1,
        "precomputed_step_ms": round(step_ms, 2),
        "online_experts_step_ms": round(online_ms, 2),
        "speedup_precomputed_over_online": round(online_ms / step_ms, 1),
        "loader_rows_per_s": round(loader_rows_per_s, 1),
        "model_rows_per_s": round(batch_size / (step_ms / 1000), 1),
        "data_wait_fraction": round(sum(waits) / sum(totals), 4),
        "goals": {"speedup": 20, "data_wait_fraction": 0.05},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_step.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", default="offline-demo")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    run(args.steps, args.profile, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
