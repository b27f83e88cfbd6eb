"""The job on Ray: the streaming executor gives the local executor's rows, and a job submitted
through Ray's job API to a real local cluster (`ray start --head` on 127.0.0.1) annotates a corpus."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from corpora.resolve import resolve_corpus
from pipeline.annotate import actor_groups, run_annotation
from pipeline.profiles import JobSpec, load_profile
from tests.conftest import REPO
from warehouse.store import Warehouse

FAST = str(REPO / "tests" / "profiles" / "fast.yaml")
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def three_photos(tmp_path, sample_image):
    folder = tmp_path / "three"
    folder.mkdir()
    for stem in ("coffee", "page", "zidane"):
        shutil.copy(sample_image(stem), folder / f"{stem}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return folder


def _records(wh: Warehouse) -> dict:
    return {
        "detections": wh.query(
            "SELECT i.file_name, label, round(score, 4) s, round(x1) x FROM detections "
            "JOIN images i USING (dataset, image_id) ORDER BY ALL"
        ).to_pylist(),
        "ocr": wh.query(
            "SELECT i.file_name, text FROM ocr JOIN images i USING (dataset, image_id) ORDER BY ALL"
        ).to_pylist(),
        "aux": wh.query("SELECT image_id, text FROM aux_text ORDER BY ALL").to_pylist(),
        "errors": wh.query("SELECT file_name, stage, reason FROM errors ORDER BY ALL").to_pylist(),
    }


# one pool running every expert (what this machine gets), and pools of their own for detection and OCR
# (what a bigger machine gets: the first pool reads and decodes, the last writes)
@pytest.mark.parametrize("actors", [{}, {"detection": 1, "ocr": 1}], ids=["one-pool", "three-pools"])
def test_ray_executor_produces_the_local_executors_rows(tmp_path, three_photos, actors):
    import ray

    corpus = resolve_corpus("three", images=three_photos, root=tmp_path / "data")
    job = JobSpec(
        dataset="three",
        profile="fast",
        allow_random_weights=True,
        batch_size=2,
        commit_every=2,
        actors=actors,
    )
    local, distributed = Warehouse(tmp_path / "local"), Warehouse(tmp_path / "ray")
    run_annotation(corpus, load_profile(FAST), job, local, executor="local")
    try:
        run_annotation(corpus, load_profile(FAST), job, distributed, executor="ray")
    finally:
        ray.shutdown()
    assert _records(distributed) == _records(local)
    # the Ray job's workers wrote the rows (Warehouse.stage) and the driver published them: the run
    # counts the same rows, and leaves nothing behind in _incoming
    counts = [
        json.loads(w.query("SELECT counts_json FROM runs").to_pylist()[0]["counts_json"])
        for w in (local, distributed)
    ]
    assert [{k: v for k, v in c.items() if k.startswith("rows_")} for c in counts] == [
        {k: v for k, v in counts[0].items() if k.startswith("rows_")}
    ] * 2
    assert counts[0]["rows_detections"] > 0
    assert not any((tmp_path / "ray" / "_incoming").iterdir())
    assert [(e["file_name"], e["stage"]) for e in _records(local)["errors"]] == [("broken.jpg", "decode")]


STARTER_COSTS = {"detection": 90.0, "segmentation": 4500.0, "sgg": 1.0, "ocr": 900.0}  # COST_MS


def test_cheap_experts_share_the_actors_of_a_costly_one():
    job = JobSpec(dataset="d", profile="p")
    # 2 CPUs: every expert but SAM is under half a CPU's share, so each actor runs the whole pipeline
    # (two one-thread pipelines side by side, nothing handed between processes)
    assert actor_groups(STARTER_COSTS, job, 2) == [(["detection", "segmentation", "sgg", "ocr"], 2, 0.0)]
    # 16 CPUs: OCR's share (2.6 CPUs) earns it a pool; detection runs before SAM in SAM's actors
    assert actor_groups(STARTER_COSTS, job, 16) == [
        (["detection", "segmentation", "sgg"], 13, 0.0),
        (["ocr"], 3, 0.0),
    ]
    # an actor count in the job spec, or a GPU share, keeps an expert in a pool of its own
    ocr_pinned = JobSpec(dataset="d", profile="p", actors={"ocr": 1})
    assert actor_groups(STARTER_COSTS, ocr_pinned, 2) == [
        (["detection", "segmentation", "sgg"], 2, 0.0),
        (["ocr"], 1, 0.0),
    ]
    gpu = actor_groups(STARTER_COSTS, job, 2, {"detection": 0.5}, gpus=1.0)
    assert gpu == [(["detection"], 1, 0.5), (["segmentation", "sgg", "ocr"], 2, 0.0)]
    # a 16-CPU box with one GPU (jobs/default.yaml's shares): SAM's pool is as many actors as the GPU
    # holds at half a GPU each, not 13 of which 11 would wait for a GPU for ever; a pool's GPU share is
    # the largest of its experts'
    shares = {"detection": 0.25, "segmentation": 0.5, "sgg": 0.0, "ocr": 0.25}
    assert actor_groups(STARTER_COSTS, job, 16, shares, gpus=1.0) == [
        (["detection"], 1, 0.25),
        (["segmentation", "sgg"], 2, 0.5),
        (["ocr"], 3, 0.25),
    ]
    # a cheap expert after a costly one runs in its actors (detection alone is 1.98 CPUs here)
    assert actor_groups({"detection": 90.0, "sgg": 1.0}, job, 2) == [(["detection", "sgg"], 2, 0.0)]
    assert actor_groups({"sgg": 1.0}, job, 2) == [(["sgg"], 2, 0.0)]
    # no expert worth half a CPU (four equal ones on one CPU): one pool runs them all, on one actor
    equal = {"detection": 1.0, "segmentation": 1.0, "sgg": 1.0, "ocr": 1.0}
    assert actor_groups(equal, job, 1) == [(["detection", "segmentation", "sgg", "ocr"], 1, 0.0)]


def test_job_submitted_to_a_local_cluster(tmp_path, three_photos):
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    gcs, dashboard = _free_port(), _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Unix socket paths must stay short
    start = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--include-dashboard=true",
            "--num-cpus=4",
            "--disable-usage-stats",
            f"--temp-dir={ray_tmp}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        # a separate client process, as a user would run it (this process may hold another cluster's token)
        args = [
            "--dataset",
            "three",
            "--images",
            str(three_photos),
            "--profile",
            FAST,
            "--warehouse",
            str(tmp_path / "wh"),
            "--executor",
            "ray",
            "--allow-random-weights",
        ]
        job_env = [f"MOAI_DATA={tmp_path / 'data'}", "RAY_AUTH_MODE=token", f"RAY_AUTH_TOKEN_PATH={token}"]
        client = subprocess.run(
            [
                sys.executable,
                "-m",
                "jobs.submit",
                "--address",
                f"http://127.0.0.1:{dashboard}",
                "--timeout",
                "240",
                *[f"--env={e}" for e in job_env],
                "--",
                *args,
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=400,
        )
        logs = client.stdout
        assert client.returncode == 0 and "SUCCEEDED" in logs, (logs + client.stderr)[-3000:]
        assert "annotate three" in logs and "ray cluster at" in logs
        wh = Warehouse(tmp_path / "wh")
        assert wh.query("SELECT count(*) AS n FROM images").to_pylist() == [{"n": 3}]
        assert wh.query("SELECT count(*) AS n FROM errors").to_pylist() == [{"n": 1}]
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_expert_actors_write_at_most_commit_every_rows_at_a_time():
    """The last expert actors write each call's rows (a plan row group, up to 64) in pieces of at most
    `commit_every`, every row once and in order, within the call that made them."""
    import pyarrow as pa

    from pipeline.executors import _ArrowExpertStage

    written = []

    def write(table, *, tag):
        written.append(table.column("image_id").to_pylist())
        return pa.table({"n": [table.num_rows], "tag": [tag]})

    stage = _ArrowExpertStage([], batch_size=2, drop_pixels=True, write=(write, {"tag": "t"}, 3))
    out = list(stage(pa.table({"image_id": list(range(7)), "pixels": [b""] * 7})))
    assert written == [[0, 1, 2], [3, 4, 5], [6]]
    assert [t.to_pylist() for t in out] == [
        [{"n": 3, "tag": "t"}],
        [{"n": 3, "tag": "t"}],
        [{"n": 1, "tag": "t"}],
    ]
    written.clear()
    assert len(list(stage(pa.table({"image_id": [0, 1, 2], "pixels": [b""] * 3})))) == 1 and written == [
        [0, 1, 2]
    ]
