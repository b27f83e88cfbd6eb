"""`moai train --config configs/<name>.yaml`: train MoAI's Compressor and Mixer with Lightning.

The YAML has LightningCLI-style sections:

    seed_everything: 0
    model:   {preset: tiny, mode: step2, ...any MoAIConfig field}
    data:    {dataset: sample, batch_size: 4, ...any DataConfig field}
    optim:   {lr: 1.0e-3, weight_decay: 0.0, eta_min: 1.0e-5, warmup_steps: 10}
    trainer: {max_steps: 300, log_every_n_steps: 5, ...any lightning.Trainer argument}
    run:     {name: tiny-sample, out: outputs/train}

Outputs in `<out>/<name>/`: `metrics.csv` (train_loss, lr, gate means), TensorBoard logs,
checkpoints holding only trainable parameters plus the data position (exact mid-epoch resume),
`loss.png` and `routing.png`.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from trainer.data import DataConfig, WarehouseDataModule
from trainer.model import EXPERT_NAMES, SIDES, MoAI, MoAIConfig


def load_config(path: str | Path) -> dict[str, Any]:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    for section in ("model", "data", "optim", "trainer", "run"):
        raw.setdefault(section, {})
    return raw


def model_config(section: dict) -> MoAIConfig:
    section = dict(section)
    preset = section.pop("preset", "tiny")
    return MoAIConfig.preset(preset, **section)


def data_config(section: dict, model_cfg: MoAIConfig) -> DataConfig:
    known = {f.name for f in fields(DataConfig)}
    unknown = set(section) - known
    if unknown:
        raise ValueError(f"unknown data keys {sorted(unknown)}; known: {sorted(known)}")
    return DataConfig(**{"image_token_id": model_cfg.image_token_id, "use_aux": model_cfg.use_aux, **section})


class MoAITrainingModule(pl.LightningModule):
    """Owns the step: loss, routing statistics, optimizer; checkpoints keep trainable tensors only."""

    def __init__(self, model_cfg: MoAIConfig, optim: dict):
        super().__init__()
        self.model = MoAI(model_cfg)
        self.optim = {"lr": 1e-3, "weight_decay": 0.0, "eta_min": 1e-5, "warmup_steps": 0, **optim}
        self.strict_loading = False  # checkpoints hold only the trainable parameters

    def training_step(self, batch, batch_idx):
        out = self.model.forward_batch(batch, step=self.global_step, return_logits=False)
        size = batch["input_ids"].shape[0]
        self.log("train_loss", out.loss, prog_bar=True, batch_size=size)
        if out.gate_stats is not None:
            for layer, stats in enumerate(out.gate_stats.detach()):
                for s, side in enumerate(SIDES):
                    for e, expert in enumerate(EXPERT_NAMES[s]):
                        self.log(f"gate/l{layer}_{side}_{expert}", stats[s, e], batch_size=size)
        return out.loss

    def validation_step(self, batch, batch_idx):
        out = self.model.forward_batch(batch, step=self.global_step, return_logits=False)
        self.log("val_loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.optim["lr"], weight_decay=self.optim["weight_decay"])
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
        checkpoint["moai_config"] = self.model.config.__dict__

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
        self.model.load_trainable(state)


class DataProgress(pl.Callback):
    """Advance the data position only for batches the optimizer actually consumed."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.datamodule.advance()


def prepare_instructions(dcfg: DataConfig) -> int:
    """Import the dataset's QA/caption files into the warehouse (new rows only)."""
    from pipeline.corpus import resolve_corpus
    from trainer.instructions import import_instructions
    from warehouse.store import Warehouse

    return import_instructions(Warehouse(dcfg.warehouse), resolve_corpus(dcfg.dataset))


def build(cfg: dict):
    pl.seed_everything(int(cfg.get("seed_everything", 0)), workers=True)
    mcfg = model_config(cfg["model"])
    dcfg = data_config(cfg["data"], mcfg)
    return MoAITrainingModule(mcfg, cfg["optim"]), WarehouseDataModule(dcfg), mcfg, dcfg


def train(config_path: str | Path, resume: str | None = None, overrides: dict | None = None) -> Path:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    cfg = load_config(config_path)
    for section, values in (overrides or {}).items():
        cfg.setdefault(section, {}).update(values)
    module, datamodule, mcfg, dcfg = build(cfg)
    prepare_instructions(dcfg)
    run = {"name": Path(config_path).stem, "out": "outputs/train", **cfg["run"]}
    run_dir = Path(run["out"]) / run["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    print(module.model.parameter_table())
    trainer_args = {"max_steps": 300, "log_every_n_steps": 5, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "accelerator": "auto", "devices": 1, **cfg["trainer"]}
    if mcfg.mode == "step1" and trainer_args.get("strategy", "auto") == "ddp":
        trainer_args["strategy"] = "ddp_find_unused_parameters_true"  # step 1 leaves experts unused
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True,
                                 every_n_train_steps=int(run.get("checkpoint_every", 100)))
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        logger=[CSVLogger(run_dir, name="", version=""), TensorBoardLogger(run_dir, name="tb", version="")],
        callbacks=[checkpoint, DataProgress()],
        **trainer_args,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    if trainer.global_rank == 0:
        plot_run(run_dir)
    return run_dir


def plot_run(run_dir: Path) -> None:
    """loss.png (train/val loss) and routing.png (mean gate weight per expert per mixer layer)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(run_dir / "metrics.csv", encoding="utf-8")))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and value not in ("", None):
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "val_loss"):
        if key in series:
            ax.plot(*zip(*series[key]), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title(run_dir.name)
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=110)
    plt.close(fig)
    gates = sorted(k for k in series if k.startswith("gate/"))
    if gates:
        layers = sorted({k.split("/")[1].split("_")[0] for k in gates})
        fig, axes = plt.subplots(len(layers), 2, figsize=(9, 2.6 * len(layers)), squeeze=False)
        for i, layer in enumerate(layers):
            for s, side in enumerate(SIDES):
                ax = axes[i][s]
                for expert in EXPERT_NAMES[s]:
                    key = f"gate/{layer}_{side}_{expert}"
                    if key in series:
                        ax.plot(*zip(*series[key]), label=expert)
                ax.set_title(f"mixer {layer}, {side} side")
                ax.set_ylim(0, 1)
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run_dir / "routing.png", dpi=110)
        plt.close(fig)
