"""The trainer's warehouse caches (trainer/cache.py): filled once, read back into exactly the batches
the uncached data path makes, and never mixed across tokenizers, texts or vision encoders."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from core.errors import UserError
from pipeline.reverbalize import reverbalize
from trainer.cache import cache_aux_tokens, cache_vision_features, vision_encoder_id
from trainer.config import resolve_config
from trainer.data import WarehouseDataModule, collate
from trainer.inputs import ByteTokenizer, HFTokenizer
from trainer.train import build, prepare_instructions, train
from warehouse.store import Warehouse

CONFIG = {
    "seed_everything": 0,
    "model": {"preset": "tiny", "mode": "step2"},
    "data": {"dataset": "sample", "batch_size": 8, "max_aux_tokens": 96},
    "optim": {"lr": 3e-3, "warmup_steps": 0},
    "trainer": {"max_steps": 2, "log_every_n_steps": 1, "accelerator": "cpu", "enable_progress_bar": False},
    "run": {"checkpoint_every": 100, "threads": 1},
}


def with_aux_text(template, folder) -> Warehouse:
    """A copy of the annotated warehouse plus an aux_text version that says something: the fast profile's
    random experts score under the default thresholds, which leaves every text of the first empty."""
    shutil.copytree(template, folder)
    wh = Warehouse(folder)
    reverbalize(wh, "sample", {"detection_threshold": 0.0, "segmentation_threshold": 0.0})
    return wh


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, sample_corpus, annotated_sample):
    """A copy of the annotated sample warehouse (two aux versions, the newest non-empty) with its
    instructions imported, and a tiny config."""
    tmp = tmp_path_factory.mktemp("cache")
    with_aux_text(annotated_sample, tmp / "warehouse")
    config = {
        **CONFIG,
        "data": {**CONFIG["data"], "warehouse": str(tmp / "warehouse")},
        "run": {**CONFIG["run"], "out": str(tmp / "runs")},
    }
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOAI_DATA", str(sample_corpus.root.parent))
        module, _, _, dcfg = build(resolve_config(path))
        prepare_instructions(dcfg)
        yield {"config": path, "tmp": tmp, "wh": Warehouse(tmp / "warehouse"), "model": module.model}


def data_module(workspace, **data) -> WarehouseDataModule:
    _, dm, _, _ = build(resolve_config(workspace["config"], {"data": data}))
    dm.setup("fit")
    return dm


def all_batches(dm) -> list[dict]:
    return [
        collate([dm.train_set[i] for i in idx], dm.tokenizer.pad_token_id)
        for idx in dm.train_dataloader().batch_sampler
    ]


def count(wh, table: str) -> int:
    return wh.query(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py()


def uncached_copy(workspace, folder) -> Warehouse:
    """A copy of the workspace's warehouse without the cache tables."""
    shutil.copytree(workspace["tmp"] / "warehouse", folder)
    wh = Warehouse(folder)
    manifest = wh.manifest()
    for table in ("aux_tokens", "vision_features"):
        for rel in manifest["tables"].pop(table, []):
            (folder / rel).unlink()
    wh._publish(manifest)
    return wh


def test_aux_tokens_are_cached_once_and_batches_are_unchanged(workspace):
    wh = workspace["wh"]
    texts = count(wh, "(SELECT DISTINCT image_id, config_hash FROM aux_text)")
    first = cache_aux_tokens(wh, "sample", ByteTokenizer())
    assert (first.added, first.present) == (texts, 0) and texts == 26  # 13 images × 2 aux versions
    again = cache_aux_tokens(wh, "sample", ByteTokenizer())
    assert (again.added, again.present) == (0, texts)
    assert count(wh, "aux_tokens") == texts  # the second call wrote nothing

    plain, cached = data_module(workspace), data_module(workspace, aux_token_cache=True)
    assert cached.train_set.aux_tokens is not None and plain.train_set.aux_tokens is None
    long_aux = [i for i, r in enumerate(plain.train_set.rows) if len(r["aux_text"].encode()) > 96]
    assert long_aux  # truncation to max_aux_tokens is exercised too
    for a, b in zip(all_batches(plain), all_batches(cached), strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert torch.equal(value, b[key]) if torch.is_tensor(value) else value == b[key], key


def test_aux_tokens_of_another_tokenizer_or_text_are_never_used(workspace, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def words(vocab: list[str]) -> HFTokenizer:
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
        return HFTokenizer(fast, "words")

    a, b = words(["<unk>", "</s>", "a", "b"]), words(["<unk>", "</s>", "a", "c"])
    assert a.cache_id.startswith("hf:words:") and a.cache_id != b.cache_id  # same name, other vocabulary
    assert a.cache_id == words(["<unk>", "</s>", "a", "b"]).cache_id and ByteTokenizer.cache_id == "byte"

    cache_aux_tokens(workspace["wh"], "sample", ByteTokenizer())
    shutil.copytree(workspace["tmp"] / "warehouse", tmp_path / "warehouse")
    wh = Warehouse(tmp_path / "warehouse")
    cfg = resolve_config(workspace["config"], {"data": {"warehouse": str(wh.root), "aux_token_cache": True}})
    _, dm, _, dcfg = build(cfg)
    dm = WarehouseDataModule(dcfg, a)  # a tokenizer the cache has no ids of: an error, not a fallback
    with pytest.raises(UserError, match=r"no ids .* tokenizer hf:words:.* other tokenizers: byte"):
        dm.setup("fit")

    newest = wh.query("SELECT * FROM aux_text ORDER BY run_id DESC LIMIT 1").to_pylist()[0]
    wh.commit({"aux_text": [{**newest, "run_id": newest["run_id"] + "z", "text": "rewritten"}]})
    with pytest.raises(UserError, match="different text"):
        WarehouseDataModule(dcfg, ByteTokenizer()).setup("fit")


def test_vision_features_are_cached_once_and_the_training_step_is_unchanged(workspace, monkeypatch):
    wh, model = workspace["wh"], workspace["model"]
    _, _, _, dcfg = build(resolve_config(workspace["config"]))
    images = count(wh, "(SELECT DISTINCT image_id FROM instructions)")
    first = cache_vision_features(wh, "sample", model, dcfg, batch_size=5)
    assert (first.added, first.present) == (images, 0)
    rows = wh.query("SELECT image_id, encoder, image_size, n_patches, dim, dtype FROM vision_features")
    assert rows.num_rows == len(set(rows.column("image_id").to_pylist())) == images  # one row per image
    described = {tuple(r.values())[1:] for r in rows.to_pylist()}
    assert described == {(vision_encoder_id(model, dcfg), 64, 16, 32, "float32")}  # 4×4 patches of width 32
    monkeypatch.setattr(model.vision, "forward", lambda *a, **k: pytest.fail("the tower ran again"))
    again = cache_vision_features(wh, "sample", model, dcfg, batch_size=5)
    assert (again.added, again.present) == (0, images) and count(wh, "vision_features") == images
    monkeypatch.undo()

    plain, cached = data_module(workspace), data_module(workspace, vision_feature_cache=True)
    (a, b) = (all_batches(dm)[0] for dm in (plain, cached))
    assert "image_features" not in a and "pixel_values" not in b
    assert b["image_features"].shape == (8, 16, 32) and torch.equal(a["input_ids"], b["input_ids"])
    losses, grads = [], []
    for batch in (a, b):  # one training step of the same model on each batch
        model.zero_grad(set_to_none=True)
        loss = model.forward_batch(batch, step=0, return_logits=False).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0])
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_features_of_another_encoder_are_never_used(workspace):
    cfg = resolve_config(workspace["config"], {"data": {"vision_feature_cache": True}})
    module, _, _, dcfg = build(cfg)
    cache_vision_features(workspace["wh"], "sample", module.model, dcfg)
    other = resolve_config(
        workspace["config"], {"model": {"seed": 1}, "data": {"vision_feature_cache": True}}
    )
    _, dm, _, _ = build(other)  # another random tower: other weights, so another key
    assert dm.vision_encoder != vision_encoder_id(module.model, dcfg)
    with pytest.raises(UserError, match=r"no features for \d+ images .* it holds features of: tiny-clip:"):
        dm.setup("fit")


def test_train_fills_the_caches_it_reads_and_loses_nothing(workspace, tmp_path):
    import lightning.pytorch as pl

    class Losses(pl.Callback):
        def __init__(self):
            self.values, self.keys = [], set()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.values.append(float(outputs["loss"]))
            self.keys |= set(batch)

    wh = uncached_copy(workspace, tmp_path / "warehouse")
    runs = {}
    for name, data in (("plain", {}), ("cached", {"aux_token_cache": True, "vision_feature_cache": True})):
        recorder = Losses()
        data = {**data, "warehouse": str(wh.root)}
        train(workspace["config"], overrides={"data": data, "run": {"name": name}}, callbacks=[recorder])
        runs[name] = recorder
    assert count(wh, "aux_tokens") == count(wh, "(SELECT DISTINCT image_id, config_hash FROM aux_text)")
    assert count(wh, "vision_features") == count(wh, "(SELECT DISTINCT image_id FROM instructions)")
    assert "image_features" in runs["cached"].keys and "pixel_values" not in runs["cached"].keys
    assert len(runs["cached"].values) == 2
    torch.testing.assert_close(torch.tensor(runs["cached"].values), torch.tensor(runs["plain"].values))


def test_moai_cache_fills_both_and_reports_counts(workspace, tmp_path, capsys):
    from cli.main import main

    wh = uncached_copy(workspace, tmp_path / "warehouse")
    args = ["cache", "--dataset", "sample", "--warehouse", str(wh.root), "--config", str(workspace["config"])]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    second = capsys.readouterr().out
    images = count(wh, "(SELECT DISTINCT image_id FROM instructions)")
    assert f"vision_features: {images} added, 0 already present (tiny-clip:" in first
    assert f"vision_features: 0 added, {images} already present" in second
    assert "aux_tokens: 0 added" in second and "aux_tokens: 0 added" not in first
