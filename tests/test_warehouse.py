"""The warehouse: atomic commits published by manifest, crash leftovers invisible and cleaned, compaction."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from warehouse.store import Warehouse


def _done(dataset, image_id, expert="ocr", config_hash="h1"):
    return {
        "dataset": dataset,
        "image_id": image_id,
        "expert": expert,
        "config_hash": config_hash,
        "status": "ok",
        "n_records": 1,
        "seconds": 0.01,
        "run_id": "r1",
    }


def _det(dataset, image_id, i=0):
    return {
        "dataset": dataset,
        "image_id": image_id,
        "run_id": "r1",
        "model": "m",
        "backend": "onnx",
        "weights_sha256": "abc",
        "config_hash": "h1",
        "det_index": i,
        "label": "person",
        "class_id": 0,
        "score": 0.9,
        "x1": 1.0,
        "y1": 2.0,
        "x2": 30.0,
        "y2": 40.0,
    }


def test_empty_warehouse_has_every_table(tmp_path):
    wh = Warehouse(tmp_path)
    for table in (
        "images",
        "detections",
        "segments",
        "relations",
        "ocr",
        "aux_text",
        "errors",
        "runs",
        "done",
    ):
        assert wh.query(f"SELECT count(*) AS n FROM {table}").to_pylist() == [{"n": 0}]
    cols = wh.query("SELECT * FROM ocr").column_names
    assert {"dataset", "image_id", "text", "score", "run_id", "config_hash", "weights_sha256"} <= set(cols)


def test_commit_is_partitioned_by_table_and_dataset(tmp_path):
    wh = Warehouse(tmp_path)
    wh.commit(
        {"detections": [_det("a", 1), _det("a", 1, 1), _det("b", 2)], "done": [_done("a", 1), _done("b", 2)]}
    )
    files = sorted(p.relative_to(tmp_path).as_posix() for p in wh.files("detections"))
    assert [f.rsplit("/", 1)[0] for f in files] == ["detections/dataset=a", "detections/dataset=b"]
    meta = pq.ParquetFile(wh.files("detections")[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    got = wh.query("SELECT dataset, count(*) AS n FROM detections GROUP BY 1 ORDER BY 1").to_pylist()
    assert got == [{"dataset": "a", "n": 2}, {"dataset": "b", "n": 1}]


def test_files_of_an_unpublished_commit_are_invisible_and_cleaned(tmp_path):
    wh = Warehouse(tmp_path)
    wh.commit({"done": [_done("a", 1)]})
    # a writer that died after moving its (journaled) file into place but before publishing the manifest
    orphan = tmp_path / "done" / "dataset=a" / "part-crashed.parquet"
    pq.write_table(pq.read_table(wh.files("done")[0]), orphan)
    wh._journal("crashed", ["done/dataset=a/part-crashed.parquet"])
    (tmp_path / "_staging" / "x" / "done").mkdir(parents=True)
    assert wh.query("SELECT count(*) AS n FROM done").to_pylist() == [{"n": 1}]
    assert wh.recover() == [orphan]
    assert (
        not orphan.exists() and not (tmp_path / "_staging").exists() and not (tmp_path / "_journal").exists()
    )


def test_files_nobody_accounts_for_are_quarantined_not_deleted(tmp_path, capsys):
    wh = Warehouse(tmp_path)
    wh.commit({"done": [_done("a", 1)]})
    stray = tmp_path / "done" / "dataset=a" / "part-from-elsewhere.parquet"
    pq.write_table(pq.read_table(wh.files("done")[0]), stray)
    assert wh.recover() == []
    kept = list((tmp_path / "_quarantine").rglob("part-from-elsewhere.parquet"))
    assert len(kept) == 1 and not stray.exists()
    assert "moved, not deleted" in capsys.readouterr().err
    assert wh.query("SELECT count(*) AS n FROM done").to_pylist() == [{"n": 1}]


def test_a_failed_commit_publishes_nothing(tmp_path):
    wh = Warehouse(tmp_path)
    wh.commit({"done": [_done("a", 1)]})
    before = wh.manifest()
    bad = {"done": [_done("a", 2)], "detections": [{**_det("a", 2), "score": "not a number"}]}
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError)):
        wh.commit(bad)
    assert wh.manifest() == before
    assert wh.query("SELECT count(*) AS n FROM done").to_pylist() == [{"n": 1}]


def test_compaction_merges_small_files_without_changing_rows(tmp_path):
    wh = Warehouse(tmp_path)
    for i in range(10):
        wh.commit({"done": [_done("a", i)], "detections": [_det("a", i)]})
    before = wh.query("SELECT * FROM detections ORDER BY image_id").to_pylist()
    assert len(wh.files("detections")) == 10
    removed = wh.compact(min_files=8)
    assert removed == 20
    assert len(wh.files("detections")) == 1 and len(wh.files("done")) == 1
    assert wh.query("SELECT * FROM detections ORDER BY image_id").to_pylist() == before
    on_disk = {p for p in (tmp_path / "detections").rglob("*.parquet")}
    assert on_disk >= set(wh.files("detections"))  # replaced files stay for readers until the grace ends
    assert json.loads((tmp_path / "_manifest.json").read_text())["version"] == 10 + 2
    Warehouse(tmp_path, retire_grace_s=0).recover()  # the grace is over: replaced files go
    assert {p for p in (tmp_path / "detections").rglob("*.parquet")} == set(wh.files("detections"))
