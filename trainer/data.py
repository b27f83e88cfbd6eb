"""Stream the warehouse into training batches: instructions ⋈ images ⋈ aux_text, from Parquet.

Order is a pure function of (seed, epoch): each epoch is one permutation of the examples; a global
batch of `batch_size × world_size` examples is cut per step and rank r takes its own slice, so every
rank gets equal batches (the tail that does not fill a global batch is dropped, as DDP needs).
Mid-epoch resume needs only (epoch, step): the data module saves them in the Lightning checkpoint
and the batch sampler, which reads that position each time an epoch's iteration starts, restarts at
that step. DataLoader workers only load and tokenize the indices the sampler hands them, so worker
count never changes the order.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from corpora.resolve import resolve_corpus
from trainer.inputs import (
    IGNORE,
    ByteTokenizer,
    DataConfig,
    answer_ids,
    aux_ids,
    aux_map_image,
    format_prompt,
    image_tensor,
    load_image,
)
from warehouse.current import current_rows_sql
from warehouse.store import Warehouse


def load_examples(
    wh: Warehouse, dataset: str, splits: list[str] | None = None, aux_config_hash: str | None = None
) -> pa.Table:
    """One row per instruction with its image file and the image's aux text (latest version by default)."""
    split_filter = ""
    params: list = [dataset]
    if splits:
        split_filter = f"AND i.split IN ({', '.join('?' for _ in splits)})"
        params += list(splits)
    # the image's current aux text (warehouse/current.py), or the asked-for version of it
    aux_source = (
        "SELECT * FROM aux_text WHERE config_hash = ?"
        if aux_config_hash
        else current_rows_sql("aux_text", "aux")
    )
    sql = f"""
        WITH aux AS (SELECT image_id, text, config_hash FROM ({aux_source}) WHERE dataset = ?)
        SELECT i.sample_id, i.split, i.image_id, i.type, i.question, i.answer,
               img.file_name, img.split AS image_split, coalesce(aux.text, '') AS aux_text,
               coalesce(aux.config_hash, '') AS aux_config_hash
        FROM instructions i
        JOIN images img ON img.dataset = i.dataset AND img.image_id = i.image_id
        LEFT JOIN aux ON aux.image_id = i.image_id
        WHERE i.dataset = ? {split_filter}
        ORDER BY i.sample_id
    """
    aux_params = ([aux_config_hash] if aux_config_hash else []) + [dataset]
    return wh.query(sql, aux_params + params)


def aux_maps(wh: Warehouse, dataset: str) -> dict[int, list] | None:
    """image_id → its current segmentation records, for MoAI's panoptic-map tokens (`data.aux_map`);
    None when the dataset has no segmentation at all (e.g. an OCR-only profile): then no map is fed."""
    from warehouse.current import current_configs, current_records

    if not current_configs(wh, dataset, "segmentation"):
        return None
    return current_records(wh, dataset, "segmentation")


class InstructionDataset(Dataset):
    """Map-style: index → tokenized prompt/answer, aux tokens and the image tensor (or, with a
    `vision_features` cache, the image's frozen features). `aux_tokens` / `vision_features` are the
    caches of trainer/cache.py; every row they must serve is checked here, once, not mid-epoch."""

    def __init__(
        self,
        examples: pa.Table,
        image_root: Path,
        tokenizer,
        cfg: DataConfig,
        image_dirs: dict,
        aux_tokens=None,
        vision_features=None,
        aux_maps: dict | None = None,
    ):
        """`aux_maps`: image_id → segmentation records, whose painted map goes to the compressor as image
        tokens (MoAI's panoptic map; an image without records gets a void map). None: no maps."""
        self.rows = examples.to_pylist()
        self.aux_maps = aux_maps
        self.tokenizer, self.cfg, self.image_dirs = tokenizer, cfg, image_dirs
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        self.aux_tokens, self.vision_features = aux_tokens, vision_features
        for cache in (aux_tokens, vision_features):
            if cache is not None:
                cache.check(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _cached(self, key, make) -> np.ndarray:
        """The uint8 array under `key`, made once and kept while `data.image_cache` allows (LRU)."""
        array = self._cache.get(key)
        if array is None:
            array = make()
            if self.cfg.image_cache > 0:
                self._cache[key] = array
                while len(self._cache) > self.cfg.image_cache:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return array

    def _image(self, row) -> torch.Tensor:
        path = self.image_dirs[row["image_split"]] / row["file_name"]
        array = self._cached(path, lambda: load_image(path, self.cfg.image_size))
        return image_tensor(array, self.cfg.image_mean, self.cfg.image_std)

    def _aux_map(self, row) -> torch.Tensor:
        """MoAI's panoptic-map image of the row's image: painting it decodes every segment's full-size
        mask, so it is kept like a decoded image (one per image, whichever question asks)."""
        records = self.aux_maps.get(row["image_id"], [])
        array = self._cached(
            ("aux_map", row["image_id"]), lambda: aux_map_image(records, self.cfg.image_size)
        )
        return image_tensor(array, self.cfg.image_mean, self.cfg.image_std)

    def __getitem__(self, index: int) -> dict:
        row, tok, cfg = self.rows[index], self.tokenizer, self.cfg
        # the image placeholder follows BOS; the model expands it to the image's patch embeddings
        prompt = format_prompt(
            row["question"], tok, cfg.image_token_id, cfg.max_prompt_tokens, cfg.prompt_format
        )
        answer = answer_ids(row["answer"], tok, cfg.max_answer_tokens, cfg.prompt_format)
        aux = self._aux(row) if cfg.use_aux else []
        if self.vision_features is not None:
            image = {"image_features": self.vision_features.get(row)}
        else:
            image = {"pixel_values": self._image(row)}
        if self.aux_maps is not None and cfg.use_aux:
            image["aux_pixel_values"] = self._aux_map(row)
        return {
            "index": index,
            "prompt": prompt,
            "answer": answer,
            "aux": aux,
            **image,
            "answer_text": row["answer"],
            "type": row["type"],
        }

    def _aux(self, row) -> list[int]:
        """The aux text's ids within max_aux_tokens, budgeted per sentence (inputs.aux_ids)."""
        cached = None
        if self.aux_tokens is not None and row["aux_text"]:  # no aux text: nothing to look up
            cached = self.aux_tokens.get(row)
        return aux_ids(row["aux_text"], self.tokenizer, self.cfg.max_aux_tokens, cached)


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-pad prompt+answer; labels are IGNORE everywhere but answer tokens; aux padded separately.
    Images travel as `pixel_values`, or as `image_features` when the items carry cached features."""
    lengths = [len(i["prompt"]) + len(i["answer"]) for i in items]
    T = max(lengths)
    A = max(1, max(len(i["aux"]) for i in items))
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    aux_input = torch.full((B, A), pad_id, dtype=torch.long)
    aux_mask = torch.zeros((B, A), dtype=torch.long)
    for b, item in enumerate(items):
        seq = item["prompt"] + item["answer"]
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
        labels[b, len(item["prompt"]) : len(seq)] = torch.tensor(item["answer"])
        if item["aux"]:
            aux_input[b, : len(item["aux"])] = torch.tensor(item["aux"])
            aux_mask[b, : len(item["aux"])] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "aux_input_ids": aux_input,
        "aux_attention_mask": aux_mask,
        **{
            k: torch.stack([i[k] for i in items])
            for k in ("pixel_values", "image_features", "aux_pixel_values")
            if k in items[0]
        },
        "prompt_lengths": torch.tensor([len(i["prompt"]) for i in items]),
        "index": torch.tensor([i["index"] for i in items]),
        "answer_text": [i["answer_text"] for i in items],
        "type": [i["type"] for i in items],
    }


class EpochBatchSampler(Sampler):
    """Deterministic (seed, epoch) order, equal batches per rank, restartable at any step.

    Standalone, set `epoch` and `start_step` before iterating (start_step is cleared after a full pass).
    Under Lightning, `progress` (the data module) is read when each epoch's iteration starts, so the
    epoch advances with training and a resumed epoch starts at the saved step. `len()` is always the
    full epoch: Lightning counts a resumed epoch's already-consumed batches as done (as it does for
    any resumable loader), so its end-of-epoch bookkeeping needs the whole length."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        progress=None,
    ):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start_step = 0, 0
        self.progress = progress  # anything with .epoch and .step_in_epoch

    def steps_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch()

    def __iter__(self):
        if self.progress is not None:
            self.epoch, self.start_step = self.progress.epoch, self.progress.step_in_epoch
        order, G = self.order(self.epoch), self.batch_size * self.world_size
        for step in range(self.start_step, self.steps_per_epoch()):
            start = step * G + self.rank * self.batch_size
            yield order[start : start + self.batch_size]
        self.start_step = 0


class ResumableDataLoader(DataLoader):
    """A DataLoader whose state is its data module's position, so Lightning knows it resumes mid-epoch
    (Lightning saves and restores it in the loop state; it equals the data module's own state)."""

    def __init__(self, *args, progress=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict:
        return self.progress.state_dict() if self.progress is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.progress is not None and state:
            self.progress.load_state_dict(state)


class _WarehouseData:
    """Owns the data: examples from Parquet, tokenization, and the resumable sampler state.

    `WarehouseDataModule` is this plus Lightning's LightningDataModule, created on first use so that
    importing this module (tokenizers, prompt format, images for generation) does not import Lightning."""

    def __init__(self, cfg: DataConfig, tokenizer=None, vision_encoder: str | None = None):
        """`vision_encoder`: the frozen tower's cache key (trainer.cache.vision_encoder_id), which
        `vision_feature_cache` needs to find the features of this very encoder."""
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer or ByteTokenizer()
        self.vision_encoder = vision_encoder
        self.epoch, self.step_in_epoch = 0, 0  # progress of *consumed* training batches
        self._train_sampler: EpochBatchSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        wh = Warehouse(self.cfg.warehouse)
        corpus = resolve_corpus(self.cfg.dataset)
        image_dirs = {s: corpus.image_dir(s) for s in corpus.splits}
        caches = self._caches(wh)
        maps = aux_maps(wh, self.cfg.dataset) if self.cfg.aux_map and self.cfg.use_aux else None

        def split_set(splits: list[str] | None, types: list[str] | None = None) -> InstructionDataset:
            examples = load_examples(wh, self.cfg.dataset, splits)
            if types is not None:
                keep = pa.array([t in set(types) for t in examples.column("type").to_pylist()])
                examples = examples.filter(keep)
            return InstructionDataset(
                examples, corpus.root, self.tokenizer, self.cfg, image_dirs, **caches, aux_maps=maps
            )

        self.train_set = split_set(self.cfg.train_splits, self.cfg.train_types)
        if len(self.train_set) == 0:
            from core.errors import UserError

            raise UserError(
                f"No training examples for dataset '{self.cfg.dataset}' in {self.cfg.warehouse}: "
                "annotate it first (make annotate) and import its instructions."
            )
        self.val_set = split_set(self.cfg.val_splits) if self.cfg.val_splits else None

    def _caches(self, wh: Warehouse) -> dict:
        """The trainer caches the config asks for, read once for both splits."""
        from trainer.cache import AuxTokenCache, VisionFeatureCache

        caches = {}
        if self.cfg.aux_token_cache and self.cfg.use_aux:
            caches["aux_tokens"] = AuxTokenCache.load(wh, self.cfg.dataset, self.tokenizer)
        if self.cfg.vision_feature_cache:
            if self.vision_encoder is None:
                raise ValueError(
                    "data.vision_feature_cache needs the vision encoder's cache key: build the data "
                    "module with trainer.train.build (or pass vision_encoder=trainer.cache.vision_encoder_id(...))"
                )
            caches["vision_features"] = VisionFeatureCache.load(
                wh, self.cfg.dataset, self.vision_encoder, self.cfg.image_size
            )
        return caches

    def _collate(self, items):
        return collate(items, self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        sampler = EpochBatchSampler(
            len(self.train_set), self.cfg.batch_size, self.cfg.seed, rank, world, progress=self
        )
        if sampler.steps_per_epoch() == 0:
            from core.errors import UserError

            raise UserError(
                f"{len(self.train_set)} training examples do not fill one global batch of "
                f"{self.cfg.batch_size} × {world} ranks; lower data.batch_size"
            )
        self._train_sampler = sampler
        return ResumableDataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=self._collate,
            persistent_workers=False,
            progress=self,
        )

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.cfg.batch_size,
            shuffle=False,
            num_workers=self.cfg.num_workers,
            collate_fn=self._collate,
        )

    # Progress is advanced by the training loop (see trainer.train.DataProgress) so that prefetched but
    # unconsumed batches are never counted.
    def advance(self) -> None:
        self.step_in_epoch += 1
        if self._train_sampler is not None and self.step_in_epoch >= self._train_sampler.steps_per_epoch():
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.cfg.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])


def __getattr__(name: str):
    if name == "WarehouseDataModule":
        import lightning.pytorch as pl

        cls = type(
            "WarehouseDataModule",
            (_WarehouseData, pl.LightningDataModule),
            {
                "__module__": __name__,
                "__qualname__": "WarehouseDataModule",
                "__doc__": _WarehouseData.__doc__,
            },
        )
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
