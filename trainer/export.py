"""A training run → a self-contained folder that rebuilds the model, and greedy answers from it.

    export_run(run_dir, out_dir)   the run's last checkpoint → out_dir
    load_exported(out_dir)         → MoAI (eval mode), the same logits as the checkpoint
    load_tokenizer(out_dir)        → the tokenizer the run trained with
    generate_answer(model, question, image_path, aux_text, tokenizer)  → answer text (greedy)

The folder holds

    moai_config.json     every MoAIConfig field (projector_weights cleared: the projector is in the weights)
    data_config.json     the DataConfig (image size and normalisation, token limits, tokenizer choice)
    weights.safetensors  the trained parameters (compressor, mixers, gates) plus the projector
    tokenizer.json       {"kind": "byte"} or {"kind": "hf", "path": "tokenizer"} (files saved beside it)
    export.json          format, source checkpoint and step, the backbone fingerprints, and the SHA-256 of
                         every other file (written last; load_exported checks them)

The folder is written beside its destination and moved into place whole, so a crash or a kill mid-export
leaves the earlier export (or none) readable, never a mix of two; the next export removes what a killed
one left and moves back an earlier export a kill left aside. A destination that exists and is not an
export is refused before anything is read.

The frozen backbone is not copied. Hub/local backbones are reloaded from their id; the tiny random
ones (tiny-llama, tiny-clip, ...) are rebuilt from config and seed, which is deterministic (MoAI.__init__
seeds a forked RNG), and `export.json` keeps a SHA-256 of their weights so that a library change that
alters the random init is caught on load instead of silently giving a different model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from core.errors import ExportError
from trainer.config import find_checkpoint
from trainer.inputs import (
    ByteTokenizer,
    DataConfig,
    HFTokenizer,
    aux_ids,
    format_prompt,
    image_tensor,
    load_image,
    make_tokenizer,
)
from trainer.model import MoAI, MoAIConfig, backbone_fingerprints

FORMAT = "moai-forge-export/1"


def _read_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def model_config_from_dict(values: dict) -> MoAIConfig:
    known = {f.name for f in fields(MoAIConfig)}
    return MoAIConfig(**{k: v for k, v in values.items() if k in known})


def data_config_from_dict(values: dict) -> DataConfig:
    known = {f.name: f for f in fields(DataConfig)}
    out = {k: v for k, v in values.items() if k in known}
    for key in ("image_mean", "image_std"):
        if key in out:
            out[key] = tuple(out[key])
    return DataConfig(**out)


def checkpoint_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    """A training checkpoint's trained parameters, named as in MoAI (the Lightning module's "model." cut)."""
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}


def _model_from_checkpoint(ckpt: dict) -> MoAI:
    model = MoAI(model_config_from_dict(ckpt["moai_config"]))
    model.load_trainable(checkpoint_weights(ckpt))
    return model.eval()


def load_checkpoint_model(run: str | Path) -> MoAI:
    """The model of a training checkpoint (or a run folder's last one), in eval mode."""
    return _model_from_checkpoint(_read_checkpoint(find_checkpoint(run)))


def _exported_state(model: MoAI) -> dict[str, torch.Tensor]:
    state = model.state_dict_trainable()
    state.update({n: p.detach().clone() for n, p in model.projector.named_parameters(prefix="projector")})
    return {k: v.contiguous() for k, v in state.items()}


def tokenizer_description(tokenizer, out_dir: Path) -> dict:
    if isinstance(tokenizer, ByteTokenizer):
        return {
            "kind": "byte",
            "vocab_size": ByteTokenizer.vocab_size,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "image_token_id": tokenizer.image_token_id,
        }
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.tokenizer.save_pretrained(out_dir / "tokenizer")
        return {
            "kind": "hf",
            "path": "tokenizer",
            "source": tokenizer.source,
            "gguf_file": tokenizer.gguf_file,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    raise TypeError(f"cannot describe tokenizer {type(tokenizer).__name__}")


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the folder described in the module docstring from a run folder or checkpoint file."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not _replaceable(out):
        raise ExportError(
            f"{out} exists and is not a moai-forge export (no {FORMAT} export.json in it), so exporting there "
            "would mix this model's files with what it holds. Give an empty or new folder as the destination."
        )
    path = find_checkpoint(run_dir)
    from trainer.config import data_config

    ckpt = _read_checkpoint(path)
    model = _model_from_checkpoint(ckpt)
    mcfg = model.config
    dcfg = data_config(dict((ckpt.get("moai_run_config") or {}).get("data") or {}), mcfg, model.image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        exported_cfg = dict(asdict(mcfg), projector_weights=None)
        (tmp / "moai_config.json").write_text(json.dumps(exported_cfg, indent=2), encoding="utf-8")
        (tmp / "data_config.json").write_text(json.dumps(asdict(dcfg), indent=2), encoding="utf-8")
        save_file(_exported_state(model), str(tmp / "weights.safetensors"), metadata={"format": FORMAT})
        description = tokenizer_description(make_tokenizer(dcfg.tokenizer, mcfg), tmp)
        (tmp / "tokenizer.json").write_text(json.dumps(description, indent=2), encoding="utf-8")
        meta = {
            "format": FORMAT,
            "checkpoint": str(path),
            "global_step": ckpt.get("global_step"),
            "parameters": model.parameter_counts(),
            "backbone_fingerprints": backbone_fingerprints(model),
            "files": _file_digests(tmp),
        }
        (tmp / "export.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replaceable(out: Path) -> bool:
    """An empty folder or an earlier export may be replaced; anything else might be someone's files."""
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    try:
        return json.loads((out / "export.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _clean_leftovers(out: Path) -> None:
    """What a kill -9 mid-export leaves beside `out`: the partial folders of processes that are gone are
    removed; an earlier export moved aside and never replaced (a kill between the two renames of
    `_publish`) is moved back, so it is not lost."""
    for partial in out.parent.glob(f".{out.name}.partial-*"):
        pid = partial.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)
    olds = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not out.exists():
        olds.pop().rename(out)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _file_digests(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under `folder` except export.json."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "export.json":
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` to `out`, replacing an earlier export there; each step is a rename
    on one filesystem, so `out` is at any moment the old export, the new one, or briefly absent."""
    for f in tmp.rglob("*"):  # contents on disk before the renames that make them visible
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if not out.exists():
        tmp.rename(out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def load_exported(out_dir: str | Path, verify_backbone: bool = True) -> MoAI:
    """Rebuild the exported model (eval mode). Raises if a rebuilt random backbone differs from the export's."""
    from safetensors.torch import load as load_safetensors

    out = Path(out_dir)
    meta = json.loads((out / "export.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{out} is not a {FORMAT} export (format {meta.get('format')!r})")
    # each file is read once: the weights whose digest is checked are the bytes loaded below
    changed, weights = [], None
    for name, digest in meta.get("files", {}).items():
        data = (out / name).read_bytes() if (out / name).is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            changed.append(name)
        elif name == "weights.safetensors":
            weights = data
    if changed:
        raise ExportError(
            f"the export {out} is damaged: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} "
            "missing or not the file the export wrote (its SHA-256 differs from export.json's). Nothing was "
            "loaded; export the run again (`moai export-model`)."
        )
    mcfg = model_config_from_dict(json.loads((out / "moai_config.json").read_text(encoding="utf-8")))
    model = MoAI(mcfg)
    if verify_backbone:
        expected, found = meta.get("backbone_fingerprints", {}), backbone_fingerprints(model)
        bad = sorted(k for k in expected if found.get(k) != expected[k])
        if bad:
            raise RuntimeError(
                f"the rebuilt random {', '.join(bad)} differs from the exported model's "
                "(different torch/transformers init?); re-export with these versions"
            )
    state = load_safetensors(weights if weights is not None else (out / "weights.safetensors").read_bytes())
    del weights
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in state)
    if missing:
        raise KeyError(f"export lacks trained parameters {missing[:5]}")
    model.load_trainable(state, strict=False)  # the projector is included even when it was frozen
    return model.eval()


def load_data_config(out_dir: str | Path) -> DataConfig:
    return data_config_from_dict(json.loads((Path(out_dir) / "data_config.json").read_text(encoding="utf-8")))


def load_tokenizer(out_dir: str | Path):
    out = Path(out_dir)
    description = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    if description["kind"] == "byte":
        return ByteTokenizer()
    if description["kind"] == "hf":
        from transformers import AutoTokenizer

        path = out / description["path"]
        return HFTokenizer(AutoTokenizer.from_pretrained(path), str(path))
    raise ValueError(f"unknown tokenizer kind {description['kind']!r}")


def generate_answer(
    model: MoAI,
    question: str,
    image_path: str | Path,
    aux_text: str,
    tokenizer,
    data_cfg: DataConfig | None = None,
    max_new_tokens: int = 32,
    aux_map=None,
) -> str:
    """Greedy answer to one question about one image, with its aux text, formatted exactly as in training
    (`data_cfg`: the run's DataConfig, e.g. `load_data_config(out_dir)`; default: the model's image size).
    `aux_map`: the image's panoptic-map image (inputs.aux_map_image), when the model was trained with one."""
    item = (question, image_path, aux_text, aux_map)
    return generate_answers(model, [item], tokenizer, data_cfg, max_new_tokens)[0]


def generate_answers(
    model: MoAI,
    items: list[tuple],
    tokenizer,
    data_cfg: DataConfig | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    images: dict | None = None,
) -> list[str]:
    """Greedy answers to (question, image path, aux text[, aux map image]) items, `batch_size` at a time
    (prompts left-padded, aux right-padded with its mask): the same answers as one at a time. `images`:
    an optional dict used as a cache of decoded, resized images by path."""
    cfg = data_cfg or DataConfig(image_size=model.image_size)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    images = {} if images is None else images
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        prompts, auxes, pixels, maps = [], [], [], []
        for question, image_path, aux_text, *aux_map in chunk:
            maps.append(aux_map[0] if aux_map else None)
            prompts.append(
                format_prompt(
                    question, tokenizer, model.config.image_token_id, cfg.max_prompt_tokens, cfg.prompt_format
                )
            )
            auxes.append(aux_ids(aux_text, tokenizer, cfg.max_aux_tokens) if aux_text else [])
            key = str(image_path)
            if key not in images:
                images[key] = load_image(image_path, cfg.image_size)
            pixels.append(image_tensor(images[key], cfg.image_mean, cfg.image_std))
        T, A = max(map(len, prompts)), max(map(len, auxes))
        input_ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), T), dtype=torch.long)
        for b, prompt in enumerate(prompts):  # left padding: every row ends where generation starts
            input_ids[b, T - len(prompt) :] = torch.tensor(prompt)
            attention[b, T - len(prompt) :] = 1
        kwargs = {}
        if A:
            aux_input = torch.full((len(chunk), A), pad, dtype=torch.long)
            aux_mask = torch.zeros((len(chunk), A), dtype=torch.long)
            for b, aux in enumerate(auxes):
                aux_input[b, : len(aux)] = torch.tensor(aux, dtype=torch.long)
                aux_mask[b, : len(aux)] = 1
            kwargs = {"aux_input_ids": aux_input.to(device), "aux_attention_mask": aux_mask.to(device)}
        if any(m is not None for m in maps):  # MoAI's panoptic map; a missing one is a void map
            void = np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8)
            arrays = [void if m is None else m for m in maps]
            kwargs["aux_pixel_values"] = torch.stack(
                [image_tensor(a, cfg.image_mean, cfg.image_std) for a in arrays]
            ).to(device)
        rows = model.generate(
            input_ids.to(device),
            attention_mask=attention.to(device),
            pixel_values=torch.stack(pixels).to(device),
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            **kwargs,
        )
        answers += [tokenizer.decode(ids).strip() for ids in rows]
    return answers


def answer_about(model_dir: str | Path, dataset: str, image: str, question: str, warehouse) -> str:
    """`moai generate`: an exported model's answer about one warehouse image (file name, stem or id),
    given the image's current aux text."""
    from corpora.layout import find_image
    from corpora.resolve import resolve_corpus
    from warehouse.current import current_rows_sql
    from warehouse.store import Warehouse

    ref = find_image(resolve_corpus(dataset), image)
    aux = Warehouse(warehouse).query(
        f"SELECT text FROM ({current_rows_sql('aux_text', 'aux')}) WHERE dataset = ? AND image_id = ?",
        [dataset, ref.image_id],
    )
    text = aux.column("text")[0].as_py() if aux.num_rows else ""
    model = load_exported(model_dir)
    data_cfg = load_data_config(model_dir)
    aux_map = None
    if data_cfg.aux_map and model.config.use_aux:
        from trainer.data import aux_maps
        from trainer.inputs import aux_map_image

        maps = aux_maps(Warehouse(warehouse), dataset)
        if maps is not None:
            aux_map = aux_map_image(maps.get(ref.image_id, []), data_cfg.image_size)
    return generate_answer(
        model, question, ref.path, text, load_tokenizer(model_dir), data_cfg, aux_map=aux_map
    )
