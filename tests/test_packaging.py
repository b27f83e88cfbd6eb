"""Configs and profiles ship as package data: a normal (non-editable) wheel install finds the same
profiles, job specs and training configs as the source checkout, from any working directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

PROBE = """
import json, pipeline
from pipeline.profiles import PROFILES_DIR, load_job, load_profile
from trainer.config import load_config
print(json.dumps({
    "from": pipeline.__file__,
    "profiles": sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")),
    "sample_profile": load_job("sample").profile,
    "ocr_backend": load_profile("offline-demo").experts["ocr"]["backend"],
    "train_tiny_preset": load_config("configs/train-tiny.yaml")["model"].get("preset"),
}))
"""


@pytest.mark.slow
def test_a_wheel_install_finds_the_shipped_configs(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".*", "outputs", "data", "build", "*.egg-info", "__pycache__"),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("moai_forge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "configs/profiles/offline-demo.yaml" in names and "jobs/sample.yaml" in names
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # what pip install does, without touching this venv
        archive.extractall(target)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=elsewhere, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    import json

    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["from"].startswith(str(target))  # the wheel's copy, not the source checkout
    shipped = sorted(p.stem for p in (REPO / "configs" / "profiles").glob("*.yaml"))
    assert found["profiles"] == shipped
    assert found["sample_profile"] and found["ocr_backend"] and found["train_tiny_preset"]
