"""Training YAML: the sections (model, data, optim, trainer, run) read through the one strict config
reader (core/config.py), so a typo or an impossible value is one line naming the file and the key; and
the run folder it names, which one run owns (claim_run_folder)."""

from __future__ import annotations

import inspect
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import above, at_least, between, check_mapping, fields_of, one_of, read_yaml, shown, typed
from core.errors import RunFolderError
from core.paths import config_file
from trainer.inputs import PROMPT_FORMATS, DataConfig
from trainer.model import AUX_ENCODERS, EXPERT_INITS, MODES, PRESETS, MoAIConfig

SECTIONS = ("model", "data", "optim", "trainer", "run")


@dataclass
class TrainConfig:
    """The top level of a training YAML (see the module docstring for each section)."""

    seed_everything: int = 0
    model: dict[str, Any] | None = None  # `preset` + MoAIConfig fields
    data: dict[str, Any] | None = None  # DataConfig fields
    optim: dict[str, Any] | None = None  # OptimConfig fields
    trainer: dict[str, Any] | None = None  # lightning.Trainer arguments
    run: dict[str, Any] | None = None  # RunConfig fields


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    eta_min: float = 1e-5  # the cosine schedule ends here
    warmup_steps: int = 0


@dataclass
class RunConfig:
    name: str | None = None  # default: the config file's stem
    out: str = "outputs/train"
    checkpoint_every: int = 100
    threads: int | None = None  # torch intra-op threads per training process
    init_from: str | None = None  # a checkpoint or run folder whose trained weights start this run


# Value checks beyond the type. The choices are the ones MoAI.__init__ / MoAIConfig.preset accept: a typo
# such as `mode: stepp2` must stop here, with the choices, not as a traceback once the model is built.
MODEL_CHECKS = {
    "preset": one_of(*PRESETS),
    "mode": one_of(*MODES),
    "aux_encoder": one_of(*AUX_ENCODERS),
    "expert_init": one_of(*EXPERT_INITS),
    "gate_top_k": between(0, 3),  # of the 3 experts per side; 0: dense
    "image_size": at_least(1),
    "aux_positions": at_least(0),
    "step1_steps": at_least(0),
    "balance_loss_coef": at_least(0),
    **dict.fromkeys(
        (
            "num_queries",
            "compressor_depth",
            "compressor_heads",
            "compressor_head_dim",
            "compressor_ff_mult",
            "mixer_every",
            "mixer_heads",
            "mixer_rank",
        ),
        at_least(1),
    ),
}
DATA_CHECKS = {
    "prompt_format": one_of(*PROMPT_FORMATS),
    "num_workers": at_least(0),
    "image_cache": at_least(0),
    **dict.fromkeys(
        ("batch_size", "image_size", "max_prompt_tokens", "max_answer_tokens", "max_aux_tokens"), at_least(1)
    ),
}
OPTIM_CHECKS = {
    "lr": above(0),
    "weight_decay": at_least(0),
    "eta_min": at_least(0),
    "warmup_steps": at_least(0),
}
RUN_CHECKS = {"checkpoint_every": at_least(1), "threads": at_least(1)}


def load_config(path: str | Path, lightning: bool = True) -> dict[str, Any]:
    """The YAML as a plain dict (every section present), after `check_config`. A path that does not
    exist finds the shipped config of that name (core.paths.config_file)."""
    path = config_file(path)
    return check_config(read_yaml(path), shown(path), lightning)


def check_config(
    cfg: dict[str, Any], where: str = "training config", lightning: bool = True
) -> dict[str, Any]:
    """Refuse what a training config cannot mean (one line naming `where` and the key); fill in empty
    sections. The sections stay plain dicts: they are saved as given in run folders and checkpoints.
    `lightning=False` leaves out the `trainer` section, the one check that imports Lightning (~8 s)."""
    check_mapping(cfg, fields_of(TrainConfig), where)
    for section in SECTIONS:
        if cfg.get(section) is None:  # absent, or every key commented out
            cfg[section] = {}
    mcfg = model_config(cfg["model"], where)
    data_config(cfg["data"], mcfg, where=where)
    typed(OptimConfig, cfg["optim"], where, "optim", OPTIM_CHECKS)
    typed(RunConfig, cfg["run"], where, "run", RUN_CHECKS)
    if not lightning:
        return cfg
    import lightning.pytorch as pl

    trainer_keys = list(inspect.signature(pl.Trainer.__init__).parameters)[1:]  # Lightning's own arguments
    check_mapping(cfg["trainer"], dict.fromkeys(trainer_keys, Any), where, "trainer")
    return cfg


def model_config(section: dict, where: str = "training config") -> MoAIConfig:
    section = dict(
        check_mapping(section, {"preset": str, **fields_of(MoAIConfig)}, where, "model", MODEL_CHECKS)
    )
    return MoAIConfig.preset(section.pop("preset", "tiny"), **section)


def data_config(
    section: dict, model_cfg: MoAIConfig, image_size: int | None = None, where: str = "training config"
) -> DataConfig:
    """The `data` section on top of what the model fixes: its image placeholder, aux switch and (when
    given, e.g. `model.image_size`) the vision tower's input resolution."""
    check_mapping(section, fields_of(DataConfig), where, "data", DATA_CHECKS)
    implied = {"image_token_id": model_cfg.image_token_id, "use_aux": model_cfg.use_aux}
    if image_size is not None:
        implied["image_size"] = image_size
    return DataConfig(**{**implied, **section})


def resolve_config(config_path: str | Path, overrides: dict | None = None) -> dict[str, Any]:
    """The YAML with `overrides` ({section: {key: value}}) applied on top."""
    cfg = load_config(config_path)
    if not overrides:
        return cfg
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return check_config(cfg, f"{shown(config_path)} (with overrides)")


def run_dir_of(cfg: dict, config_path: str | Path) -> Path:
    run = {"name": Path(config_path).stem, "out": "outputs/train", **cfg["run"]}
    return Path(run["out"]) / run["name"]


def find_checkpoint(run: str | Path) -> Path:
    """A checkpoint file, or a run folder's newest `checkpoints/last*.ckpt` (else its newest checkpoint).
    A second training run into the same folder leaves the first one's `last.ckpt` and writes its own as
    `last-v1.ckpt` (Lightning's versioning), so the newest one is the run's, not `last.ckpt`."""
    run = Path(run)
    if run.is_file():
        return run
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    found = sorted(folder.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    found = found or sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no checkpoint in {folder}")
    return found[-1]


# what a training run writes into its folder (CSVLogger adds hparams.yaml); --overwrite removes these only
RUN_FILES = ("checkpoints", "tb", "metrics.csv", "hparams.yaml", "config.yaml", "loss.png", "routing.png")


def claim_run_folder(run_dir: Path, resume: str | None = None, overwrite: bool = False) -> None:
    """Refuse to start a new run in a folder holding an earlier run's checkpoints, unless it is resumed or
    replaced. Lightning would keep the old files beside the new ones (versioning its own as last-v1.ckpt),
    and whatever later reads the folder could take the earlier run's weights for this one's."""
    if resume and overwrite:
        raise RunFolderError(
            "--resume continues a run and --overwrite deletes it: give one of them, not both"
        )
    found = list((run_dir / "checkpoints").glob("*.ckpt"))
    if resume or not found:
        return
    if overwrite:
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    latest = find_checkpoint(run_dir)  # what an export or run.init_from of this folder would read
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(latest.stat().st_mtime))
    raise RunFolderError(
        f"the run folder {run_dir} already holds an earlier run's checkpoints ({len(found)} file(s), the latest "
        f"{latest.name}, written {when}). A new run there would leave them beside its own, and a later "
        f"export or run.init_from could read the earlier weights. To continue that run exactly, pass "
        f"--resume {latest}; to replace it, pass --overwrite (`make train TRAIN_ARGS=--overwrite`; it "
        "deletes that run's checkpoints, metrics, logs and plots, nothing else); to keep it, give this run "
        "another run.name or run.out."
    )


def check_before_training(
    config_path: str | Path, resume: str | None = None, overwrite: bool = False
) -> None:
    """What `moai train` refuses before Lightning is imported (seconds sooner): a config error outside its
    `trainer` section, and a run folder holding an earlier run's checkpoints. Deletes nothing: with
    --overwrite, `train` empties the folder once it starts."""
    cfg = load_config(config_path, lightning=False)
    if resume or not overwrite:  # so claim_run_folder can refuse here, and never deletes
        claim_run_folder(run_dir_of(cfg, config_path), resume, overwrite)
