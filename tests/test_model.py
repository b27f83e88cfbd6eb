"""Behaviour of the MoAI model (trainer/model.py) on tiny random backbones built from config (CPU, offline)."""

from __future__ import annotations

import io

import pytest
import torch

from trainer.model import EXPERT_NAMES, IGNORE, PRESETS, MixerLayer, MoAI, MoAIConfig, mix_experts

IMG = 259  # data.ByteTokenizer.image_token_id, the tiny preset's placeholder
PAD, BOS, EOS = 256, 257, 258


def tiny(**overrides) -> MoAI:
    return MoAI(MoAIConfig.preset("tiny", **overrides))


@pytest.fixture(scope="module")
def model() -> MoAI:
    return tiny().eval()


def sample(prompt_len: int, answer_len: int, aux_len: int, seed: int) -> dict:
    """One example as the data pipeline tokenizes it: [BOS, <image>, prompt…] + [answer…, EOS]."""
    g = torch.Generator().manual_seed(seed)
    prompt = [BOS, IMG] + torch.randint(0, 256, (prompt_len,), generator=g).tolist()
    answer = torch.randint(0, 256, (answer_len,), generator=g).tolist() + [EOS]
    return {
        "prompt": prompt,
        "answer": answer,
        "aux": torch.randint(0, 256, (aux_len,), generator=g).tolist(),
        "pixel_values": torch.randn(3, 64, 64, generator=g),
    }


def collate(items: list[dict], left: bool = False, extra_aux_pad: int = 0) -> dict:
    """Pad like trainer.data.collate (right padding), or on the left."""
    T = max(len(i["prompt"]) + len(i["answer"]) for i in items)
    A = max(len(i["aux"]) for i in items) + extra_aux_pad
    B = len(items)
    batch = {
        "input_ids": torch.full((B, T), PAD),
        "attention_mask": torch.zeros(B, T, dtype=torch.long),
        "labels": torch.full((B, T), IGNORE),
        "aux_input_ids": torch.randint(
            0, 256, (B, A), generator=torch.Generator().manual_seed(A)
        ),  # pads: junk
        "aux_attention_mask": torch.zeros(B, A, dtype=torch.long),
        "pixel_values": torch.stack([i["pixel_values"] for i in items]),
    }
    for b, item in enumerate(items):
        seq = item["prompt"] + item["answer"]
        at = slice(T - len(seq), T) if left else slice(0, len(seq))
        batch["input_ids"][b, at] = torch.tensor(seq)
        batch["attention_mask"][b, at] = 1
        batch["labels"][b, at] = torch.tensor([IGNORE] * len(item["prompt"]) + item["answer"])
        batch["aux_input_ids"][b, : len(item["aux"])] = torch.tensor(item["aux"])
        batch["aux_attention_mask"][b, : len(item["aux"])] = 1
    return batch


def items3() -> list[dict]:
    return [sample(5, 4, 7, 0), sample(9, 2, 3, 1), sample(3, 6, 11, 2)]


# 1 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_projector", [False, True])
def test_only_intended_parameters_receive_gradients(train_projector):
    m = tiny(train_projector=train_projector).train()
    print("\n" + m.parameter_table())
    m.forward_batch(collate(items3())).loss.backward()
    for name, p in m.named_parameters():
        intended = name.startswith(("compressor.", "mixers.")) or (
            train_projector and name.startswith("projector.")
        )
        assert p.requires_grad == intended, name
        if intended:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    counts = m.parameter_counts()
    assert counts["trainable"] == sum(p.numel() for n, p in m.named_parameters() if p.requires_grad)
    assert counts["frozen"] > 0 and "trainable" in m.parameter_table().splitlines()[-1]


def test_freeze_experts_leaves_gates_and_compressor_trainable():
    m = tiny(freeze_experts=True)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert all(n.startswith("compressor.") or ".gate_" in n for n in names)
    assert any(".gate_img." in n for n in names) and any(".gate_lang." in n for n in names)


# 2 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["step2", "step1"])
def test_answer_tokens_never_reach_earlier_logits(mode):
    m = tiny(mode=mode).eval()
    items = items3()
    batch = collate(items)
    P = m.num_image_tokens
    base = m.forward_batch(batch, step=3).logits
    for b, item in enumerate(items):
        start = len(item["prompt"])  # first answer token of row b (input position)
        for t in range(start, start + len(item["answer"]) - 1):
            changed = {k: v.clone() for k, v in batch.items()}
            end = start + len(item["answer"])
            new = torch.randint(0, 256, (end - t - 1,), generator=torch.Generator().manual_seed(t))
            changed["input_ids"][b, t + 1 : end] = new  # every answer token after t
            changed["labels"][b, t + 1 : end] = new
            logits = m.forward_batch(changed, step=3).logits
            upto = t + P  # merged position of input position t (one placeholder became P image tokens)
            torch.testing.assert_close(logits[:, :upto], base[:, :upto], rtol=0, atol=1e-5)
            assert not torch.allclose(logits[b, upto], base[b, upto]), "the change must be visible later"


def test_image_side_reads_the_prompt_but_no_answer(model):
    batch = collate(items3())
    out = model.forward_batch(batch)
    seq = out.inputs
    answer = seq.labels != IGNORE
    assert not (seq.prompt_mask & answer).any()
    assert (seq.prompt_mask | answer | ~seq.lang_mask).all()  # every language token is prompt or answer
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, 3] = (changed["input_ids"][0, 3] + 1) % 256  # a prompt token after the image
    image_rows = seq.image_index[0]
    after = model.forward_batch(changed).logits[0, image_rows]
    assert not torch.allclose(after, out.logits[0, image_rows]), "image rows should read the prompt"


# 3 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("left", [False, True])
def test_padded_batch_matches_samples_alone(model, left):
    items = items3()
    batched = model.forward_batch(collate(items, left=left))
    for b, item in enumerate(items):
        alone = model.forward_batch(collate([item]))
        real = batched.inputs.attention_mask[b].bool()
        torch.testing.assert_close(batched.logits[b, real], alone.logits[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batched.inputs.prompt_mask[b, real], alone.inputs.prompt_mask[0])


# 4 ------------------------------------------------------------------------------------------------


def test_mixer_disabled_gives_the_frozen_llm_logits(model):
    batch = collate(items3())
    seq = model.embed_inputs(
        batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"]
    )
    reference = model.llm(
        inputs_embeds=seq.embeds, attention_mask=seq.attention_mask, position_ids=seq.position_ids
    ).logits
    plain = model.forward_batch(batch, use_mixer=False)
    assert torch.equal(plain.logits, reference)
    assert plain.gate_stats is None
    one = collate(items3()[:1])  # unpadded: the LLM's own default positions
    seq = model.embed_inputs(one["input_ids"], pixel_values=one["pixel_values"])
    assert torch.equal(
        model.forward_batch(one, use_mixer=False).logits, model.llm(inputs_embeds=seq.embeds).logits
    )
    assert not torch.allclose(model.forward_batch(batch).logits, reference), "the mixer must change something"


@pytest.mark.parametrize("choice", [(None, None), (1, 2), (0, 0)])
def test_language_side_on_the_language_rows_alone_equals_it_over_every_position(choice):
    """The mixer runs its language experts on each row's language tokens only (gathered, in order). The
    reference runs them over every position, as MoAI does, and keeps the language rows: the same output,
    gate statistics included, for rows with left and right padding and the image at different places."""
    torch.manual_seed(0)
    mixer = MixerLayer(dim=16, heads=2, rank=8)
    B, T, P = 3, 11, 3
    h, aux = torch.randn(B, T, 16), torch.randn(B, 4, 16)
    image_at = [1, 4, 0]  # first image position per row
    real = [range(0, 9), range(2, 11), range(0, 11)]  # right-padded, left-padded, full
    answer_from = [7, 9, 8]  # first answer position per row
    image_index = torch.tensor([[a + i for i in range(P)] for a in image_at])
    attention = torch.zeros(B, T, dtype=torch.bool)
    for b, r in enumerate(real):
        attention[b, list(r)] = True
    is_image = torch.zeros(B, T, dtype=torch.bool).scatter(1, image_index, True)
    lang_mask = attention & ~is_image
    prompt_mask = lang_mask & (torch.arange(T)[None] < torch.tensor(answer_from)[:, None])
    out, (img, lang) = mixer(h, image_index, lang_mask, prompt_mask, aux, choice, top_k=0)

    h_img = h.gather(1, image_index[..., None].expand(-1, -1, 16))
    causal = lang_mask[:, None, None, :] & torch.ones(T, T, dtype=torch.bool).tril()
    ref_img = mix_experts(
        h_img,
        [
            (mixer.img_aux, aux, None),
            (mixer.img_lang, h, prompt_mask[:, None, None, :]),
            (mixer.img_self, h_img, None),
        ],
        mixer.gate_img,
        torch.ones_like(image_index, dtype=torch.bool),
        choice[0],
        0,
    )
    ref_lang = mix_experts(
        h,
        [(mixer.lang_aux, aux, None), (mixer.lang_img, h_img, None), (mixer.lang_self, h, causal)],
        mixer.gate_lang,
        lang_mask,
        choice[1],
        0,
    )
    ref = torch.where(lang_mask[..., None], ref_lang.out, h).scatter(
        1, image_index[..., None].expand(-1, -1, 16), ref_img.out
    )
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[~attention], h[~attention]), "pad rows pass through unchanged"
    torch.testing.assert_close(lang.mean_gate, ref_lang.mean_gate)
    torch.testing.assert_close(img.mean_gate, ref_img.mean_gate)
    out.sum().backward()  # every expert on the language side still gets a gradient
    sides = (
        ["lang_aux", "lang_img", "lang_self"]
        if choice[1] is None
        else [["lang_aux", "lang_img", "lang_self"][choice[1]]]
    )
    for name in sides:
        assert getattr(mixer, name).q[0].weight.grad.abs().sum() > 0, name


# 5 ------------------------------------------------------------------------------------------------


def test_padded_aux_tokens_change_nothing(model):
    items = items3()
    batch, padded = collate(items), collate(items, extra_aux_pad=9)
    assert padded["aux_input_ids"].shape[1] == batch["aux_input_ids"].shape[1] + 9
    a = model.compress_aux(3, batch["aux_input_ids"], batch["aux_attention_mask"])
    b = model.compress_aux(3, padded["aux_input_ids"], padded["aux_attention_mask"])
    assert a.shape == (3, model.config.num_queries, model.llm.config.hidden_size)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        model.forward_batch(batch).logits, model.forward_batch(padded).logits, rtol=0, atol=1e-5
    )
    unmasked = model.compress_aux(3, padded["aux_input_ids"], torch.ones_like(padded["aux_attention_mask"]))
    assert not torch.allclose(a, unmasked), "without the mask the padding would leak in"


def test_aux_removed_ablation_is_the_same_model_without_aux():
    with_aux, without = tiny(), tiny(use_aux=False)
    assert with_aux.parameter_counts() == without.parameter_counts()
    batch = collate(items3())
    other = dict(batch, aux_input_ids=(batch["aux_input_ids"] + 1) % 256)
    assert torch.equal(without.forward_batch(batch).logits, without.forward_batch(other).logits)
    assert not torch.allclose(with_aux.forward_batch(batch).logits, with_aux.forward_batch(other).logits)


def _reversed_aux(batch: dict) -> dict:
    """The same aux tokens in reverse order within each row's real length."""
    ids = batch["aux_input_ids"].clone()
    for b, n in enumerate(batch["aux_attention_mask"].sum(1).tolist()):
        ids[b, :n] = ids[b, :n].flip(0)
    return dict(batch, aux_input_ids=ids)


@pytest.mark.parametrize(
    "options,order_matters",
    [({}, False), ({"aux_positions": 16}, True), ({"aux_encoder": "llm"}, True)],
)
def test_aux_word_order_reaches_the_compressor_only_with_positions_or_the_llm_encoder(options, order_matters):
    """MoAI's compressor reads embedded aux tokens as a set: "cup on table" = "table on cup", and a
    spelled word loses its spelling. Learned aux positions or the LLM encoder keep the order."""
    m = tiny(**options).eval()
    batch = collate(items3())
    a = m.compress_aux(3, batch["aux_input_ids"], batch["aux_attention_mask"])
    flipped = _reversed_aux(batch)
    b = m.compress_aux(3, flipped["aux_input_ids"], flipped["aux_attention_mask"])
    assert torch.allclose(a, b, atol=1e-5) is not order_matters
    padded = collate(items3(), extra_aux_pad=5)  # padding is still ignored with either option
    c = m.compress_aux(3, padded["aux_input_ids"], padded["aux_attention_mask"])
    torch.testing.assert_close(a, c, rtol=0, atol=1e-5)


def test_aux_positions_must_cover_the_aux_length():
    m = tiny(aux_positions=4)
    with pytest.raises(ValueError, match="aux_positions=4"):
        m.compress_aux(1, torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long))


def test_llm_aux_encoder_runs_the_llm_without_mixers_and_trains_only_what_is_asked():
    m = tiny(aux_encoder="llm").train()
    batch = collate(items3())
    ids, mask = batch["aux_input_ids"], batch["aux_attention_mask"]
    plain = m.llm(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    real = mask.bool()
    torch.testing.assert_close(m.encode_aux_text(ids, mask)[real], plain[real])  # no mixer inside
    m.forward_batch(batch).loss.backward()
    assert all(p.grad is None for p in m.llm.parameters()), "a frozen LLM encodes the aux text"
    assert m.compressor.latents.grad is not None


def test_train_llm_is_only_for_tiny_random_llms_and_trains_them():
    with pytest.raises(ValueError, match="tiny random-init"):
        MoAI(MoAIConfig(llm="Qwen/Qwen2.5-0.5B-Instruct", train_llm=True))
    m = tiny(train_llm=True).train()
    m.forward_batch(collate(items3())).loss.backward()
    assert all(p.grad is not None for p in m.llm.model.layers.parameters())
    assert all(p.grad is None for p in m.vision.parameters())
    state = m.state_dict_trainable()
    assert any(k.startswith("llm.") for k in state)
    other = tiny(train_llm=True, seed=1)
    other.load_trainable(state)  # the trained LLM travels with the checkpoint
    torch.testing.assert_close(other.llm.lm_head.weight, m.llm.lm_head.weight)


# 6 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "llm,vision",
    [
        ("tiny-llama", "tiny-clip"),
        ("tiny-qwen2", "tiny-siglip"),
        ("tiny-qwen2", "tiny-clip"),
        ("tiny-llama", "tiny-siglip"),
    ],
)
def test_llama_qwen2_clip_siglip(llm, vision):
    m = tiny(llm=llm, vision=vision)
    assert type(m.llm).__name__.lower().startswith(llm.removeprefix("tiny-"))
    assert m.mixer_layers == [1, 3]  # 1-based layers 2 and 4 of 4, mixer_every=2
    out = m.forward_batch(collate(items3()))
    P = m.num_image_tokens
    assert P == 16 and out.inputs.image_index.shape == (3, P)
    assert out.logits.shape[:2] == (3, collate(items3())["input_ids"].shape[1] + P - 1)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in m.mixers.parameters())


def test_mixer_layers_places_the_mixers_where_named_and_only_they_act():
    m = tiny(mixer_layers=[0, 2])
    assert m.mixer_layers == [0, 2] and sorted(m.mixers) == ["0", "2"]
    out = m.forward_batch(collate(items3()))
    out.loss.backward()
    assert all(p.grad is not None for p in m.mixers.parameters())
    assert m.config.mixer_layers == [0, 2]  # kept in the config a checkpoint stores
    for bad in ([4], [1, 1], [], [-1]):  # the tiny LLM has layers 0-3
        with pytest.raises(ValueError, match="mixer_layers must name distinct 0-based decoder layers"):
            tiny(mixer_layers=bad)


def test_text_only_batches_skip_the_image_side(model):
    batch = collate(items3())
    text = dict(
        batch, input_ids=batch["input_ids"].masked_fill(batch["input_ids"] == IMG, 65), pixel_values=None
    )
    out = model.forward_batch(text)
    assert out.inputs.image_index.shape == (3, 0) and torch.isfinite(out.logits).all()
    assert (out.gate_stats[:, 0] == 0).all()  # no image token to gate
    torch.testing.assert_close(out.gate_stats[:, 1].sum(-1), torch.ones(2))
    assert len(model.generate(text["input_ids"][:, :5], max_new_tokens=2)[0]) == 2


def test_precomputed_features_and_expanded_placeholders_match_pixels(model):
    batch = collate(items3())
    base = model.forward_batch(batch).logits
    features = model.vision_features(batch["pixel_values"])
    assert features.shape == (3, model.num_image_tokens, model.vision.config.hidden_size)
    cached = dict(batch, pixel_values=None, image_features=features)
    torch.testing.assert_close(model.forward_batch(cached).logits, base, rtol=0, atol=1e-6)
    P = model.num_image_tokens  # the HF style: P placeholders already in input_ids
    expand = lambda x, fill: torch.cat([x[:, :1], torch.full((3, P), fill), x[:, 2:]], 1)  # noqa: E731
    expanded = dict(
        batch,
        input_ids=expand(batch["input_ids"], IMG),
        attention_mask=expand(batch["attention_mask"], 1),
        labels=expand(batch["labels"], IGNORE),
    )
    torch.testing.assert_close(model.forward_batch(expanded).logits, base, rtol=0, atol=1e-6)
    marked = dict(
        expanded,
        image_mask=expanded["input_ids"] == IMG,
        input_ids=expanded["input_ids"].masked_fill(expanded["input_ids"] == IMG, 0),
    )
    torch.testing.assert_close(model.forward_batch(marked).logits, base, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="placeholder"):
        model.forward_batch(
            dict(batch, input_ids=batch["input_ids"].masked_fill(batch["input_ids"] == IMG, 5))
        )


# 7 ------------------------------------------------------------------------------------------------


def test_a_few_steps_overfit_a_tiny_batch():
    m = tiny().train()
    batch = collate(items3())
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = m.forward_batch(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the frozen random LLM starts near uniform (ln 260 ≈ 5.56); only the mixer and compressor learn
    assert losses[-1] < losses[0] - 0.2, losses


def test_loss_without_full_logits_is_the_same(model):
    batch = collate(items3())
    full, lean = model.forward_batch(batch), model.forward_batch(batch, return_logits=False)
    assert lean.logits is None
    torch.testing.assert_close(lean.loss, full.loss)
    logits, labels = full.logits[:, :-1], full.inputs.labels[:, 1:]
    torch.testing.assert_close(
        full.loss, torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    )


# 8 ------------------------------------------------------------------------------------------------


def test_step1_rolls_one_expert_per_side_reproducibly():
    m = tiny(mode="step1").train()
    batch = collate(items3())
    first = m.forward_batch(batch, step=7)
    again = m.forward_batch(batch, step=7)
    assert torch.equal(first.logits, again.logits) and torch.equal(first.gate_stats, again.gate_stats)
    stats = first.gate_stats
    assert stats.shape == (len(m.mixer_layers), 2, 3) == (2, len(EXPERT_NAMES), len(EXPERT_NAMES[0]))
    assert ((stats == 0) | (stats == 1)).all() and (stats.sum(-1) == 1).all()  # one expert, for every token
    picks = {
        tuple(m.forward_batch(batch, step=s).gate_stats.argmax(-1).flatten().tolist()) for s in range(12)
    }
    assert len(picks) > 1, "different steps should roll different experts"
    # without a step number, the generator seeded by config.seed decides: two models roll alike
    a, b = tiny(mode="step1"), tiny(mode="step1")
    for _ in range(3):
        assert torch.equal(a.forward_batch(batch).gate_stats, b.forward_batch(batch).gate_stats)
    # gradients reach only the rolled experts, and no gate
    m.zero_grad()
    out = m.forward_batch(batch, step=7)
    out.loss.backward()
    for layer, per_side in zip(m.mixer_layers, out.gate_stats.argmax(-1).tolist(), strict=True):
        mixer = m.mixers[str(layer)]
        experts = [
            [mixer.img_aux, mixer.img_lang, mixer.img_self],
            [mixer.lang_aux, mixer.lang_img, mixer.lang_self],
        ]
        for side, pick in enumerate(per_side):
            for k, expert in enumerate(experts[side]):
                assert all((p.grad is not None) == (k == pick) for p in expert.parameters())
        assert mixer.gate_img.weight.grad is None and mixer.gate_lang.weight.grad is None


def test_gate_stats_and_optional_balance_loss():
    batch = collate(items3())
    dense = tiny().forward_batch(batch)
    assert dense.balance_loss is None and torch.equal(dense.loss, dense.lm_loss)
    assert dense.gate_stats.shape == (2, 2, 3)
    torch.testing.assert_close(dense.gate_stats.sum(-1), torch.ones(2, 2))
    assert (dense.gate_stats > 0).all()  # dense softmax: every expert gets some weight
    routed = tiny(gate_top_k=1, balance_loss_coef=0.1).forward_batch(batch)
    assert (
        routed.balance_loss is not None and routed.balance_loss >= 1 - 1e-5
    )  # Switch loss: minimum 1 when balanced
    torch.testing.assert_close(routed.loss, routed.lm_loss + 0.1 * routed.balance_loss)
    torch.testing.assert_close(routed.gate_stats.sum(-1), torch.ones(2, 2))
    routed.loss.backward()


# 9 ------------------------------------------------------------------------------------------------


def test_trainable_state_dict_round_trip():
    trained = tiny().train()
    batch = collate(items3())
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        trained.forward_batch(batch).loss.backward()
        opt.step()
    state = trained.state_dict_trainable()
    assert set(state) == {n for n, p in trained.named_parameters() if p.requires_grad}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = tiny()
    assert not torch.equal(
        fresh.eval().forward_batch(batch).logits, trained.eval().forward_batch(batch).logits
    )
    fresh.load_trainable(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.forward_batch(batch).logits, trained.forward_batch(batch).logits)
    with pytest.raises(KeyError):
        fresh.load_trainable({k: v for k, v in state.items() if "gate" not in k})
    with pytest.raises(KeyError):
        fresh.load_trainable({**state, "llm.lm_head.weight": torch.zeros(1)}, strict=False)


def test_stage0_projector_loads_into_a_frozen_projector():
    stage0 = tiny(train_projector=True)
    projector = {k: v + 1 for k, v in stage0.state_dict_trainable().items() if k.startswith("projector.")}
    step1 = tiny()
    step1.load_trainable(projector, strict=False)
    assert torch.equal(step1.projector[0].weight, projector["projector.0.weight"])


# generation and training details ------------------------------------------------------------------


def prompts(items):
    return collate([dict(i, answer=[]) for i in items])


def test_generation_with_cache_matches_rerunning_the_sequence(model):
    batch = prompts(items3())
    kw = dict(
        pixel_values=batch["pixel_values"],
        aux_input_ids=batch["aux_input_ids"],
        aux_attention_mask=batch["aux_attention_mask"],
        max_new_tokens=6,
    )
    cached, cached_scores = model.generate(
        batch["input_ids"], batch["attention_mask"], **kw, return_scores=True
    )
    rerun, rerun_scores = model.generate(
        batch["input_ids"], batch["attention_mask"], **kw, use_cache=False, return_scores=True
    )
    assert cached == rerun and all(len(r) == 6 for r in cached)
    for a, b in zip(cached_scores, rerun_scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the first step is the forward pass's logit at each row's last prompt token
    out = model.forward_batch(batch)
    last = out.inputs.attention_mask.sum(1) - 1
    torch.testing.assert_close(cached_scores[0], out.logits[torch.arange(3), last], rtol=1e-5, atol=1e-6)
    # a generated answer scored by forward (as labels) gives the same logits as while generating
    items = [dict(i, answer=r) for i, r in zip(items3(), cached, strict=True)]
    scored = model.forward_batch(collate(items))
    for step, scores in enumerate(cached_scores):
        torch.testing.assert_close(scores, scored.logits[torch.arange(3), last + step], rtol=1e-4, atol=1e-5)


def test_batched_generation_matches_alone_and_stops_at_eos(model):
    items = items3()
    batch = prompts(items)
    batched = model.generate(
        batch["input_ids"],
        batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        aux_input_ids=batch["aux_input_ids"],
        aux_attention_mask=batch["aux_attention_mask"],
        max_new_tokens=5,
    )
    for b, item in enumerate(items):
        one = prompts([item])
        alone = model.generate(
            one["input_ids"],
            one["attention_mask"],
            pixel_values=one["pixel_values"],
            aux_input_ids=one["aux_input_ids"],
            aux_attention_mask=one["aux_attention_mask"],
            max_new_tokens=5,
        )
        assert alone[0] == batched[b]
    eos = batched[0][2]
    stopped = model.generate(
        batch["input_ids"][:1],
        batch["attention_mask"][:1],
        pixel_values=batch["pixel_values"][:1],
        aux_input_ids=batch["aux_input_ids"][:1],
        max_new_tokens=5,
        eos_token_id=eos,
    )
    assert stopped[0] == batched[0][: batched[0].index(eos)]
    moai_style = model.generate(
        batch["input_ids"],
        batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        max_new_tokens=3,
        mixer_on_decode=False,
    )
    assert all(len(r) == 3 for r in moai_style)


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = collate(items3())
    grads = []
    for checkpointing in (False, True):
        m = tiny(gradient_checkpointing=checkpointing).train()
        assert m.llm.is_activation_checkpointing == checkpointing
        m.forward_batch(batch).loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_backbone_trains():
    m = tiny(bf16=True).train()
    assert m.llm.dtype == torch.bfloat16 and m.compressor.latents.dtype == torch.float32
    out = m.forward_batch(collate(items3()))
    out.loss.backward()
    assert torch.isfinite(out.loss) and m.mixers["1"].gate_lang.weight.grad.dtype == torch.float32


def test_presets():
    assert {
        "tiny",
        "tiny-qwen2-siglip",
        "smollm2-135m",
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
        "moai-internlm2-7b",
    } <= set(PRESETS)
    moai7b = MoAIConfig.preset("moai-internlm2-7b")
    assert (moai7b.num_queries, moai7b.compressor_depth, moai7b.mixer_every, moai7b.mixer_rank) == (
        64,
        4,
        8,
        64,
    )
    assert MoAIConfig.preset("tiny", mode="step1").mode == "step1"
    with pytest.raises(KeyError):
        MoAIConfig.preset("nope")


# 7 --- what the signs benchmark needs (issue 12) -----------------------------------------------------


def test_train_llm_trains_the_embedding_table_it_saves():
    """embed_tokens once ran under no_grad, so train_llm saved the table as trainable but never trained it."""
    m = tiny(train_llm=True).train()
    m.forward_batch(collate(items3())).loss.backward()
    table = m.llm.get_input_embeddings().weight
    assert table.requires_grad and table.grad is not None and table.grad.abs().sum() > 0
    assert "llm.model.embed_tokens.weight" in m.state_dict_trainable()


def test_freeze_embeddings_keeps_tied_input_and_output_embeddings_frozen():
    with pytest.raises(ValueError, match="train_llm"):
        tiny(freeze_embeddings=True)
    m = tiny(train_llm=True, freeze_embeddings=True, tiny_llm={"tie_word_embeddings": True}).train()
    assert m.llm.get_input_embeddings().weight is m.llm.get_output_embeddings().weight  # tied
    m.forward_batch(collate(items3())).loss.backward()
    assert m.llm.get_input_embeddings().weight.grad is None
    assert all(p.grad is not None for p in m.llm.model.layers.parameters())
    state = m.state_dict_trainable()
    assert not any("embed_tokens" in k or "lm_head" in k for k in state)
    from trainer.model import backbone_fingerprints

    again = tiny(train_llm=True, freeze_embeddings=True, tiny_llm={"tie_word_embeddings": True})
    assert backbone_fingerprints(again)["llm_frozen"] == backbone_fingerprints(m)["llm_frozen"]
    again.load_trainable(state)  # the frozen table is rebuilt from the seed, the rest loads
    m.eval(), again.eval()
    batch = collate(items3())
    torch.testing.assert_close(again.forward_batch(batch).logits, m.forward_batch(batch).logits)


def test_step1_steps_roll_dice_first_then_gate():
    m = tiny(mode="step2", step1_steps=3)
    assert all(c != (None, None) for c in m._roll_dice(0).values())
    assert m._roll_dice(2) == tiny(mode="step1")._roll_dice(2)  # MoAI's step 1, the same dice
    assert m._roll_dice(3) == {} and m._roll_dice(None) == {}  # then (and at inference) the gates


def test_sparse_head_loss_equals_the_full_logits_loss_for_uneven_answers(model):
    items = [sample(2, 1, 3, 0), sample(12, 5, 3, 1), sample(6, 2, 3, 2)]  # answers at different columns
    batch = collate(items)
    full = model.forward_batch(batch, return_logits=True)
    sparse = model.forward_batch(batch, return_logits=False)
    torch.testing.assert_close(sparse.lm_loss, full.lm_loss)


def test_panoptic_map_tokens_reach_the_compressor(model):
    batch = collate(items3())
    without = model.forward_batch(batch).logits
    maps = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with_map = model.forward_batch({**batch, "aux_pixel_values": maps}).logits
    assert not torch.allclose(with_map, without)
    off = tiny(use_aux=False).eval()
    assert torch.equal(
        off.forward_batch({**batch, "aux_pixel_values": maps}).logits, off.forward_batch(batch).logits
    )


def test_expert_init_unit_gives_near_unit_gain_projections():
    with pytest.raises(ValueError, match="expert_init"):
        tiny(expert_init="xavier")
    default, unit = tiny(), tiny(expert_init="unit", mixer_rank=32)
    layer = next(iter(unit.mixers.values()))
    stds = [
        m.weight.std().item() * m.in_features**0.5
        for n, m in layer.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.startswith("gate_")
    ]
    assert len(stds) == 6 * 4 * 2 and all(0.8 < s < 1.2 for s in stds)  # 6 experts x Q,K,V,O x 2 factors
    pytorch = next(iter(default.mixers.values())).lang_aux.v[0]
    assert pytorch.weight.std().item() * pytorch.in_features**0.5 < 0.7  # PyTorch's default: ~1/sqrt(3)
    torch.testing.assert_close(  # the gates keep PyTorch's init, and the same seed gives the same model
        layer.gate_img.weight,
        next(iter(tiny(expert_init="unit", mixer_rank=32).mixers.values())).gate_img.weight,
    )
