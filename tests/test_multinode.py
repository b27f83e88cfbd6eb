"""Multi-node, for real: a two-node Ray cluster on this machine (a head and a worker node, each its own
raylet with its own resources, as `ray start` makes them), the `moai annotate` job spread across both,
the worker node killed hard while images are in flight, and the job still finishing with every image
committed exactly once (and a rerun finding nothing left to do)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_MODELS
from warehouse.store import Warehouse

# Enough that the experts are still running when the first commit lands: the workers' first write
# task starts a fresh worker process (imports), so commits begin some seconds after the experts do;
# with 40 images the experts had sometimes finished (their actors gone) before the first commit.
N_IMAGES = 80
# pipeline/executors.py: every expert's Ray actor is a MapWorker(MapBatches(<this>))
STAGE_ACTOR = "_ArrowExpertStage"


@pytest.fixture()
def corpus_folder(tmp_path, sample_image):
    """N_IMAGES photos: the sample corpus's images, each under several names."""
    from corpora.sample import SOURCES

    folder = tmp_path / "photos"
    folder.mkdir()
    stems = [stem for stem, *_ in SOURCES]
    for i in range(N_IMAGES):
        stem = stems[i % len(stems)]
        shutil.copy(sample_image(stem), folder / f"{i:02d}_{stem}.jpg")
    return folder


@pytest.fixture()
def profile_file(tmp_path):
    """One real, cheap expert: the shared CenterNet ONNX detector, or where those test models are not
    installed, the tiny random-init YOLO of tests/profiles/fast.yaml (run with --allow-random-weights)."""
    path = tmp_path / "multinode.yaml"
    centernet = SHARED_MODELS / "centernet.onnx"
    if centernet.is_file():
        detection = (
            f"backend: onnx, model: centernet, preset: centernet, weights: {centernet}, labels: coco80"
        )
    else:
        detection = (
            "backend: ultralytics, model: yolo11n.yaml, weights: random-init, labels: coco80, imgsz: 160"
        )
    path.write_text(f"experts:\n  detection: {{{detection}}}\nverbalize: {{}}\n")
    return path


@pytest.fixture()
def two_nodes(monkeypatch):
    """A head node (1 CPU, resource `head`) and a worker node (2 CPUs, resource `worker`): separate
    GCS/raylet/worker processes, torn down (no raylet left behind) whatever the test does. The job sizes
    its pool from all 3 CPUs (3 detection actors of 0.25 CPU, spread over both nodes), so once the
    worker node is gone its actors restart on the head, where they leave too little of its one CPU
    for any task of the job that needs CPU of its own (a 0.5-CPU decode re-run for a block lost with
    the node, a 1-CPU column drop): the job must not need such tasks, or it can hang (run_ray)."""
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError as err:  # pragma: no cover - ray ships it
        pytest.skip(f"ray.cluster_utils is not available in this ray: {err}")
    # Cluster publishes its address in /tmp/ray/ray_current_cluster, where any plain `ray.init()` on
    # this machine (another test, another checkout) would find it and join this cluster, whose worker
    # node is about to be killed; and its shutdown deletes that file, whoever wrote it. Neither here:
    # the job is pointed at this cluster through RAY_ADDRESS only.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    monkeypatch.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Unix socket paths must stay short
    # the machine's own address (the default): `ray.init(address=...)` turns 127.0.0.1 into it
    common = {"object_store_memory": 200 * 2**20, "temp_dir": temp_dir}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**common, "num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False},
    )
    try:
        worker = cluster.add_node(**common, num_cpus=2, resources={"worker": 1})
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        cluster.shutdown()
        cluster.global_state.disconnect()  # drop its GCS client in this process: Cluster.shutdown keeps it
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stage_actors(cluster) -> list[dict]:
    return [a for a in cluster.global_state.actor_table(None).values() if STAGE_ACTOR in a["ActorClassName"]]


def _first_commit_in(wh_dir: Path) -> bool:
    """Whether a commit of annotated images is published (the manifest names an `images` file)."""
    try:
        return bool(json.loads((wh_dir / "_manifest.json").read_text())["tables"].get("images"))
    except (OSError, ValueError, KeyError):
        return False  # not written yet, or caught mid-replace


@pytest.mark.slow
def test_worker_node_killed_mid_run_every_image_exactly_once(
    tmp_path, corpus_folder, profile_file, two_nodes
):
    cluster, worker = two_nodes
    head_id, worker_id = cluster.head_node.node_id, worker.node_id
    wh_dir = tmp_path / "wh"
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster.address,
        "MOAI_DATA": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "annotate",
        "--dataset",
        "multinode",
        "--images",
        str(corpus_folder),
        "--profile",
        str(profile_file),
        "--warehouse",
        str(wh_dir),
        "--executor",
        "ray",
        "--commit-every",
        "2",
        "--allow-random-weights",  # only the fallback detector has random weights
    ]
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    try:
        # wait until the job is under way on both nodes: a first commit is in, and an expert actor is
        # alive on the worker node
        deadline = time.monotonic() + 120
        on_worker = []
        while time.monotonic() < deadline and driver.poll() is None:
            on_worker = [
                a
                for a in _stage_actors(cluster)
                if a["State"] == "ALIVE" and a["Address"]["NodeID"] == worker_id
            ]
            if on_worker and _first_commit_in(wh_dir):
                break
            time.sleep(0.05)
        assert driver.poll() is None, (
            "the job ended before the worker node could be killed:\n" + log.read_text()[-3000:]
        )
        assert on_worker, "no expert actor ever ran on the worker node:\n" + log.read_text()[-3000:]
        cluster.remove_node(worker, allow_graceful=False)  # SIGKILL its raylet and workers
        killed_at = time.monotonic()
        wh = Warehouse(wh_dir)
        at_kill = wh.query("SELECT count(*) AS n FROM images").to_pylist()[0]["n"]
        assert at_kill < N_IMAGES, "the kill should land mid-run"

        rc = driver.wait(timeout=150)  # a hang (see two_nodes) fails here
        finished_in = time.monotonic() - killed_at
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    output = log.read_text()
    assert rc == 0, output[-4000:]

    # the job was driven from the head node (the driver stayed up while the worker node died)
    assert {a["OwnerAddress"]["NodeID"] for a in _stage_actors(cluster)} == {head_id}

    _assert_exactly_once(Warehouse(wh_dir), corpus_folder)
    print(f"{at_kill} of {N_IMAGES} images committed at the kill; finished {finished_in:.1f} s after it")

    # a rerun (on the head node alone now) finds every image done and adds nothing
    before = _counts(Warehouse(wh_dir))
    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert f"{N_IMAGES} already done, 0 to process" in rerun.stderr
    assert _counts(Warehouse(wh_dir)) == before


TABLES = ("images", "detections", "aux_text", "errors", "done")


def _counts(wh: Warehouse) -> dict[str, int]:
    return {t: wh.query(f"SELECT count(*) AS n FROM {t}").to_pylist()[0]["n"] for t in TABLES}


def _assert_exactly_once(wh: Warehouse, folder: Path) -> None:
    listed = {p.name for p in folder.iterdir()}
    images = wh.query("SELECT image_id, file_name FROM images").to_pylist()
    assert sorted(r["file_name"] for r in images) == sorted(listed)
    assert len({r["image_id"] for r in images}) == N_IMAGES
    assert wh.query("SELECT count(*) AS n FROM errors").to_pylist() == [{"n": 0}]
    # one `done` row per (image, expert, config): decode, each expert and the aux text, all ok
    done = wh.query(
        "SELECT expert, count(*) AS n, count(DISTINCT image_id) AS images, count(DISTINCT config_hash) AS "
        "configs, bool_and(status = 'ok') AS ok FROM done GROUP BY expert ORDER BY expert"
    ).to_pylist()
    assert done == [
        {"expert": e, "n": N_IMAGES, "images": N_IMAGES, "configs": 1, "ok": True}
        for e in sorted(("decode", "detection", "aux"))
    ]
    assert wh.query("SELECT count(*) AS n, count(DISTINCT image_id) AS i FROM aux_text").to_pylist() == [
        {"n": N_IMAGES, "i": N_IMAGES}
    ]
    # no key twice in any table
    for table, key in (
        ("images", "image_id"),
        ("detections", "image_id, det_index"),
        ("aux_text", "image_id"),
        ("done", "image_id, expert, config_hash"),
    ):
        dup = wh.query(f"SELECT {key}, count(*) AS n FROM {table} GROUP BY ALL HAVING n > 1")
        assert dup.num_rows == 0, (table, dup.to_pylist()[:5])
