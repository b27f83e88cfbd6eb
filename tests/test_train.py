"""The Lightning trainer end to end on a freshly annotated sample warehouse (CPU, offline, tiny preset):
exact mid-epoch resume, 2-process DDP, run outputs, and the export round trip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from trainer.data import collate
from trainer.export import (
    export_run,
    find_checkpoint,
    generate_answer,
    generate_answers,
    load_checkpoint_model,
    load_data_config,
    load_exported,
    load_tokenizer,
)
from trainer.inputs import aux_map_image
from trainer.model import MoAI, MoAIConfig
from trainer.train import init_trainable, make_strategy, train

REPO = Path(__file__).resolve().parents[1]
STEPS = 6  # batch 8 of 32 examples: 4 steps per epoch, so the runs cross an epoch boundary


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, sample_corpus, annotated_sample):
    """An annotated sample warehouse, MOAI_DATA pointing at its corpus, and a fast training config."""
    tmp = tmp_path_factory.mktemp("train")
    data_root = sample_corpus.root.parent
    shutil.copytree(annotated_sample, tmp / "warehouse")
    config = {
        "seed_everything": 0,
        "model": {"preset": "tiny", "mode": "step2"},
        "data": {
            "dataset": "sample",
            "warehouse": str(tmp / "warehouse"),
            "batch_size": 8,
            "max_aux_tokens": 128,
            "image_cache": 64,
        },
        "optim": {"lr": 3e-3, "eta_min": 1e-4, "warmup_steps": 2},
        "trainer": {
            "max_steps": STEPS,
            "log_every_n_steps": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
        },
        "run": {"out": str(tmp / "runs"), "name": "full", "checkpoint_every": 3, "threads": 1},
    }
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOAI_DATA", str(data_root))
        yield {"config": path, "tmp": tmp, "data_root": data_root}


class Recorder(pl.Callback):
    """(global step, sample indices, loss) of every training batch."""

    def __init__(self):
        self.steps: list[tuple[int, list[int], float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append((trainer.global_step, batch["index"].tolist(), float(outputs["loss"])))


class StopAt(pl.Callback):
    """Interrupt training after `step` optimizer steps (the schedule still plans for max_steps)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.fixture(scope="module")
def full_run(workspace):
    recorder = Recorder()
    run_dir = train(workspace["config"], callbacks=[recorder])
    return run_dir, recorder.steps


def test_mid_epoch_resume_replays_the_uninterrupted_run(workspace, full_run):
    run_dir, full = full_run
    assert [s for s, _, _ in full] == list(range(1, STEPS + 1))
    epoch0 = [i for _, idx, _ in full[:4] for i in idx]
    assert sorted(epoch0) == list(range(32))  # one epoch is one permutation of the 32 QA pairs
    assert [i for _, idx, _ in full[4:] for i in idx] != epoch0[:16]  # and the next epoch is reshuffled

    first, second = Recorder(), Recorder()
    part = {"run": {"name": "part"}}
    part_dir = train(workspace["config"], overrides=part, callbacks=[first, StopAt(3)])
    ckpt = part_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    assert state["WarehouseDataModule"] == {"epoch": 0, "step_in_epoch": 3, "seed": 0}
    keys = set(state["state_dict"])
    assert keys and all(k.startswith(("model.compressor.", "model.mixers.")) for k in keys), sorted(keys)[:5]
    assert not any(k.startswith(("model.llm.", "model.vision.", "model.projector.")) for k in keys)
    trained = {n for n, p in MoAI(MoAIConfig.preset("tiny")).named_parameters() if p.requires_grad}
    assert {k.removeprefix("model.") for k in keys} == trained

    train(workspace["config"], resume=str(ckpt), overrides=part, callbacks=[second])  # a fresh Trainer
    resumed = first.steps + second.steps
    assert [s for s, _, _ in resumed] == [s for s, _, _ in full]
    assert [idx for _, idx, _ in resumed] == [idx for _, idx, _ in full]
    torch.testing.assert_close(
        torch.tensor([loss for *_, loss in resumed]),
        torch.tensor([loss for *_, loss in full]),
        rtol=1e-5,
        atol=1e-6,
    )
    # the resumed run continues the interrupted run's metrics.csv instead of replacing it
    rows = (part_dir / "metrics.csv").read_text(encoding="utf-8").splitlines()
    header = rows[0].split(",")
    steps = sorted(
        {
            int(r.split(",")[header.index("step")])
            for r in rows[1:]
            if r.split(",")[header.index("train_loss")]
        }
    )
    assert steps == list(range(STEPS))  # train_loss is logged at global steps 0..5 (before each update)


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import lightning.pytorch as pl
import numpy as np
from trainer.train import init_trainable, make_strategy, train

class Record(pl.Callback):
    def __init__(self):
        self.batches = []
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append(batch["index"].tolist())
    def on_train_end(self, trainer, pl_module):
        out = Path(sys.argv[2]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world": trainer.world_size, "batches": self.batches,
                                   "strategy": type(trainer.strategy).__name__}))

overrides = {"model": {"mode": "step1"}, "data": {"batch_size": 4}, "run": {"name": "ddp"},
             "trainer": {"strategy": "ddp", "devices": 2, "max_steps": 3}}
train(sys.argv[1], overrides=overrides, callbacks=[Record()])
"""


def test_two_process_ddp_on_cpu(workspace):
    """Lightning's ddp relaunches the running script per rank, so the run is a script in a subprocess."""
    tmp = workspace["tmp"]
    script = tmp / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT), encoding="utf-8")
    out = tmp / "ddp_out"
    out.mkdir()
    env = {**os.environ, "MOAI_DATA": str(workspace["data_root"]), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(workspace["config"]), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["strategy"] == "DDPStrategy" for r in ranks)
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 3
    assert all(len(b) == 4 for r in ranks for b in r["batches"])
    seen = [[i for b in r["batches"] for i in b] for r in ranks]
    assert not set(seen[0]) & set(seen[1])  # 3 global batches of 8 from one permutation: disjoint
    assert len(set(seen[0]) | set(seen[1])) == 24
    assert (tmp / "runs" / "ddp" / "checkpoints" / "last.ckpt").is_file()


def test_run_outputs(full_run):
    run_dir, _ = full_run
    header = (run_dir / "metrics.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert "train_loss" in header and any(h.startswith("gate/") for h in header)
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    for name in ("loss.png", "routing.png"):
        assert (run_dir / name).stat().st_size > 1000
    ckpts = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any("step=6" in n for n in ckpts)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["name"] == "full"


def test_a_second_run_into_a_used_folder_is_refused_until_resumed_or_replaced(
    workspace, full_run, tmp_path, capsys
):
    """Training again into a folder that holds checkpoints would leave two runs' files side by side (the
    stale-checkpoint bug): refused in one paragraph naming both ways out, before anything is built and with
    nothing touched. --overwrite replaces the earlier run's files and only those."""
    from cli.main import main
    from core.errors import RunFolderError

    run_dir, _ = full_run
    out = tmp_path / "runs"
    shutil.copytree(run_dir, out / "full")
    (out / "full" / "checkpoints" / "only-the-earlier-run.ckpt").write_bytes(b"x")
    (out / "full" / "notes.txt").write_text("mine", encoding="utf-8")  # not a file a run writes
    config = tmp_path / "train.yaml"
    cfg = yaml.safe_load(workspace["config"].read_text(encoding="utf-8"))
    config.write_text(yaml.safe_dump({**cfg, "run": {**cfg["run"], "out": str(out)}}), encoding="utf-8")

    def files():
        return {
            p.relative_to(out): (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()
        }

    before = files()
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"moai train: the run folder {out / 'full'} already holds") and "\n" not in err
    assert "--resume" in err and "--overwrite" in err and "another run.name" in err
    assert files() == before
    with pytest.raises(RunFolderError, match="not both"):
        train(config, resume=str(out / "full" / "checkpoints" / "last.ckpt"), overwrite=True)
    assert files() == before

    assert main(["train", "--config", str(config), "--overwrite"]) == 0
    ckpts = {p.name for p in (out / "full" / "checkpoints").iterdir()}
    assert (
        "last.ckpt" in ckpts
        and not any("-v1" in n for n in ckpts)
        and "only-the-earlier-run.ckpt" not in ckpts
    )
    assert (out / "full" / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert find_checkpoint(out / "full").stat().st_mtime_ns > max(t for t, _ in before.values())


def test_a_run_shorter_than_the_log_interval_finishes_without_plots(workspace):
    from trainer.train import train

    run_dir = train(
        workspace["config"],
        overrides={"trainer": {"max_steps": 2, "log_every_n_steps": 5}, "run": {"name": "short"}},
    )
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / "loss.png").exists()


def test_export_round_trip_and_generate_answer(workspace, full_run, tmp_path):
    from trainer.data import WarehouseDataModule

    run_dir, _ = full_run
    out = export_run(run_dir, tmp_path / "export")
    assert {p.name for p in out.iterdir()} >= {
        "moai_config.json",
        "data_config.json",
        "weights.safetensors",
        "tokenizer.json",
        "export.json",
    }
    assert json.loads((out / "tokenizer.json").read_text())["kind"] == "byte"
    reference, model = load_checkpoint_model(run_dir), load_exported(out)
    dcfg = load_data_config(out)
    assert dcfg.max_aux_tokens == 128 and dcfg.batch_size == 8  # the run's data config travelled along
    data = WarehouseDataModule(dcfg)
    data.setup()
    items = [data.train_set[i] for i in range(4)]
    batch = collate(items, data.tokenizer.pad_token_id)
    logits = model.forward_batch(batch).logits
    assert torch.equal(logits, reference.forward_batch(batch).logits)
    untrained = MoAI(MoAIConfig.preset("tiny")).eval()
    assert not torch.allclose(logits, untrained.forward_batch(batch).logits)  # the weights did load
    init_trainable(untrained, run_dir)  # run.init_from: the trained weights only (step 1 → step 2)
    assert torch.equal(untrained.forward_batch(batch).logits, logits)

    meta = json.loads((out / "export.json").read_text())
    assert set(meta["backbone_fingerprints"]) == {"llm", "vision"}
    meta["backbone_fingerprints"]["llm"] = "0" * 64
    (out / "export.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="differs"):
        load_exported(out)

    # generate_answer formats the question, image, aux text and panoptic map exactly as training does
    tokenizer, row, item = load_tokenizer(out), data.train_set.rows[0], items[0]
    image = data.train_set.image_dirs[row["image_split"]] / row["file_name"]
    assert "aux_pixel_values" in batch  # the sample profile segments: MoAI's map tokens are on (data.aux_map)
    aux_map = aux_map_image(data.train_set.aux_maps.get(row["image_id"], []), dcfg.image_size)
    answer = generate_answer(
        model, row["question"], image, row["aux_text"], tokenizer, dcfg, max_new_tokens=8, aux_map=aux_map
    )
    aux = {"aux_input_ids": torch.tensor([item["aux"]])} if item["aux"] else {}
    ids = model.generate(
        torch.tensor([item["prompt"]]),
        pixel_values=item["pixel_values"][None],
        aux_pixel_values=item["aux_pixel_values"][None],
        max_new_tokens=8,
        eos_token_id=tokenizer.eos_token_id,
        **aux,
    )[0]
    assert isinstance(answer, str) and answer == tokenizer.decode(ids).strip()

    # many at once (left-padded prompts, padded aux; one without aux text) = one at a time
    rows = data.train_set.rows[:5]
    batch_items = [
        (
            r["question"],
            data.train_set.image_dirs[r["image_split"]] / r["file_name"],
            r["aux_text"] if k != 2 else "",
            aux_map_image(data.train_set.aux_maps.get(r["image_id"], []), dcfg.image_size)
            if k != 2
            else None,
        )
        for k, r in enumerate(rows)
    ]
    together = generate_answers(model, batch_items, tokenizer, dcfg, max_new_tokens=6, batch_size=4)
    alone = [generate_answers(model, [i], tokenizer, dcfg, max_new_tokens=6)[0] for i in batch_items]
    assert together == alone

    assert find_checkpoint(run_dir).name == "last.ckpt"


def test_export_is_all_or_nothing_and_a_damaged_one_is_refused(workspace, full_run, tmp_path, monkeypatch):
    """Attack the export folder: a crash mid-export leaves the earlier export whole and loadable; a file
    changed afterwards is refused on load, naming it; a folder that is not an export is never written to."""
    import trainer.export as export
    from core.errors import ExportError

    run_dir, _ = full_run
    other = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    other["state_dict"] = {k: v + 1 for k, v in other["state_dict"].items()}  # another model than the run's
    torch.save(other, tmp_path / "other.ckpt")
    out = export_run(tmp_path / "other.ckpt", tmp_path / "export")
    (out / "left-by-an-older-export.txt").write_text("x", encoding="utf-8")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):  # the weights are written by now: a kill here once left a mixed folder
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "tokenizer_description", crash)
    with pytest.raises(KeyboardInterrupt):
        export_run(run_dir, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "other.ckpt"]  # no partial folder left
    load_exported(out)

    # what a kill -9 leaves: a dead process's partial folder, and (killed between the two renames) the
    # earlier export moved aside with nothing in its place. The next export clears the one and restores the
    # other before it starts (it crashes here too, so what it restored is what is left).
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    partial = tmp_path / f".export.partial-{int(gone.stdout)}-0000"
    partial.mkdir()
    (partial / "weights.safetensors").write_bytes(b"half")
    out.rename(tmp_path / ".export.old-0000")
    with pytest.raises(KeyboardInterrupt):
        export_run(run_dir, out)
    monkeypatch.undo()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "other.ckpt"]

    assert export_run(run_dir, out) == out  # a re-export replaces the folder whole: no stale file survives
    assert not (out / "left-by-an-older-export.txt").exists()
    assert set(json.loads((out / "export.json").read_text())["files"]) == {
        "moai_config.json",
        "data_config.json",
        "weights.safetensors",
        "tokenizer.json",
    }
    weights = bytearray((out / "weights.safetensors").read_bytes())
    weights[-1] ^= 1
    (out / "weights.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ExportError, match=r"damaged: weights\.safetensors"):
        load_exported(out)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ExportError, match="not a moai-forge export"):
        export_run(run_dir, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_the_panoptic_map_is_painted_once_per_image_and_equals_a_fresh_one(workspace, full_run, monkeypatch):
    """Painting MoAI's map decodes every segment's full-size mask; with data.image_cache it is done once
    per image (the sample's 32 questions ask about 13 images), and the kept map is the one painted anew."""
    import trainer.data as data_module
    from trainer.config import resolve_config
    from trainer.inputs import image_tensor
    from trainer.train import build

    _, dm, _, dcfg = build(resolve_config(workspace["config"]))
    dm.setup("fit")
    ds, painted = dm.train_set, []
    paint = data_module.aux_map_image
    monkeypatch.setattr(
        data_module, "aux_map_image", lambda records, size: painted.append(1) or paint(records, size)
    )
    images = {r["image_id"] for r in ds.rows}
    assert len(ds) > len(images) and ds.aux_maps  # the sample's maps have segments to decode
    for _ in range(2):  # two epochs
        maps = [ds[i]["aux_pixel_values"] for i in range(len(ds))]
    assert len(painted) == len(images)
    for row, got in zip(ds.rows, maps, strict=True):
        fresh = paint(ds.aux_maps.get(row["image_id"], []), dcfg.image_size)
        assert torch.equal(got, image_tensor(fresh, dcfg.image_mean, dcfg.image_std))


def test_strategy_from_yaml():
    from lightning.pytorch.strategies import DDPStrategy

    assert make_strategy("ddp") == "ddp" and make_strategy("auto", step1=True) == "auto"
    assert make_strategy("ddp", step1=True) == "ddp_find_unused_parameters_true"
    assert make_strategy("ddp_spawn", step1=True) == "ddp_spawn_find_unused_parameters_true"
    ddp = make_strategy({"name": "ddp", "static_graph": False}, step1=True)
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs == {
        "static_graph": False,
        "find_unused_parameters": True,
    }
    with pytest.raises(ValueError):
        make_strategy({"name": "deepspeed"})


# --- prompt, answer and aux tokens (trainer/inputs.py) ----------------------------------------------


def _chat_tokenizer():
    """A small HF tokenizer with an instruct-style chat template (ChatML, as SmolLM2-Instruct's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from trainer.inputs import HFTokenizer

    vocab = ["<unk>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(32, 127)] + ["\n"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return HFTokenizer(fast, "chatml-chars")


def test_a_long_question_is_cut_never_the_assistant_marker():
    from trainer.inputs import ByteTokenizer, format_prompt

    tok = ByteTokenizer()
    question = "What does the very long sign on the left say, and why?"
    full = format_prompt(question, tok, 259, 96)
    assert tok.decode(full) == f"USER: {question} ASSISTANT:" and full[:2] == [tok.bos_token_id, 259]
    cut = format_prompt(question, tok, 259, 24)
    assert len(cut) - 1 == 24 and tok.decode(cut).endswith(" ASSISTANT:")  # every token but <image>
    assert tok.decode(cut) == "USER: What d ASSISTANT:"
    with pytest.raises(ValueError, match="no room for the question"):
        format_prompt(question, tok, 259, 16)


def test_instruct_tokenizers_get_their_chat_template():
    from trainer.inputs import answer_ids, format_prompt

    tok = _chat_tokenizer()

    def chars(ids):
        return "".join(tok.tokenizer.convert_ids_to_tokens([i for i in ids if i >= 0]))

    prompt = format_prompt("How many signs?", tok, -200, 96)
    assert chars(prompt) == "<|im_start|>user\n\nHow many signs?<|im_end|>\n<|im_start|>assistant\n"
    assert prompt[:5] == [tok.bos_token_id, *tok.encode("user")] and prompt.count(-200) == 1
    assert prompt[prompt.index(-200) - 1] == tok.encode("\n")[0]  # <image> opens the user turn
    cut = format_prompt("How many signs?", tok, -200, 30)
    assert chars(cut).endswith("s<|im_end|>\n<|im_start|>assistant\n") and len(cut) == 31
    plain = format_prompt("How many signs?", tok, -200, 96, prompt_format="plain")
    assert chars(plain) == "<|im_start|>USER: How many signs? ASSISTANT:"
    # the answer follows the template's "assistant\n" without a leading space, then EOS (<|im_end|>)
    assert answer_ids("3", tok, 8) == tok.encode("3") + [tok.eos_token_id]
    assert answer_ids("3", tok, 8, "plain") == tok.encode(" 3") + [tok.eos_token_id]


def test_an_answer_cut_at_max_answer_tokens_gets_no_eos():
    from trainer.inputs import ByteTokenizer, answer_ids

    tok = ByteTokenizer()
    assert answer_ids("yes", tok, 8) == tok.encode(" yes") + [tok.eos_token_id]
    assert answer_ids("a long sentence", tok, 8) == tok.encode(" a long ")  # no EOS mid-sentence
    assert answer_ids("1234567", tok, 8) == tok.encode(" 1234567") + [tok.eos_token_id]  # fits exactly


def test_aux_tokens_are_budgeted_per_sentence_so_ocr_survives():
    from trainer.inputs import ByteTokenizer, aux_ids, budget
    from verbalize.moai import OBJECTS_PREFIX, TEXT_PREFIX

    assert budget([5, 100, 50], 60) == [5, 28, 27] and budget([5, 10], 100) == [5, 10]
    assert sum(budget([30, 30, 30], 61)) == 61
    tok = ByteTokenizer()
    objects = OBJECTS_PREFIX + ", and ".join(f"[0.{i}0, 0.10, 0.20, 0.30] thing{i}" for i in range(9)) + "."
    ocr = TEXT_PREFIX + "STOP, and EXIT."
    text = f"{objects} {ocr}"
    assert aux_ids(text, tok, 10_000) == tok.encode(text)  # fits: exactly the whole text's ids
    ids = aux_ids(text, tok, 120)
    assert len(ids) == 120 and tok.decode(ids).endswith(ocr)  # OCR (short) kept whole, objects cut
    assert tok.decode(tok.encode(text)[:120]).count("STOP") == 0  # cutting from the end loses it
    assert aux_ids(text, tok, 120, ids=tok.encode(text)) == ids  # the aux_tokens cache gives the same


def test_panoptic_map_image_uses_the_pascal_colours_at_0_to_255():
    from annotators.masks import encode_rle
    from trainer.inputs import aux_map_image, pascal_colormap

    cmap = pascal_colormap()
    assert (
        cmap[0].tolist() == [0, 0, 0] and cmap[1].tolist() == [128, 0, 0] and cmap[2].tolist() == [0, 128, 0]
    )
    mask = np.zeros((40, 80), bool)
    mask[:, 40:] = True
    records = [{"segment_id": 1, "rle": encode_rle(mask)}]
    image = aux_map_image(records, 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert image[:, :8].max() == 0 and (image[:, 8:] == [128, 0, 0]).all()
    assert not aux_map_image([], 16).any()


def test_a_second_run_into_the_same_folder_is_found_not_the_first(tmp_path):
    """Lightning keeps an earlier run's last.ckpt and versions the new one (last-v1.ckpt): the run folder
    resolves to the newest, so a stage-2 init or an export never reads what an earlier config trained."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for k, name in enumerate(
        ["epoch=3-step=500.ckpt", "last.ckpt", "epoch=3-step=500-v1.ckpt", "last-v1.ckpt"]
    ):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (1_000_000 + k, 1_000_000 + k))
    assert find_checkpoint(tmp_path / "run").name == "last-v1.ckpt"
    (folder / "last.ckpt").unlink()
    (folder / "last-v1.ckpt").unlink()
    assert find_checkpoint(tmp_path / "run").name == "epoch=3-step=500-v1.ckpt"
