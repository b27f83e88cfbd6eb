"""The `moai` command: clean, one-paragraph failures for the mistakes a newcomer makes first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def moai(*args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=120,
    )


def _assert_clean_failure(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    message = result.stderr.strip()
    assert message and "\n\n" not in message and len(message.splitlines()) <= 2


def test_coco_without_data_fails_cleanly(tmp_path):
    result = moai("annotate", "--dataset", "coco", env={"COCO_ROOT": str(tmp_path / "nowhere")})
    _assert_clean_failure(result)
    assert "COCO 2017 was not found" in result.stderr and "Nothing is downloaded" in result.stderr


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "a/../../b"])
def test_path_like_dataset_names_are_refused(name, tmp_path):
    result = moai("annotate", "--dataset", name, env={"MOAI_DATA": str(tmp_path)})
    _assert_clean_failure(result)
    assert "Refusing dataset name" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing was created


def test_make_annotate_refuses_bad_names_too(tmp_path):
    result = subprocess.run(
        ["make", "-s", "annotate", "DATASET=../../etc"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "MOAI_DATA": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode != 0
    assert "Refusing dataset name" in result.stderr and "Traceback" not in result.stderr


def test_datasets_lists_the_sample_corpus(tmp_path):
    result = moai("datasets", "--dataset", "sample", env={"MOAI_DATA": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    name, split, count, folder = result.stdout.strip().split("\t")
    assert (name, split) == ("sample", "val2017") and count.startswith("13 ")
    assert (tmp_path / "sample" / "annotations" / "instances_val2017.json").is_file()


def test_eval_without_a_model_says_how_to_get_one(tmp_path):
    result = moai("eval", "--model", str(tmp_path / "nothing"))
    _assert_clean_failure(result)
    assert "moai export-model" in result.stderr


def test_moai_train_refuses_a_config_typo_and_a_used_run_folder_before_lightning_loads(tmp_path):
    """The two mistakes `moai train` can catch from the YAML and the disk alone are refused before the
    trainer's imports (Lightning alone takes ~8 s here): one clean paragraph, nothing written."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "train-tiny.yaml").read_text(encoding="utf-8"))
    cfg["run"] = {**cfg.get("run", {}), "out": str(tmp_path / "runs"), "name": "used"}
    typo = {**cfg, "model": {**cfg["model"], "mixer_rnak": 8}}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(typo), encoding="utf-8")
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (tmp_path / "runs" / "used" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "used" / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run")
    probe = (
        "import sys; from cli.main import main; rc = main(sys.argv[1:]); "
        "print('lightning loaded' if 'lightning' in sys.modules else 'lightning not loaded'); sys.exit(rc)"
    )
    for config, expected in [("typo.yaml", "mixer_rank"), ("ok.yaml", "already holds")]:
        result = subprocess.run(
            [sys.executable, "-c", probe, "train", "--config", str(tmp_path / config)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        _assert_clean_failure(result)
        assert expected in result.stderr
        assert result.stdout.strip() == "lightning not loaded"
    assert [p.name for p in (tmp_path / "runs" / "used").rglob("*")] == ["checkpoints", "last.ckpt"]
