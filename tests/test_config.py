"""One config pattern (pipeline/config.py) for profiles, job specs and training YAML: every shipped file
loads, and every typo or impossible value is ONE line naming the file, the key and what was meant."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml

from core.config import ConfigError
from core.errors import UserError
from pipeline import profiles
from pipeline.profiles import JobSpec, load_job, load_profile, plan_hashes
from tests.conftest import REPO
from trainer.config import data_config, load_config, model_config, resolve_config
from trainer.inputs import DataConfig
from trainer.model import MoAIConfig


def test_every_shipped_file_loads():
    """Everything under configs/ and jobs/ (and the test profiles) passes the checks it is held to."""
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    profile_files = [p for p in configs if p.parent.name == "profiles"]
    profile_files += sorted((REPO / "tests" / "profiles").glob("*.yaml"))
    train_files = [p for p in configs if p.parent.name != "profiles"]
    job_files = sorted((REPO / "jobs").glob("*.yaml"))
    assert profile_files and train_files and job_files
    for path in profile_files:
        profile = load_profile(str(path))
        assert profile.experts and set(plan_hashes(profile)) == set(profile.experts), path
    for path in job_files:
        job = load_job(path.stem)
        assert job.dataset == path.stem and job.batch_size >= 1, path
        load_profile(job.profile)
    for path in train_files:
        cfg = resolve_config(path)
        mcfg = model_config(cfg["model"])
        assert isinstance(data_config(cfg["data"], mcfg), DataConfig), path


def test_jobspec_is_still_built_directly():
    job = JobSpec(dataset="x", profile="fast", allow_random_weights=True, batch_size=2, commit_every=16)
    assert job.actors == {} and job.__dict__["batch_size"] == 2


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(err.value)
    assert isinstance(err.value, UserError) and isinstance(err.value, ConfigError)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


def _rename(section: str | None, old: str, new: str):
    def mutate(cfg):
        mapping = cfg[section] if section else cfg
        mapping[new] = mapping.pop(old)

    return mutate


def _set(section: str | None, **values):
    def mutate(cfg):
        (cfg[section] if section else cfg).update(values)

    return mutate


# ------------------------------------------------------------------------------------------- jobs

JOB_CASES = {
    "typo": (
        _rename(None, "batch_size", "batch_sise"),
        "unknown key 'batch_sise' (did you mean 'batch_size'?)",
    ),
    "word for a number": (_set(None, batch_size="four"), "'batch_size' is 'four', expected an integer"),
    "zero batch": (_set(None, batch_size=0), "'batch_size' is 0, expected at least 1"),
    "negative batch": (_set(None, batch_size=-4), "'batch_size' is -4, expected at least 1"),
    "float batch": (_set(None, batch_size=2.5), "'batch_size' is 2.5, expected an integer"),
    "bool batch": (_set(None, batch_size=True), "'batch_size' is True, expected an integer"),
    "commit_every 0": (_set(None, commit_every=0), "'commit_every' is 0, expected at least 1"),
    "gpu share > 1": (_set(None, gpus={"ocr": 1.5}), "'gpus.ocr' is 1.5, expected between 0.0 and 1.0"),
    "gpu share < 0": (_set(None, gpus={"ocr": -0.1}), "'gpus.ocr' is -0.1, expected between 0.0 and 1.0"),
    "no actors": (_set(None, actors={"ocr": 0}), "'actors.ocr' is 0, expected at least 1"),
    "actor typo": (_set(None, actors={"ocrr": 1}), "unknown key 'actors.ocrr' (did you mean 'actors.ocr'?)"),
    "gpu typo": (
        _set(None, gpus={"detecton": 0.2}),
        "unknown key 'gpus.detecton' (did you mean 'gpus.detection'?)",
    ),
    "yes for a bool": (
        _set(None, allow_random_weights="yes"),
        "'allow_random_weights' is 'yes', expected true",
    ),
    "splits as a string": (_set(None, splits="val2017"), "'splits' is 'val2017', expected a list of strings"),
    "profile typo": (_rename(None, "profile", "profil"), "unknown key 'profil' (did you mean 'profile'?)"),
}


@pytest.mark.parametrize("case", JOB_CASES)
def test_job_mistakes_are_one_line(case, tmp_path, monkeypatch):
    mutate, expected = JOB_CASES[case]
    raw = yaml.safe_load((REPO / "jobs" / "sample.yaml").read_text())
    mutate(raw)
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(profiles, "JOBS_DIR", tmp_path)
    with pytest.raises(ConfigError) as err:
        load_job("mine")
    _one_line(err, "mine.yaml: ", expected)


# --------------------------------------------------------------------------------------- profiles

PROFILE_CASES = {
    "expert: for experts:": (
        _rename(None, "experts", "expert"),
        "unknown key 'expert' (did you mean 'experts'?)",
    ),
    "experts as a list": (
        lambda cfg: cfg.update(experts=list(cfg["experts"])),
        "'experts' is ['detection', 'segmentation', 'sgg', 'ocr'], expected a mapping",
    ),
    "unknown expert": (
        _rename("experts", "detection", "detecton"),
        "unknown key 'experts.detecton' (did you mean 'experts.detection'?)",
    ),
    "unknown expert, far off": (
        _rename("experts", "sgg", "relations"),
        "unknown key 'experts.relations' (known: ",
    ),
    "empty block": (_set("experts", sgg=None), "'experts.sgg' is None, expected a mapping"),
    "{} block": (_set("experts", sgg={}), "'experts.sgg' is empty"),
    "block as a string": (_set("experts", ocr="rapidocr"), "'experts.ocr' is 'rapidocr', expected a mapping"),
    "backend typo": (
        lambda cfg: cfg["experts"]["ocr"].update(backend="rapid-ocr"),
        "'experts.ocr.backend' is 'rapid-ocr', expected one of 'rapidocr', ",
    ),
    "detection key typo": (
        lambda cfg: cfg["experts"]["detection"].update(score_treshold=0.2),
        "unknown key 'experts.detection.score_treshold' (did you mean 'experts.detection.score_threshold'?)",
    ),
    "onnx-only key on ultralytics": (
        lambda cfg: cfg["experts"]["detection"].update(preset="centernet"),
        "unknown key 'experts.detection.preset'",
    ),
    "segmentation key typo": (
        lambda cfg: cfg["experts"]["segmentation"].update(points_per_sid=4),
        "unknown key 'experts.segmentation.points_per_sid' (did you mean 'experts.segmentation.points_per_side'?)",
    ),
    "sgg key typo": (
        lambda cfg: cfg["experts"]["sgg"].update(max_relation=7),
        "unknown key 'experts.sgg.max_relation' (did you mean 'experts.sgg.max_relations'?)",
    ),
    "ocr key typo": (
        lambda cfg: cfg["experts"]["ocr"].update(det_min_sid=64),
        "unknown key 'experts.ocr.det_min_sid' (did you mean 'experts.ocr.det_min_side'?)",
    ),
    "enabled: no-ish": (
        lambda cfg: cfg["experts"]["ocr"].update(enabled="off"),
        "'experts.ocr.enabled' is 'off', expected true or false",
    ),
    "nothing enabled": (_set(None, experts={}), "no expert enabled under 'experts'"),
    "upstream off": (
        lambda cfg: cfg["experts"]["detection"].update(enabled=False),
        "'experts.segmentation' needs ['detection'] enabled too",
    ),
    "verbalize typo": (
        _set(None, verbalize={"ocr_treshold": 0.9}),
        "unknown key 'verbalize.ocr_treshold' (did you mean 'verbalize.ocr_threshold'?)",
    ),
    "verbalize range": (_set(None, verbalize={"ocr_threshold": 5}), "ocr_threshold must be in [0, 1]"),
    "description typo": (_rename(None, "description", "descripton"), "did you mean 'description'?"),
}


@pytest.mark.parametrize("case", PROFILE_CASES)
def test_profile_mistakes_are_one_line(case, tmp_path):
    mutate, expected = PROFILE_CASES[case]
    raw = yaml.safe_load((REPO / "configs" / "profiles" / "offline-demo.yaml").read_text())
    mutate(raw)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    _one_line(err, "mine.yaml: ", expected)


def test_disabled_experts_are_left_out(tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "profiles" / "offline-demo.yaml").read_text())
    raw["experts"]["ocr"]["enabled"] = False
    path = tmp_path / "no-ocr.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert list(load_profile(str(path)).experts) == ["detection", "segmentation", "sgg"]


def test_an_unknown_profile_name_suggests_one():
    with pytest.raises(UserError, match="Did you mean 'shared-onnx'"):
        load_profile("shared-onx")


# --------------------------------------------------------------------------------------- training

TRAIN_CASES = {
    "presett": (
        _rename("model", "preset", "presett"),
        "unknown key 'model.presett' (did you mean 'model.preset'?)",
    ),
    "modle": (_rename(None, "model", "modle"), "unknown key 'modle' (did you mean 'model'?)"),
    "optim.lrr": (_rename("optim", "lr", "lrr"), "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    "run.nmae": (_rename("run", "name", "nmae"), "unknown key 'run.nmae' (did you mean 'run.name'?)"),
    "batchsize": (
        _rename("data", "batch_size", "batchsize"),
        "unknown key 'data.batchsize' (did you mean 'data.batch_size'?)",
    ),
    "model field typo": (
        _rename("model", "mixer_every", "mixer_evry"),
        "unknown key 'model.mixer_evry' (did you mean 'model.mixer_every'?)",
    ),
    "trainer typo": (
        _rename("trainer", "max_steps", "max_step"),
        "unknown key 'trainer.max_step' (did you mean 'trainer.max_steps'?)",
    ),
    "mode stepp2": (
        _set("model", mode="stepp2"),
        "'model.mode' is 'stepp2', expected one of 'step1', 'step2', 'eval' (did you mean 'step2'?)",
    ),
    "unknown preset": (_set("model", preset="tinny"), "'model.preset' is 'tinny', expected one of 'tiny', "),
    "aux_encoder": (
        _set("model", aux_encoder="lm"),
        "'model.aux_encoder' is 'lm', expected one of 'embed', 'llm'",
    ),
    "gate_top_k": (_set("model", gate_top_k=5), "'model.gate_top_k' is 5, expected between 0 and 3"),
    "batch four": (_set("data", batch_size="four"), "'data.batch_size' is 'four', expected an integer"),
    "batch zero": (_set("data", batch_size=0), "'data.batch_size' is 0, expected at least 1"),
    "batch negative": (_set("data", batch_size=-4), "'data.batch_size' is -4, expected at least 1"),
    "lr as text": (
        _set("optim", lr="1e-4"),
        "'optim.lr' is '1e-4', expected a number (write numbers like 1.0e-4",
    ),
    "lr zero": (_set("optim", lr=0), "'optim.lr' is 0, expected more than 0"),
    "threads zero": (_set("run", threads=0), "'run.threads' is 0, expected at least 1"),
    "tiny_llm as a list": (_set("model", tiny_llm=[128]), "'model.tiny_llm' is [128], expected a mapping"),
    "section as a list": (_set(None, data=["sample"]), "'data' is ['sample'], expected a mapping or null"),
    "seed as text": (_set(None, seed_everything="zero"), "'seed_everything' is 'zero', expected an integer"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_training_mistakes_are_one_line(case, tmp_path):
    mutate, expected = TRAIN_CASES[case]
    raw = yaml.safe_load((REPO / "configs" / "train-tiny.yaml").read_text())
    mutate(raw)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        resolve_config(path)
    _one_line(err, "mine.yaml: ", expected)


def test_overrides_are_checked_too(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_config(REPO / "configs" / "train-tiny.yaml", {"data": {"batchsize": 2}})
    _one_line(err, "train-tiny.yaml (with overrides): ", "did you mean 'data.batch_size'?")


def test_empty_sections_mean_defaults(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text("model:\n  # preset: tiny\ndata:\n")
    cfg = load_config(path)
    assert (
        cfg["model"] == {} and cfg["data"] == {} and model_config(cfg["model"]) == MoAIConfig.preset("tiny")
    )


# ------------------------------------------------------------------------------- not a config at all

BROKEN_FILES = {
    "not YAML": ("key: [1, 2\n", "not valid YAML at line"),
    "tab indentation": ("a:\n\tb: 1\n", "not valid YAML"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\x00\x01", "cannot read it as YAML text"),
    "a list": ("- batch_size: 2\n", "the top level is [{'batch_size': 2}], expected a mapping of keys"),
    "a sentence": ("batch size is two\n", "the top level is 'batch size is two', expected a mapping of keys"),
}


@pytest.mark.parametrize("case", BROKEN_FILES)
@pytest.mark.parametrize("kind", ["profile", "job", "training"])
def test_a_file_that_is_not_a_config_is_one_line(case, kind, tmp_path, monkeypatch):
    content, expected = BROKEN_FILES[case]
    path = tmp_path / "mine.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.setattr(profiles, "JOBS_DIR", tmp_path)
    load = {"profile": lambda: load_profile(str(path)), "job": lambda: load_job("mine")}
    with pytest.raises(ConfigError) as err:
        load.get(kind, lambda: resolve_config(path))()
    _one_line(err, "mine.yaml: ", expected)


def test_a_missing_training_config_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_config(tmp_path / "nope.yaml")
    _one_line(err, "nope.yaml: cannot read it")


# ------------------------------------------------------------------------------------- the command


def _cli(*args, cwd, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_moai_train_prints_one_line_and_no_traceback(tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "train-tiny.yaml").read_text())
    bad = copy.deepcopy(raw)
    bad["model"]["mode"] = "stepp2"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = _cli("train", "--config", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        "moai train: bad.yaml: 'model.mode' is 'stepp2', expected one of 'step1', 'step2', 'eval' "
        "(did you mean 'step2'?)"
    ]


def test_moai_annotate_prints_one_line_for_a_profile_typo(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "one.jpg")
    raw = yaml.safe_load((REPO / "configs" / "profiles" / "offline-demo.yaml").read_text())
    raw["expert"] = raw.pop("experts")  # today's trap: a profile that silently ran zero experts
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(raw))
    result = _cli(
        *("annotate", "--dataset", "mine", "--images", str(images), "--profile", str(tmp_path / "typo.yaml")),
        *("--warehouse", str(tmp_path / "wh"), "--executor", "local"),
        cwd=REPO,
        env={**os.environ, "MOAI_DATA": str(tmp_path / "data")},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "typo.yaml: unknown key 'expert' (did you mean 'experts'?)" in lines[0], lines
    assert not (tmp_path / "wh" / "_manifest.json").exists()
