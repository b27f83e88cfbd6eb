"""The annotation job: every image annotated or recorded as an error, exactly once, resumable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpora.resolve import resolve_corpus
from pipeline.annotate import run_annotation
from pipeline.profiles import JobSpec, load_profile
from tests.conftest import REPO
from warehouse.store import Warehouse

FAST = str(REPO / "tests" / "profiles" / "fast.yaml")
ANNOTATION_TABLES = ("images", "detections", "segments", "relations", "ocr", "aux_text", "errors")


@pytest.fixture()
def odd_folder(tmp_path, sample_image):
    """Three real photos and one of each kind of bad file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for stem in ("coffee", "bus", "page"):
        shutil.copy(sample_image(stem), folder / f"{stem}.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image at all")
    data = sample_image("astronaut").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 4])
    from PIL import Image

    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    Image.new("CMYK", (64, 48), (0, 255, 0, 0)).save(folder / "cmyk.jpg")
    return folder


def _counts(wh: Warehouse) -> dict[str, int]:
    return {t: wh.query(f"SELECT count(*) AS n FROM {t}").to_pylist()[0]["n"] for t in ANNOTATION_TABLES}


def _run(corpus, wh, profile=FAST, **kw):
    job = JobSpec(
        dataset=corpus.name, profile="fast", allow_random_weights=True, batch_size=2, commit_every=3
    )
    return run_annotation(corpus, load_profile(profile), job, wh, executor="local", **kw)


def test_every_file_is_annotated_or_an_error_never_both_and_reruns_add_nothing(tmp_path, odd_folder):
    corpus = resolve_corpus("odd", images=odd_folder, root=tmp_path / "data")
    wh = Warehouse(tmp_path / "wh")
    assert _run(corpus, wh) == 0

    annotated = set(wh.query("SELECT file_name FROM images").column("file_name").to_pylist())
    failed = {
        r["file_name"]: r["reason"] for r in wh.query("SELECT file_name, reason FROM errors").to_pylist()
    }
    listed = {r.file_name for r in corpus.images()}
    assert annotated | set(failed) == listed and not annotated & set(failed)
    assert annotated == {"coffee.jpg", "bus.jpg", "page.jpg", "cmyk.jpg"}
    assert failed == {
        "empty.jpg": "empty",
        "notes.png": "not-an-image",
        "truncated.jpg": "truncated",
        "dot.png": "too-small",
    }
    # every expert ran once per good image, and every row says which weights made it
    done = wh.query("SELECT expert, count(*) AS n FROM done WHERE status = 'ok' GROUP BY 1").to_pylist()
    assert {r["expert"]: r["n"] for r in done} == {
        e: 4 for e in ("decode", "detection", "segmentation", "sgg", "ocr", "aux")
    }
    assert wh.query("SELECT DISTINCT weights_sha256 FROM detections").to_pylist() == [
        {"weights_sha256": "random-init"}
    ]
    assert wh.query("SELECT bool_and(random_init) AS r FROM aux_text").to_pylist() == [{"r": True}]
    page_text = " ".join(
        wh.query(
            "SELECT text FROM ocr o JOIN images i USING (dataset, image_id) WHERE i.file_name = 'page.jpg'"
        )
        .column("text")
        .to_pylist()
    )
    assert "segmentation" in page_text.lower()

    before = _counts(wh)
    assert _run(corpus, wh) == 0
    assert _counts(wh) == before
    assert wh.query("SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 2}]


def test_a_changed_config_recomputes_only_that_expert(tmp_path, sample_image):
    folder = tmp_path / "two"
    folder.mkdir()
    for stem in ("coffee", "text"):
        shutil.copy(sample_image(stem), folder / f"{stem}.jpg")
    corpus = resolve_corpus("two", images=folder, root=tmp_path / "data")
    wh = Warehouse(tmp_path / "wh")
    _run(corpus, wh)
    profile = tmp_path / "changed.yaml"
    profile.write_text(
        Path(FAST).read_text().replace("backend: geometric", "backend: geometric\n    max_relations: 7")
    )
    before = wh.query("SELECT expert, count(*) AS n FROM done GROUP BY 1").to_pylist()
    _run(corpus, wh, profile=str(profile))
    after = wh.query("SELECT expert, count(*) AS n FROM done GROUP BY 1").to_pylist()
    delta = {r["expert"]: r["n"] for r in after}
    for r in before:
        delta[r["expert"]] -= r["n"]
    assert delta == {"decode": 0, "detection": 0, "segmentation": 0, "sgg": 2, "ocr": 0, "aux": 2}
    # the old rows stay, told apart by config_hash
    assert wh.query("SELECT count(DISTINCT config_hash) AS n FROM done WHERE expert = 'sgg'").to_pylist() == [
        {"n": 2}
    ]


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_kill_9_mid_run_then_rerun_leaves_every_record_exactly_once(tmp_path, sample_image, executor):
    # with Ray, the workers write the rows under _incoming/ and the driver commits them: the kill can
    # land between a worker's write and the driver's commit
    folder = tmp_path / "many"
    folder.mkdir()
    # Enough images that the kill lands mid-run although results can reach the driver in bursts (a
    # worker's block of several images, committed one after another; with 6 images, one burst held
    # them all on a fast machine)
    stems = ["coffee", "chelsea", "rocket", "camera", "horse", "bus"] * 4
    for i, stem in enumerate(stems):
        shutil.copy(sample_image(stem), folder / f"{i}_{stem}.jpg")
    root = tmp_path / "data"
    wh_dir = tmp_path / "wh"
    env = {**os.environ, "MOAI_DATA": str(root), "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "annotate",
        "--dataset",
        "many",
        "--images",
        str(folder),
        "--profile",
        FAST,
        "--warehouse",
        str(wh_dir),
        "--executor",
        executor,
        "--allow-random-weights",
        "--commit-every",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = wh_dir / "_manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and json.loads(manifest.read_text())["version"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wh = Warehouse(wh_dir)
    partial = wh.query("SELECT count(*) AS n FROM images").to_pylist()[0]["n"]
    print(f"{partial} of {len(stems)} images committed at the kill")
    assert 1 <= partial < len(stems), f"the kill should land mid-run ({partial} of {len(stems)} committed)"

    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    keys = wh.query("SELECT image_id, expert, config_hash, count(*) AS n FROM done GROUP BY ALL HAVING n > 1")
    assert keys.num_rows == 0
    assert wh.query("SELECT count(*) AS n FROM images").to_pylist()[0]["n"] == len(stems)
    assert wh.query("SELECT count(DISTINCT image_id) AS n FROM aux_text").to_pylist()[0]["n"] == len(stems)
    dup = wh.query("SELECT image_id, det_index, count(*) AS n FROM detections GROUP BY ALL HAVING n > 1")
    assert dup.num_rows == 0
    on_disk = {p for p in wh_dir.rglob("*.parquet")}
    named = {p for t in ANNOTATION_TABLES + ("done", "runs") for p in wh.files(t)}
    # files compaction retired stay for readers in flight until their grace ends; they are named too
    named |= {wh.root / r["file"] for r in wh.manifest()["retired"]}
    assert on_disk == named  # the killed writer's leftovers (its workers' staged rows too) were cleaned


def test_reverbalize_writes_a_new_aux_version_from_stored_rows_only(tmp_path, sample_image):
    from pipeline.reverbalize import reverbalize

    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(sample_image("page"), folder / "page.jpg")
    corpus = resolve_corpus("one", images=folder, root=tmp_path / "data")
    wh = Warehouse(tmp_path / "wh")
    _run(corpus, wh)
    default = wh.query("SELECT ocr_text FROM aux_text").to_pylist()[0]["ocr_text"]
    lines = wh.query("SELECT text, score FROM ocr ORDER BY line_index").to_pylist()
    assert any(line["score"] < 0.99 for line in lines)

    assert reverbalize(wh, "one", {"ocr_threshold": 0.99}) == 1
    assert reverbalize(wh, "one", {"ocr_threshold": 0.99}) == 0  # same thresholds: nothing new
    versions = wh.query("SELECT config_hash, ocr_text FROM aux_text ORDER BY run_id").to_pylist()
    assert len(versions) == 2 and versions[0]["ocr_text"] == default
    strict = versions[1]["ocr_text"]
    kept = [line["text"] for line in lines if line["score"] >= 0.99]
    assert all(text in strict for text in kept) and len(strict) < len(default)
    assert wh.query("SELECT count(*) AS n FROM ocr").to_pylist()[0]["n"] == len(lines)  # no model re-ran
