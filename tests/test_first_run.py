"""A newcomer's first `moai annotate`: real boxes and masks on the sample, a terminal that shows only
the project's own lines, and a missing weight file refused in seconds before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO


def _moai(*args: str, env: dict, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_first_annotate_shows_a_person_with_its_mask_in_few_lines(tmp_path, npm_weights):
    from annotators.masks import decode_rle
    from warehouse.store import Warehouse

    _, weights = npm_weights
    env = {"MOAI_DATA": str(tmp_path / "data"), "MOAI_WEIGHTS": str(weights)}
    result = _moai("annotate", "--dataset", "sample", env=env, cwd=tmp_path)  # the README's first command
    assert result.returncode == 0, result.stderr[-3000:]
    terminal = (result.stdout + result.stderr).splitlines()
    assert len(terminal) < 40, "\n".join(terminal)
    assert not [line for line in terminal if "WARNING" in line or " INFO " in line or "Traceback" in line]
    logs = list((tmp_path / "outputs" / "logs").glob("annotate-*.log"))
    assert len(logs) == 1 and str(logs[0].relative_to(tmp_path)) in result.stderr  # where Ray's lines went

    wh = Warehouse(tmp_path / "outputs" / "warehouse")
    astronaut = wh.query(
        "SELECT image_id, width, height FROM images WHERE file_name = 'astronaut.jpg'"
    ).to_pylist()[0]
    people = wh.query(
        "SELECT * FROM detections WHERE image_id = ? AND label = 'person' ORDER BY score DESC",
        [astronaut["image_id"]],
    ).to_pylist()
    assert people and people[0]["score"] > 0.5 and people[0]["weights_sha256"] != "random-init"
    box = people[0]
    segments = wh.query(
        "SELECT * FROM segments WHERE image_id = ? AND label = 'person'", [astronaut["image_id"]]
    ).to_pylist()
    assert segments and segments[0]["weights_sha256"] != "random-init"
    mask = decode_rle(
        {"size": [segments[0]["rle_height"], segments[0]["rle_width"]], "counts": segments[0]["rle_counts"]}
    )
    ys, xs = np.nonzero(mask)
    inside = (xs >= box["x1"] - 2) & (xs <= box["x2"] + 2) & (ys >= box["y1"] - 2) & (ys <= box["y2"] + 2)
    assert mask.sum() > 0.1 * (box["x2"] - box["x1"]) * (box["y2"] - box["y1"])  # a real mask, not a speckle
    assert inside.mean() > 0.95  # and it follows the person
    cup = (
        wh.query(
            "SELECT d.label FROM detections d JOIN images i USING (dataset, image_id) "
            "WHERE i.file_name = 'coffee.jpg' ORDER BY d.score DESC LIMIT 2"
        )
        .column("label")
        .to_pylist()
    )
    assert "cup" in cup


def test_a_missing_weight_file_fails_in_seconds_before_anything_starts(tmp_path):
    from PIL import Image

    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(folder / "green.png")
    profile = tmp_path / "yolo.yaml"
    profile.write_text("experts:\n  detection:\n    backend: ultralytics\n    model: yolo11s.pt\n")
    env = {
        "MOAI_DATA": str(tmp_path / "data"),
        "MOAI_WEIGHTS": str(tmp_path / "weights"),
        "MOAI_OFFLINE": "1",
    }
    start = time.perf_counter()
    result = _moai("annotate", "--dataset", "mine", "--images", str(folder), "--profile", str(profile),
                   env=env, cwd=tmp_path)  # fmt: skip
    assert time.perf_counter() - start < 10
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "yolo11s.pt" in lines[0] and str(tmp_path / "weights") in lines[0]
    assert not (tmp_path / "outputs").exists()  # no cluster, no log, no warehouse: nothing started


@pytest.mark.slow
def test_plan_estimates_the_following_run_within_a_factor_of_two(tmp_path, sample_image, monkeypatch):
    import shutil

    from pipeline.annotate import annotate, plan
    from warehouse.store import Warehouse

    folder = tmp_path / "photos"
    folder.mkdir()
    for stem in ("astronaut", "coffee", "bus", "chelsea", "page", "motorcycle_left"):
        shutil.copy(sample_image(stem), folder / f"{stem}.jpg")
    args = dict(images=str(folder), profile=str(REPO / "tests" / "profiles" / "fast.yaml"),
                warehouse=tmp_path / "wh", allow_random_weights=True, executor="local")  # fmt: skip
    monkeypatch.setenv("MOAI_DATA", str(tmp_path / "data"))
    before = plan("photos", **args)
    assert (
        before.todo == 6
        and before.seconds
        and all(c.source.startswith("probe") for c in before.experts.values())
    )
    assert not (tmp_path / "wh" / "_manifest.json").exists()  # planning writes nothing
    start = time.perf_counter()
    assert annotate("photos", **args) == 0
    took = time.perf_counter() - start
    assert 0.5 <= before.seconds / took <= 2.0, (before.seconds, took)
    after = plan("photos", **args)  # nothing left; the history now answers without a probe
    assert after.todo == 0 and after.seconds == 0.0
    runs = Warehouse(tmp_path / "wh").query("SELECT counts_json FROM runs").to_pylist()
    assert "startup_s" in runs[0]["counts_json"]
