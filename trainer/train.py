"""`moai train --config configs/<name>.yaml`: train MoAI's Compressor and Mixer with Lightning.

The YAML has LightningCLI-style sections:

    seed_everything: 0
    model:   {preset: tiny, mode: step2, ...any MoAIConfig field}
    data:    {dataset: sample, batch_size: 4, ...any DataConfig field}
    optim:   {lr: 1.0e-3, weight_decay: 0.0, eta_min: 1.0e-5, warmup_steps: 10}
    trainer: {max_steps: 300, log_every_n_steps: 5, ...any lightning.Trainer argument}
    run:     {name: tiny-sample, out: outputs/train, checkpoint_every: 100, threads: 1, init_from: null}

Every section is checked against its typed dataclass (MoAIConfig, DataConfig, OptimConfig, RunConfig;
`trainer` against lightning.Trainer's arguments) by pipeline/config.py: an unknown key, a value of the
wrong type or out of range stops the run with one line naming the file, the key and its closest match.

`run.init_from` (a checkpoint or run folder) starts from another run's trained weights with a fresh
optimizer, schedule and data order: MoAI's step 2 after step 1. `moai train --resume` instead
continues the same run exactly. A run folder that already holds checkpoints is refused unless the run is
resumed (`--resume`) or replaced (`--overwrite`): two runs' files in one folder would be mixed up.

`run.threads` sets torch's intra-op threads in every training process: a tiny model on a shared
CPU runs many times faster on one thread than on several contended ones.

`data.aux_token_cache` / `data.vision_feature_cache` make the data path read token ids and frozen
vision features from warehouse tables (trainer/cache.py) instead of recomputing them every epoch;
`train` adds the missing rows first (rank 0, on the training device), so they are computed once.

Outputs in `<out>/<name>/`: `config.yaml` (the resolved config), `metrics.csv` (train_loss, lr-AdamW,
and `gate/l<layer>_<side>_<expert>`, the mean gate weight; layer = the LLM's 0-based decoder layer),
TensorBoard logs (`tb/`), checkpoints holding only trainable parameters plus the data position (exact
mid-epoch resume), `loss.png` and `routing.png`. `trainer.export` turns a run into a self-contained
folder and answers questions with it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from trainer.cache import CacheFill, fill_caches, vision_encoder_id
from trainer.config import claim_run_folder, data_config, model_config, resolve_config, run_dir_of
from trainer.data import WarehouseDataModule
from trainer.inputs import DataConfig, make_tokenizer
from trainer.model import EXPERT_NAMES, SIDES, MoAI, MoAIConfig


class MoAITrainingModule(pl.LightningModule):
    """Owns the step: loss, routing statistics, optimizer; checkpoints keep trainable tensors only."""

    def __init__(self, model_cfg: MoAIConfig, optim: dict, run_config: dict | None = None):
        super().__init__()
        self.model = MoAI(model_cfg)
        self.optim = {"lr": 1e-3, "weight_decay": 0.0, "eta_min": 1e-5, "warmup_steps": 0, **optim}
        self.run_config = run_config  # the resolved YAML, kept in checkpoints (data config, tokenizer)
        self.strict_loading = False  # checkpoints hold only the trainable parameters

    def training_step(self, batch, batch_idx):
        out = self.model.forward_batch(batch, step=self.global_step, return_logits=False)
        size = batch["input_ids"].shape[0]
        self.log("train_loss", out.loss, prog_bar=True, batch_size=size)
        if out.gate_stats is not None:
            for layer, stats in zip(self.model.mixer_layers, out.gate_stats.detach(), strict=True):
                for s, side in enumerate(SIDES):  # layer: the LLM's 0-based decoder layer
                    for e, expert in enumerate(EXPERT_NAMES[s]):
                        self.log(f"gate/l{layer}_{side}_{expert}", stats[s, e], batch_size=size)
        return out.loss

    def validation_step(self, batch, batch_idx):
        out = self.model.forward_batch(batch, step=self.global_step, return_logits=False)
        self.log("val_loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        # PyTorch's fused AdamW: the same update in one kernel per step (on this 2-core CPU ~4 ms instead of
        # ~13 ms for the signs benchmark's 2.1M trained parameters); it takes float tensors on CPU or CUDA
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
        opt = torch.optim.AdamW(
            params, lr=self.optim["lr"], weight_decay=self.optim["weight_decay"], fused=fused
        )
        total = max(1, int(self.trainer.max_steps if self.trainer.max_steps > 0 else 1000))
        warmup, lr, eta_min = int(self.optim["warmup_steps"]), self.optim["lr"], self.optim["eta_min"]

        def factor(step: int) -> float:  # linear warm-up, then cosine down to eta_min
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return (eta_min + (lr - eta_min) * 0.5 * (1 + math.cos(math.pi * progress))) / lr

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in self.model.state_dict_trainable().items()}
        checkpoint["moai_config"] = dict(self.model.config.__dict__)
        if self.run_config is not None:
            checkpoint["moai_run_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
        self.model.load_trainable(state)


class DataProgress(pl.Callback):
    """Advance the data position only for batches the optimizer actually consumed."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.datamodule.advance()


class TorchThreads(pl.Callback):
    """torch.set_num_threads in every training process (spawned DDP workers included)."""

    def __init__(self, threads: int):
        self.threads = int(threads)

    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(self.threads)


def prepare_instructions(dcfg: DataConfig) -> int:
    """Import the dataset's QA/caption files into the warehouse (new rows only)."""
    from corpora.resolve import resolve_corpus
    from pipeline.instructions import import_instructions
    from warehouse.store import Warehouse

    return import_instructions(Warehouse(dcfg.warehouse), resolve_corpus(dcfg.dataset))


def build(cfg: dict):
    pl.seed_everything(int(cfg.get("seed_everything", 0)), workers=True)
    mcfg = model_config(cfg["model"])
    module = MoAITrainingModule(mcfg, cfg["optim"], run_config=cfg)
    dcfg = data_config(cfg["data"], mcfg, module.model.image_size)
    encoder = vision_encoder_id(module.model, dcfg) if dcfg.vision_feature_cache else None
    datamodule = WarehouseDataModule(dcfg, make_tokenizer(dcfg.tokenizer, mcfg), vision_encoder=encoder)
    return module, datamodule, mcfg, dcfg


def trainer_arguments(cfg: dict, mcfg: MoAIConfig, dcfg: DataConfig) -> dict[str, Any]:
    """Lightning.Trainer keyword arguments: defaults, then the config's `trainer` section, then fixes."""
    args = {
        "max_steps": 300,
        "log_every_n_steps": 5,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "accelerator": "auto",
        "devices": 1,
        # EpochBatchSampler already gives each rank its own slice; Lightning must not wrap it
        "use_distributed_sampler": False,
        **cfg["trainer"],
    }
    if not dcfg.val_splits:
        args.setdefault("limit_val_batches", 0)  # no val split: skip the validation loop entirely
    args["strategy"] = make_strategy(
        args.get("strategy", "auto"), step1=mcfg.mode == "step1" or mcfg.step1_steps > 0
    )
    return args


DDP_NAMES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def make_strategy(value: Any, step1: bool = False) -> Any:
    """`trainer.strategy` from YAML: a Lightning name, or {name: ddp|ddp_spawn|fsdp, ...its keyword
    arguments}. Step 1 leaves the unpicked experts without gradients, so DDP must look for unused ones."""
    if isinstance(value, dict):
        kwargs = dict(value)
        name = kwargs.pop("name")
        if name in DDP_NAMES:
            from lightning.pytorch.strategies import DDPStrategy

            if step1:
                kwargs["find_unused_parameters"] = True
            start = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}[name]
            return DDPStrategy(start_method=kwargs.pop("start_method", start), **kwargs)
        if name == "fsdp":
            from lightning.pytorch.strategies import FSDPStrategy

            # frozen and trained parameters share FSDP units, which needs use_orig_params
            return FSDPStrategy(**{"use_orig_params": True, **kwargs})
        raise ValueError(f"strategy {name!r}: give a Lightning strategy name instead of a mapping")
    if step1 and value in DDP_NAMES:
        return f"{value}_find_unused_parameters_true"
    return value


def train(
    config_path: str | Path,
    resume: str | None = None,
    overrides: dict | None = None,
    callbacks: list | None = None,
    overwrite: bool = False,
) -> Path:
    """Train as configured; returns the run folder. `resume`: a checkpoint to continue from exactly
    (model, optimizer, schedule and data position; its run folder's metrics.csv is continued);
    `overrides`: {section: {key: value}} on top of the YAML; `callbacks`: extra Lightning callbacks;
    `overwrite`: replace an earlier run in the same folder (without it or `resume`, such a folder is an
    error, raised before anything is built)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    cfg = resolve_config(config_path, overrides)
    run_dir = run_dir_of(cfg, config_path)
    if rank_zero_only.rank == 0:  # DDP workers relaunched from this script find the folder rank 0 claimed
        claim_run_folder(run_dir, resume, overwrite)
    run = dict(cfg["run"])
    threads = run.get("threads")
    module, datamodule, mcfg, dcfg = build(cfg)
    if run.get("init_from") and not resume:  # e.g. step 2 starting from step 1's weights (fresh optimizer)
        init_trainable(module.model, run["init_from"])
    if rank_zero_only.rank == 0:  # DDP workers relaunched from this script must not write concurrently
        prepare_instructions(dcfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_last=True,
        every_n_train_steps=int(run.get("checkpoint_every", 100)),
    )
    extra = [TorchThreads(threads)] if threads else []
    previous = None
    with warnings.catch_warnings():
        # the frozen backbone is in eval mode on purpose (no dropout); Lightning warns about it
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        trainer = pl.Trainer(
            default_root_dir=run_dir,
            logger=[
                CSVLogger(run_dir, name="", version=""),
                TensorBoardLogger(run_dir, name="tb", version=""),
            ],
            callbacks=[checkpoint, DataProgress(), LearningRateMonitor("step"), *extra, *(callbacks or [])],
            **trainer_arguments(cfg, mcfg, dcfg),
        )
        if trainer.global_rank == 0:
            print(module.model.parameter_table())
            if threads:  # the cache fill runs here, before the TorchThreads callback would set them
                torch.set_num_threads(int(threads))
            for fill in fill_caches(module.model, datamodule.tokenizer, dcfg, trainer.strategy.root_device):
                print(fill)
            if resume or overwrite:  # the folder is this run's, or was emptied of the earlier run's files
                warnings.filterwarnings("ignore", message=r".*directory .* exists and is not empty.*")
            if resume and (run_dir / "metrics.csv").is_file():  # CSVLogger would replace it: merged below
                previous = _read_metrics(run_dir / "metrics.csv"), _checkpoint_step(resume)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    if trainer.global_rank == 0:
        if previous is not None:
            _merge_metrics(run_dir / "metrics.csv", *previous)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        plot_run(run_dir)
    return run_dir


def init_trainable(model: MoAI, checkpoint: str | Path) -> None:
    """Load the trained weights of a checkpoint (or a run folder's last one) into `model`; nothing else."""
    from trainer.export import checkpoint_weights, find_checkpoint

    ckpt = torch.load(find_checkpoint(checkpoint), map_location="cpu", weights_only=False)
    model.load_trainable(checkpoint_weights(ckpt), strict=False)


def _read_metrics(path: Path) -> list[dict]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _checkpoint_step(path: str | Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", 0))


def _merge_metrics(path: Path, earlier: list[dict], resume_step: int) -> None:
    """metrics.csv of a resumed run = the rows logged before the checkpoint's step + the new ones
    (rows logged after the checkpoint by the interrupted run were replayed, so they are dropped)."""
    import csv

    kept = [r for r in earlier if r.get("step") not in (None, "") and int(r["step"]) < resume_step]
    new = _read_metrics(path) if path.is_file() else []
    keys = sorted({k for r in kept + new for k in r})
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(kept + new)


def moving_average(values, k: int) -> list[float]:
    """Trailing mean over the last `k` values (fewer at the start), for noisy per-batch losses."""
    return [sum(values[max(0, i - k + 1) : i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(values))]


def plot_run(run_dir: Path) -> None:
    """loss.png (train/val loss) and routing.png (mean gate weight per expert per mixer layer)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.csv").is_file():  # fewer steps than log_every_n_steps: nothing was logged
        return
    with open(run_dir / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and value not in ("", None):
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "val_loss"):
        if key in series:
            steps, values = zip(*series[key], strict=True)
            line = ax.plot(steps, values, alpha=0.35 if key == "train_loss" else 1.0, label=key)[0]
            if key == "train_loss" and len(values) > 4:  # one batch is noisy: add a moving average
                k = max(2, len(values) // 12)
                smooth = moving_average(values, k)
                ax.plot(steps, smooth, color=line.get_color(), label=f"train_loss (mean of {k})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title(run_dir.name)
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=110)
    plt.close(fig)
    gates = sorted(k for k in series if k.startswith("gate/"))
    if gates:
        layers = sorted({k.split("/")[1].split("_")[0] for k in gates}, key=lambda name: int(name[1:]))
        fig, axes = plt.subplots(len(layers), 2, figsize=(9, 2.6 * len(layers)), squeeze=False)
        for i, layer in enumerate(layers):
            for s, side in enumerate(SIDES):
                ax = axes[i][s]
                for expert in EXPERT_NAMES[s]:
                    key = f"gate/{layer}_{side}_{expert}"
                    if key in series:
                        ax.plot(*zip(*series[key], strict=True), label=expert)
                ax.set_title(f"mixer in LLM layer {int(layer[1:]) + 1}, {side} side")
                ax.set_ylim(0, 1)
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run_dir / "routing.png", dpi=110)
        plt.close(fig)


def cache_for_config(
    config: str,
    dataset: str | None = None,
    warehouse: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
) -> list[CacheFill]:
    """`moai cache`: fill both caches for a training config (its dataset and warehouse unless given);
    `batch_size` is the vision tower's batch here (no training runs)."""
    data = {"dataset": dataset, "warehouse": warehouse}
    cfg = resolve_config(config, {"data": {k: v for k, v in data.items() if v is not None}})
    if batch_size:
        cfg["data"]["batch_size"] = batch_size
    if cfg["run"].get("threads"):
        torch.set_num_threads(int(cfg["run"]["threads"]))
    module, datamodule, _, dcfg = build(cfg)
    prepare_instructions(dcfg)  # the vision cache covers the images that instructions use
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return list(fill_caches(module.model, datamodule.tokenizer, dcfg, device, only_enabled=False))
