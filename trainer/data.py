"""Stream the warehouse into training batches: instructions ⋈ images ⋈ aux_text, from Parquet.

Order is a pure function of (seed, epoch): each epoch is one permutation of the examples; a global
batch of `batch_size × world_size` examples is cut per step and rank r takes its own slice, so every
rank gets equal batches (the tail that does not fill a global batch is dropped, as DDP needs).
Mid-epoch resume needs only (epoch, step): the data module saves them in the Lightning checkpoint
and the batch sampler restarts at that step. DataLoader workers only load and tokenize the indices
the sampler hands them, so worker count never changes the order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.corpus import resolve_corpus
from warehouse.store import Warehouse

IGNORE = -100


class ByteTokenizer:
    """A tokenizer that needs no download: UTF-8 bytes plus four special ids (for tiny offline models)."""

    pad_token_id, bos_token_id, eos_token_id, image_token_id = 256, 257, 258, 259
    vocab_size = 260

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def load_examples(wh: Warehouse, dataset: str, splits: list[str] | None = None,
                  aux_config_hash: str | None = None) -> pa.Table:
    """One row per instruction with its image file and the image's aux text (latest version by default)."""
    split_filter = ""
    params: list = [dataset]
    if splits:
        split_filter = f"AND i.split IN ({', '.join('?' for _ in splits)})"
        params += list(splits)
    aux_filter = "AND config_hash = ?" if aux_config_hash else ""
    sql = f"""
        WITH aux AS (
            SELECT image_id, text, config_hash,
                   row_number() OVER (PARTITION BY image_id ORDER BY run_id DESC) AS newest
            FROM aux_text WHERE dataset = ? {aux_filter}
        )
        SELECT i.sample_id, i.split, i.image_id, i.type, i.question, i.answer,
               img.file_name, img.split AS image_split, coalesce(aux.text, '') AS aux_text,
               coalesce(aux.config_hash, '') AS aux_config_hash
        FROM instructions i
        JOIN images img ON img.dataset = i.dataset AND img.image_id = i.image_id
        LEFT JOIN aux ON aux.image_id = i.image_id AND aux.newest = 1
        WHERE i.dataset = ? {split_filter}
        ORDER BY i.sample_id
    """
    aux_params = [dataset] + ([aux_config_hash] if aux_config_hash else [])
    return wh.query(sql, aux_params + params)


@dataclass
class DataConfig:
    dataset: str = "sample"
    warehouse: str = "outputs/warehouse"
    train_splits: list[str] | None = None
    val_splits: list[str] | None = None
    batch_size: int = 4
    num_workers: int = 0
    seed: int = 0
    image_size: int = 64
    max_prompt_tokens: int = 96
    max_answer_tokens: int = 32
    max_aux_tokens: int = 256
    use_aux: bool = True  # False: the aux input is removed (the fair ablation keeps everything else)
    image_token_id: int = ByteTokenizer.image_token_id  # set from the model config by the trainer
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class InstructionDataset(Dataset):
    """Map-style: index → tokenized prompt/answer, aux tokens and the image tensor."""

    def __init__(self, examples: pa.Table, image_root: Path, tokenizer, cfg: DataConfig, image_dirs: dict):
        self.rows = examples.to_pylist()
        self.tokenizer, self.cfg, self.image_dirs = tokenizer, cfg, image_dirs

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, row) -> torch.Tensor:
        from PIL import Image

        from pipeline.decode import decode_image

        array = decode_image(self.image_dirs[row["image_split"]] / row["file_name"]).image
        size = self.cfg.image_size
        array = np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
        array = (array - np.array(self.cfg.image_mean, np.float32)) / np.array(self.cfg.image_std, np.float32)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> dict:
        row, tok, cfg = self.rows[index], self.tokenizer, self.cfg
        # the image placeholder follows BOS; the model expands it to the image's patch embeddings
        question = tok.encode(f"USER: {row['question']} ASSISTANT:")[: cfg.max_prompt_tokens]
        prompt = [tok.bos_token_id, cfg.image_token_id] + question
        answer = tok.encode(" " + row["answer"])[: cfg.max_answer_tokens] + [tok.eos_token_id]
        aux = tok.encode(row["aux_text"])[: cfg.max_aux_tokens] if cfg.use_aux else []
        return {"index": index, "prompt": prompt, "answer": answer, "aux": aux, "pixel_values": self._image(row),
                "answer_text": row["answer"], "type": row["type"]}


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-pad prompt+answer; labels are IGNORE everywhere but answer tokens; aux padded separately."""
    lengths = [len(i["prompt"]) + len(i["answer"]) for i in items]
    T = max(lengths)
    A = max(1, max(len(i["aux"]) for i in items))
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    aux_ids = torch.full((B, A), pad_id, dtype=torch.long)
    aux_mask = torch.zeros((B, A), dtype=torch.long)
    for b, item in enumerate(items):
        seq = item["prompt"] + item["answer"]
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
        labels[b, len(item["prompt"]): len(seq)] = torch.tensor(item["answer"])
        if item["aux"]:
            aux_ids[b, : len(item["aux"])] = torch.tensor(item["aux"])
            aux_mask[b, : len(item["aux"])] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "aux_input_ids": aux_ids, "aux_attention_mask": aux_mask,
            "pixel_values": torch.stack([i["pixel_values"] for i in items]),
            "prompt_lengths": torch.tensor([len(i["prompt"]) for i in items]),
            "index": torch.tensor([i["index"] for i in items]),
            "answer_text": [i["answer_text"] for i in items], "type": [i["type"] for i in items]}


class EpochBatchSampler(Sampler):
    """Deterministic (seed, epoch) order, equal batches per rank, restartable at any step."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start_step = 0, 0

    def steps_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch() - self.start_step

    def __iter__(self):
        order, G = self.order(self.epoch), self.batch_size * self.world_size
        for step in range(self.start_step, self.steps_per_epoch()):
            start = step * G + self.rank * self.batch_size
            yield order[start: start + self.batch_size]
        self.start_step = 0


def _lightning_datamodule_base():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class WarehouseDataModule(_lightning_datamodule_base()):
    """Owns the data: examples from Parquet, tokenization, and the resumable sampler state."""

    def __init__(self, cfg: DataConfig, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer or ByteTokenizer()
        self.epoch, self.step_in_epoch = 0, 0  # progress of *consumed* training batches
        self._train_sampler: EpochBatchSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        wh = Warehouse(self.cfg.warehouse)
        corpus = resolve_corpus(self.cfg.dataset)
        image_dirs = {s: corpus.image_dir(s) for s in corpus.splits}
        self.train_set = InstructionDataset(load_examples(wh, self.cfg.dataset, self.cfg.train_splits),
                                            corpus.root, self.tokenizer, self.cfg, image_dirs)
        if len(self.train_set) == 0:
            from pipeline.errors import UserError

            raise UserError(f"No training examples for dataset '{self.cfg.dataset}' in {self.cfg.warehouse}: "
                            "annotate it first (make annotate) and import its instructions.")
        self.val_set = None
        if self.cfg.val_splits:
            self.val_set = InstructionDataset(load_examples(wh, self.cfg.dataset, self.cfg.val_splits),
                                              corpus.root, self.tokenizer, self.cfg, image_dirs)

    def _collate(self, items):
        return collate(items, self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        sampler = EpochBatchSampler(len(self.train_set), self.cfg.batch_size, self.cfg.seed, rank, world)
        sampler.epoch, sampler.start_step = self.epoch, self.step_in_epoch
        self._train_sampler = sampler
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                          collate_fn=self._collate, persistent_workers=False)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.cfg.batch_size, shuffle=False,
                          num_workers=self.cfg.num_workers, collate_fn=self._collate)

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
