"""The streamed planner (pipeline/plan.py) against a plain-Python statement of the ledger's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from corpora.resolve import resolve_corpus
from pipeline import plan as plan_mod
from pipeline.plan import make_plan
from pipeline.profiles import load_profile, plan_hashes
from verbalize.aux import aux_hash, verbalizer_hash
from warehouse.schema import DECODE_KEY
from warehouse.store import Warehouse

FAST = str(Path(__file__).parent / "profiles" / "fast.yaml")


@pytest.fixture
def setup(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"{i:02d}.png")
    corpus = resolve_corpus("twelve", images=folder, root=tmp_path / "data")
    profile = load_profile(FAST)
    hashes = plan_hashes(profile)
    aux_key = aux_hash(verbalizer_hash(profile.verbalize), hashes)
    return corpus, profile, hashes, aux_key, Warehouse(tmp_path / "wh"), tmp_path


def _done(image_id, expert, config_hash, status="ok", records=0, dataset="twelve"):
    return {"dataset": dataset, "image_id": image_id, "expert": expert, "config_hash": config_hash,
            "status": status, "n_records": records, "seconds": 0.0, "run_id": "earlier"}  # fmt: skip


def _expected(ledger: list[dict], ids: list[int], experts, hashes, aux_key, retry_errors: bool):
    """The rules in plain Python: image -> todo experts, for images with anything left."""
    keys: dict[tuple, str] = {}
    for r in ledger:
        key = (r["image_id"], r["expert"], r["config_hash"])
        keys[key] = "ok" if r["status"] == "ok" or keys.get(key) == "ok" else "error"
    if retry_errors:
        keys = {k: s for k, s in keys.items() if s == "ok"}
    out = {}
    for i in ids:
        if keys.get((i, "decode", DECODE_KEY)) == "error":
            continue
        todo = [n for n in experts if (i, n, hashes[n]) not in keys]
        if todo or (i, "aux", aux_key) not in keys:
            out[i] = todo
    return out


@pytest.mark.parametrize("retry_errors", [False, True])
def test_plan_follows_the_ledger_rules_and_fills_stored_records(setup, monkeypatch, retry_errors):
    corpus, profile, hashes, aux_key, wh, tmp = setup
    monkeypatch.setattr(plan_mod, "BATCH_ROWS", 5)  # several DuckDB batches and spooled files
    experts = list(profile.experts)
    ledger = []
    for i in (1, 2, 3):  # everything done
        ledger += [_done(i, "decode", DECODE_KEY)] + [_done(i, n, hashes[n]) for n in experts]
        ledger.append(_done(i, "aux", aux_key))
    ledger += [
        _done(4, "decode", DECODE_KEY),
        _done(4, "detection", hashes["detection"], records=1),
    ]  # partial
    ledger += [_done(5, "decode", DECODE_KEY, "error")]  # unreadable: an errors row
    ledger += [_done(6, "decode", DECODE_KEY), _done(6, "ocr", hashes["ocr"], "error")]  # ocr failed
    ledger += [_done(7, "detection", "another-config")]  # another config: not this plan's key
    ledger += [_done(8, "ocr", hashes["ocr"], "error"), _done(8, "ocr", hashes["ocr"], "ok")]  # retried fine
    ledger += [_done(20, "detection", hashes["detection"])]  # another dataset's row must not count:
    other = dict(ledger[-1], dataset="other", image_id=9)
    wh.commit({"done": ledger + [other]})
    wh.commit({"detections": [{"dataset": "twelve", "image_id": 4, "config_hash": hashes["detection"],
                               "run_id": "earlier", "det_index": 0, "label": "cat", "class_id": 15,
                               "score": 0.9, "x1": 1.0, "y1": 1.0, "x2": 5.0, "y2": 6.0}]})  # fmt: skip

    plan = make_plan(corpus, profile, hashes, wh, aux_key, tmp / "spool", "run-1", retry_errors=retry_errors)
    rows = list(plan.rows())
    ids = [r.image_id for r in corpus.images()]
    expected = _expected(ledger, ids, experts, hashes, aux_key, retry_errors)
    assert {r["image_id"]: r["todo"].split(",") if r["todo"] else [] for r in rows} == expected
    assert [r["image_id"] for r in rows] == [i for i in ids if i in expected]  # listing order
    assert (plan.listed, plan.count, plan.skipped) == (12, len(expected), 12 - len(expected))
    assert plan.todo == {n: sum(n in t for t in expected.values()) for n in experts}
    assert len(plan.files) == -(-len(expected) // 5) and all(r["run_id"] == "run-1" for r in rows)
    by_id = {r["image_id"]: r for r in rows}
    assert json.loads(by_id[4]["detection_records"])[0]["label"] == "cat"  # for the experts downstream
    assert by_id[4]["decode_committed"] and not by_id[9]["decode_committed"]
    assert by_id[9]["detection_records"] == ""
    plan.remove()
    assert not (tmp / "spool").exists()


def test_limit_counts_listed_images_in_listing_order(setup):
    corpus, profile, hashes, aux_key, wh, tmp = setup
    wh.commit({"done": [_done(1, "decode", DECODE_KEY, "error")]})
    plan = make_plan(corpus, profile, hashes, wh, aux_key, tmp / "spool", "r", limit=4)
    assert (plan.listed, plan.skipped) == (4, 1)
    assert [r["image_id"] for r in plan.rows()] == [2, 3, 4]
    assert plan.head(2) == list(plan.rows())[:2]


def test_plan_files_end_on_one_image_blocks(setup, monkeypatch):
    """Each row group is one block of the Ray job: a file's last TAIL_ROWS rows come one per group, so
    the job's last blocks are single images and no actor idles through another's long last block."""
    import pyarrow.parquet as pq

    corpus, profile, hashes, aux_key, wh, tmp = setup
    plan = make_plan(corpus, profile, hashes, wh, aux_key, tmp / "spool", "r")
    sizes = [pq.ParquetFile(plan.files[0]).metadata.row_group(g).num_rows for g in range(5)]
    assert len(plan.files) == 1 and sizes == [4, 1, 1, 1, 1]
    assert pq.ParquetFile(plan.files[0]).metadata.num_row_groups == 1 + plan_mod.TAIL_ROWS
    # several files (one per planning batch): each ends so, and no row is lost, doubled or reordered
    monkeypatch.setattr(plan_mod, "BATCH_ROWS", 10)
    split = make_plan(corpus, profile, hashes, wh, aux_key, tmp / "spool2", "r")
    groups = [[pq.ParquetFile(f).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(f).num_row_groups)]
              for f in split.files]  # fmt: skip
    assert groups == [[2, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1]]
    assert [r["image_id"] for r in split.rows()] == [r["image_id"] for r in plan.rows()] == list(range(1, 13))


def test_registration_and_planning_that_run_out_of_memory_are_run_again_with_more(tmp_path, monkeypatch):
    import os

    import duckdb

    from core import duck

    folder = tmp_path / "many"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    for i in range(4000):
        os.link(tmp_path / "one.png", folder / f"img_{i:05d}.png")
    root = tmp_path / "data"
    monkeypatch.setattr(duck, "MEMORY_STEPS", ("1MB",))  # too little for DuckDB's sort of the listing
    with pytest.raises(duckdb.OutOfMemoryException):
        resolve_corpus("many", images=folder, root=root)
    listing = root / "many" / "annotations" / "images_default.parquet"
    assert not listing.exists() and not list(listing.parent.glob("*.tmp"))  # nothing half-written left
    monkeypatch.setattr(duck, "MEMORY_STEPS", ("1MB", "64MB"))  # the first runs out, the next one works
    corpus = resolve_corpus("many", images=folder, root=root)
    assert [(r.image_id, r.file_name) for r in corpus.images()] == [
        (i + 1, f"img_{i:05d}.png") for i in range(4000)
    ]

    profile = load_profile(FAST)
    hashes = plan_hashes(profile)
    aux_key = aux_hash(verbalizer_hash(profile.verbalize), hashes)
    wh = Warehouse(tmp_path / "wh")
    wh.commit({"done": [_done(i, "decode", DECODE_KEY, "error", dataset="many") for i in range(1, 4001, 2)]})
    monkeypatch.setattr(duck, "MEMORY_STEPS", ("1MB",))
    with pytest.raises(duckdb.OutOfMemoryException):
        make_plan(corpus, profile, hashes, wh, aux_key, tmp_path / "spool", "r")
    monkeypatch.setattr(duck, "MEMORY_STEPS", ("1MB", "64MB"))
    plan = make_plan(corpus, profile, hashes, wh, aux_key, tmp_path / "spool", "r")
    assert [r["image_id"] for r in plan.rows()] == list(range(2, 4001, 2))  # once each, in listing order
    assert (plan.listed, plan.count) == (4000, 2000)
