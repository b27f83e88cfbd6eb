"""What one training step of the signs benchmark costs with a pretrained LLM instead of the tiny random one.

    python -m benchmarks.signs_step [--preset smollm2-135m] [--steps 4]  → outputs/bench/signs_step.json

Run after `make signs-benchmark` (it reads that run's warehouse; nothing is annotated here). Both
models are built from configs/train-signs.yaml and fed the same kind of training batches (batch 32 of
signs questions, aux text, 64 px images), one thread each, as each arm of the benchmark trains:
  - the baseline: the config as it is (the tiny random Llama, reading the benchmark's aux-token and
    vision-feature caches, as its arms do);
  - the other: `model.preset` replaced, the options that only a tiny random LLM takes dropped
    (tiny_llm, train_llm, freeze_embeddings, mixer_rank, mixer_every, expert_init: the preset's own
    values apply), the LLM's own tokenizer, and no caches (none was filled for it; the frozen vision
    tower's share of a step is small next to the LLM's). Its LLM is frozen, as MoAI's is.
Each model runs one untimed warm-up step and then `--steps` timed steps (forward, backward, AdamW);
reported: the median seconds per step of each, their ratio, and what 3 seeds × 2 arms × max_steps
would take on 2 cores at that rate. Not part of `make bench` (it needs the signs warehouse).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.signs import ARMS, CONFIG, DATASET, SEEDS, corpus_key
from benchmarks.train_step import training_step
from corpora.resolve import resolve_corpus
from trainer.config import resolve_config
from trainer.train import build, prepare_instructions

DEFAULT_IN_MAKE_BENCH = False
TINY_ONLY = ("tiny_llm", "train_llm", "freeze_embeddings", "mixer_rank", "mixer_every", "expert_init")


def with_preset(cfg: dict, preset: str) -> dict:
    """`cfg` with its LLM replaced by `preset`'s: the options only a tiny random LLM takes dropped, the
    LLM's own tokenizer, no caches (none was filled for it)."""
    other = copy.deepcopy(cfg)
    other["model"] = {k: v for k, v in other["model"].items() if k not in TINY_ONLY}
    other["model"]["preset"] = preset
    other["data"] = {
        **other["data"],
        "tokenizer": "auto",
        "aux_token_cache": False,
        "vision_feature_cache": False,
    }
    return other


def step_seconds(cfg: dict, steps: int) -> tuple[float, int]:
    """Median seconds of `steps` training steps of the model `cfg` builds (after one warm-up), and its
    trainable parameter count."""
    torch.manual_seed(0)
    module, dm, _, dcfg = build(cfg)
    prepare_instructions(dcfg)
    dm.setup("fit")
    model = module.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batches = iter(dm.train_dataloader())
    times = []
    for step in range(steps + 1):
        batch = next(batches)
        t0 = time.perf_counter()
        training_step(model, optimizer, batch, step)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), sum(p.numel() for p in params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="smollm2-135m", help="the model preset to compare with the tiny one"
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warehouse", default="outputs/signs-warehouse", help="as `make signs-benchmark`'s")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    warehouse = Path(args.warehouse) / corpus_key(resolve_corpus(DATASET))
    if not warehouse.is_dir():
        raise SystemExit(f"signs_step: no signs warehouse at {warehouse}: run `make signs-benchmark` first")
    base = resolve_config(CONFIG)
    base["data"] = {**base["data"], "warehouse": str(warehouse)}
    other = with_preset(base, args.preset)

    load = os.getloadavg()[0]
    tiny_s, tiny_params = step_seconds(base, args.steps)
    other_s, other_params = step_seconds(other, args.steps)
    max_steps = int(base["trainer"]["max_steps"])
    runs = len(SEEDS) * len(ARMS)
    report = {
        "benchmark": "signs_step",
        "batch_size": base["data"]["batch_size"],
        "steps_timed": args.steps,
        "torch_threads": 1,
        "load_average_1min_at_start": round(load, 2),
        "tiny": {"step_s": round(tiny_s, 3), "trainable_parameters": tiny_params},
        args.preset: {"step_s": round(other_s, 3), "trainable_parameters": other_params},
        "ratio": round(other_s / tiny_s, 1),
        # the benchmark trains two runs at a time, one core each
        "training_hours_3_seeds_x_2_arms_on_2_cores": {
            "tiny": round(runs * max_steps * tiny_s / 2 / 3600, 2),
            args.preset: round(runs * max_steps * other_s / 2 / 3600, 2),
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "signs_step.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
