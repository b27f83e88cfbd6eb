"""Every ```sql block of docs/sql.md runs against a small hand-built warehouse; several give known answers.

Also a smoke test of the warehouse benchmark at a tiny size.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from warehouse.schema import TABLES
from warehouse.sql import read_only_connection, run_query
from warehouse.store import Warehouse

DOCS = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
DS = "coco"
R1, R2 = "20260101T000000Z-aaaaaa", "20260201T000000Z-bbbbbb"
SHA_YOLO_A, SHA_YOLO_B, SHA_SAM = "a" * 64, "b" * 64, "c" * 64

# (image_id, [(label, score), ...]) per detection config
DET_A = {
    1: [("person", 0.9), ("person", 0.8), ("person", 0.7), ("umbrella", 0.6)],
    2: [("person", 0.9)] * 3,
    3: [("person", 0.9), ("person", 0.6), ("car", 0.5)],
    4: [("person", 0.9)] * 4 + [("dog", 0.45)],
    5: [],
    6: [("dog", 0.95), ("dog", 0.35)],
}
DET_B = {
    1: [("person", 0.95), ("person", 0.85), ("person", 0.75), ("person", 0.2), ("umbrella", 0.7)],
    2: [("person", 0.9)] * 3,
    3: [("person", 0.9), ("person", 0.55), ("car", 0.6)],
    4: [("person", 0.9), ("person", 0.8), ("dog", 0.5)],
    5: [],
    6: [("dog", 0.9)],
}
CLASS_ID = {"person": 0, "car": 2, "dog": 16, "umbrella": 25}
COCO_ID = {"person": 1, "car": 3, "dog": 18, "umbrella": 28}


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)


def block(title: str) -> str:
    """The block whose first line is the comment `-- <title>`."""
    found = [b for b in sql_blocks() if b.splitlines()[0].strip() == f"-- {title}"]
    assert len(found) == 1, f"docs/sql.md has {len(found)} blocks titled {title!r}"
    return found[0]


def _ident(run_id, model, backend, sha, chash):
    return {
        "dataset": DS,
        "run_id": run_id,
        "model": model,
        "backend": backend,
        "weights_sha256": sha,
        "config_hash": chash,
    }


def _done(image_id, expert, chash, status, n, run_id):
    return {
        "dataset": DS,
        "image_id": image_id,
        "expert": expert,
        "config_hash": chash,
        "status": status,
        "n_records": n,
        "seconds": 0.01,
        "run_id": run_id,
    }


def _error(image_id, stage, reason, message, chash):
    return {
        "dataset": DS,
        "split": "val2017",
        "image_id": image_id,
        "file_name": f"{image_id:012d}.jpg",
        "stage": stage,
        "reason": reason,
        "message": message,
        "config_hash": chash,
        "run_id": R1,
    }


def _segment(ident, image_id, segment_id, label):
    thing = label != "unlabeled"
    return {
        **ident,
        "image_id": image_id,
        "segment_id": segment_id,
        "label": label,
        "category_id": COCO_ID.get(label, 0),
        "isthing": thing,
        "area": 1000 * segment_id,
        "bbox_x": 1.0,
        "bbox_y": 2.0,
        "bbox_w": 30.0,
        "bbox_h": 40.0,
        "rle_counts": "0P4a0O2N1O0O1N2N3L",
        "rle_height": 480,
        "rle_width": 640,
        "score": 0.9,
        "predicted_iou": 0.9,
        "stability_score": 0.95,
    }


def _run(run_id, started, images, random_init):
    return {
        "run_id": run_id,
        "dataset": DS,
        "profile": "default",
        "started_at": started,
        "finished_at": started.replace(minute=5),
        "images_listed": 7,
        "images_processed": images,
        "errors": 4 if run_id == R1 else 0,
        "images_per_s": images / 300,
        "counts_json": json.dumps(
            {"rows_detections": sum(len(v) for v in (DET_A if run_id == R1 else DET_B).values())}
        ),
        "config_json": "{}",
        "versions_json": "{}",
        "random_init_experts": random_init,
    }


def build_warehouse(root: Path) -> Warehouse:
    wh = Warehouse(root)
    images = [
        {
            "dataset": DS,
            "split": "val2017",
            "image_id": i,
            "file_name": f"{i:012d}.jpg",
            "width": 640,
            "height": 480,
            "source_mode": "RGB",
            "exif_rotated": False,
            "frames": 1,
            "run_id": R1,
        }
        for i in range(1, 7)
    ]
    detections, done = [], [_done(i, "decode", "decode-v1", "ok", 1, R1) for i in range(1, 7)]
    done.append(_done(7, "decode", "decode-v1", "error", 0, R1))
    for dets, run_id, chash, sha in ((DET_A, R1, "detA", SHA_YOLO_A), (DET_B, R2, "detB", SHA_YOLO_B)):
        ident = _ident(run_id, "yolo11s.pt", "ultralytics", sha, chash)
        for image_id, boxes in dets.items():
            done.append(_done(image_id, "detection", chash, "ok", len(boxes), run_id))
            for k, (label, score) in enumerate(sorted(boxes, key=lambda b: -b[1])):
                detections.append(
                    {
                        **ident,
                        "image_id": image_id,
                        "det_index": k,
                        "label": label,
                        "class_id": CLASS_ID[label],
                        "score": score,
                        "x1": 10.0 * k,
                        "y1": 5.0,
                        "x2": 10.0 * k + 50,
                        "y2": 80.0,
                    }
                )
    seg_a = _ident(R1, "vit_b", "segment-anything", SHA_SAM, "segA")
    seg_b = _ident(R2, "vit_tiny", "segment-anything", "random-init", "segB")
    segments = [_segment(seg_a, i, 1, "person") for i in range(1, 6)] + [_segment(seg_a, 3, 2, "unlabeled")]
    segments += [_segment(seg_b, i, 1, "person") for i in range(1, 4)]
    sgg = _ident(R1, "geometric", "geometric", "", "sggA")
    relations = [
        {
            **sgg,
            "image_id": i,
            "subject_id": s,
            "subject": subj,
            "predicate": p,
            "object_id": o,
            "object": obj,
            "score": 0.8,
        }
        for i, s, subj, p, o, obj in (
            (1, 1, "person (#1)", "holding", 4, "umbrella"),
            (1, 2, "person (#2)", "holding", 4, "umbrella"),
            (1, 3, "person (#3)", "near", 1, "person (#1)"),
            (3, 1, "person (#1)", "next to", 3, "car"),
            (4, 1, "person (#1)", "near", 5, "dog"),
        )
    ]
    ocr_ident = _ident(R1, "ppocr-v4", "rapidocr", "d" * 64, "ocrA")
    ocr = [
        {
            **ocr_ident,
            "image_id": i,
            "line_index": 0,
            "text": t,
            "score": 0.9,
            "polygon": [[1.0, 2.0], [30.0, 2.0], [30.0, 12.0], [1.0, 12.0]],
        }
        for i, t in ((1, "STOP"), (3, "EXIT"), (4, "SALE UMBRELLA"))
    ]
    aux = []
    for i in range(1, 7):
        kept = [f"[0.02, 0.01, 0.09, 0.17] {label}" for label, score in DET_A[i] if score >= 0.5]
        det_text = (
            f"The image includes bounding box coordinates and their objects: {', and '.join(kept)}."
            if kept
            else ""
        )
        ocr_text = {
            1: "The image includes text descriptions: STOP.",
            4: "The image includes text descriptions: SALE UMBRELLA.",
        }.get(i, "")
        aux.append(
            {
                "dataset": DS,
                "image_id": i,
                "run_id": R1,
                "text": f"{det_text} {ocr_text}".strip(),
                "segmentation_text": "",
                "detection_text": det_text,
                "sgg_text": "",
                "ocr_text": ocr_text,
                "verbalizer_hash": "v1",
                "config_hash": "auxA",
                "random_init": False,
            }
        )
    for i in range(1, 4):
        aux.append(
            {
                **aux[i - 1],
                "run_id": R2,
                "text": "The image includes bounding box coordinates and their objects: [0.02, 0.01, 0.09, 0.17] person.",
                "config_hash": "auxB",
                "random_init": True,
            }
        )
    errors = [
        _error(7, "decode", "truncated", "000000000007.jpg: image file is truncated", "decode-v1"),
        _error(5, "ocr", "expert-failed", "RuntimeError: boom", "ocrA"),
        _error(6, "segmentation", "expert-failed", "ValueError: empty mask", "segA"),
        _error(6, "sgg", "upstream-failed", "skipped: segmentation failed", "sggA"),
    ]
    runs = [
        _run(R1, datetime(2026, 1, 1, tzinfo=timezone.utc), 7, ""),
        _run(R2, datetime(2026, 2, 1, tzinfo=timezone.utc), 6, "segmentation"),
    ]
    wh.commit(
        {
            "images": images,
            "detections": [d for d in detections if d["run_id"] == R1],
            "segments": [s for s in segments if s["run_id"] == R1],
            "relations": relations,
            "ocr": ocr,
            "aux_text": [a for a in aux if a["run_id"] == R1],
            "errors": errors,
            "done": [d for d in done if d["run_id"] == R1],
            "runs": runs[:1],
        }
    )
    wh.commit(
        {
            "detections": [d for d in detections if d["run_id"] == R2],
            "segments": [s for s in segments if s["run_id"] == R2],
            "aux_text": [a for a in aux if a["run_id"] == R2],
            "done": [d for d in done if d["run_id"] == R2],
            "runs": runs[1:],
        }
    )
    return wh


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    wh = build_warehouse(tmp_path_factory.mktemp("wh"))
    tmp = tmp_path_factory.mktemp("views")
    connection = read_only_connection(wh, str(tmp))  # exactly what `moai sql` queries
    yield connection
    connection.close()


def rows(con, sql: str) -> list[tuple]:
    return con.sql(sql).fetchall()


def test_docs_have_enough_sql_blocks_each_titled():
    blocks = sql_blocks()
    assert len(blocks) >= 6
    for b in blocks:
        assert b.splitlines()[0].startswith("-- "), f"untitled block:\n{b}"


@pytest.mark.parametrize("sql", sql_blocks(), ids=lambda b: b.splitlines()[0][3:50])
def test_every_sql_block_runs(con, sql):
    rows(con, sql)


def test_people_and_text_uses_the_latest_config(con):
    sql = block("Images with at least 3 people (score >= 0.5, latest detection config) and any OCR text")
    # image 2 has 3 people but no text; image 4 had 4 people only under the older config
    assert rows(con, sql) == [(1, 3)]


def test_most_frequent_relations_strip_the_numbering(con):
    got = rows(con, block("Most frequent (subject, predicate, object) relations, by plain label"))
    assert got == [
        ("person", "holding", "umbrella", 2),
        ("person", "near", "dog", 1),
        ("person", "near", "person", 1),
        ("person", "next to", "car", 1),
    ]


def test_failures_by_stage(con):
    got = rows(con, block("Failures by stage and reason, with one example message"))
    assert [r[:3] for r in got] == [
        ("decode", "truncated", 1),
        ("ocr", "expert-failed", 1),
        ("segmentation", "expert-failed", 1),
        ("sgg", "upstream-failed", 1),
    ]
    assert [r[0] for r in rows(con, block("Every image an expert (not the decoder) failed on"))] == [5, 6, 6]


def test_random_init_images_and_runs(con):
    got = rows(con, block("Images with rows from randomly initialised experts, and which experts"))
    assert got == [(1, ["segmentation"]), (2, ["segmentation"]), (3, ["segmentation"])]
    got = rows(con, block("Runs that used random weights, and the aux_text rows they left"))
    assert got == [(R2, "default", "segmentation", 3)]


def test_compare_two_configs(con):
    got = rows(
        con, block("Per-class detection counts: newest config vs the one before, on images both processed")
    )
    assert got == [("person", 11, 12, -1), ("dog", 2, 3, -1), ("car", 1, 1, 0), ("umbrella", 1, 1, 0)]
    per_run = rows(con, block("Detections per run and config"))
    assert [(r[0], r[1], r[4], r[5]) for r in per_run] == [(R1, "detA", 5, 17), (R2, "detB", 5, 15)]


def test_histogram_bins_float32_scores_by_their_decimal_value(con):
    got = rows(con, block("Score histogram of 'person' detections in 0.1 bins, with a text bar"))
    assert [(b, n) for b, n, _ in got] == [(0.2, 1), (0.5, 1), (0.6, 1), (0.7, 2), (0.8, 3), (0.9, 15)]


def test_per_class_latest_config_and_nothing_found(con):
    got = rows(con, block("Detections per class with mean score (latest detection config, score >= 0.3)"))
    assert [r[:3] for r in got] == [("person", 10, 4), ("dog", 2, 2), ("car", 1, 1), ("umbrella", 1, 1)]
    got = rows(con, block("Images the latest detection config processed successfully but found no object in"))
    assert got == [(5, "000000000005.jpg")]


def test_config_listing_and_word_search(con):
    got = rows(
        con, block("Detection configs in this dataset, most recent first (the first row is the latest)")
    )
    assert [(r[0], r[3], r[4], r[5], r[6]) for r in got] == [("detB", R2, R2, 5, 15), ("detA", R1, R1, 5, 17)]
    got = rows(con, block("Images whose aux text mentions a word (case-insensitive)"))
    assert [r[0] for r in got] == [1, 4]


def test_moai_sql_csv_output(tmp_path):
    wh = build_warehouse(tmp_path / "wh")
    out = io.StringIO()
    run_query(wh, block("Failures by stage and reason, with one example message"), "csv", out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "stage,reason,images,example"
    assert lines[1] == "decode,truncated,1,000000000007.jpg: image file is truncated"


def test_warehouse_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(DOCS.parents[1]))  # benchmarks/ is not an installed package
    from benchmarks.warehouse import QUESTIONS, run

    result = run(2000, tmp_path, json_images=2000, chunk_images=1000, repeats=3)
    saved = json.loads((tmp_path / "warehouse.json").read_text())
    assert saved["images"] == result["images"] == 2000
    for key in (
        "machine",
        "generated",
        "warehouse",
        "coco_json",
        "queries",
        "extrapolated",
        "goals",
        "duckdb",
        "size_ratio_json_over_warehouse",
    ):
        assert key in saved, key
    assert set(saved["queries"]) == {q.name for q in QUESTIONS}
    for name, q in saved["queries"].items():
        assert q["answers_agree_on_subset"], name
        assert q["duckdb_s"] > 0 and q["python_scan_s"] > 0
        assert {"speedup_scan_only", "speedup_incl_load", "rows_returned"} <= set(q)
    assert saved["goals"]["all_answers_agree"]
    assert saved["extrapolated"]["python_times"] is False
    gen = saved["generated"]["per_image"]
    assert 5 < gen["detections"] < 9 and 8 < gen["segments"] < 12 and 6 < gen["relations"] < 10
    assert 0.3 < gen["ocr"] < 0.7 and 0.99 < gen["aux_text"] <= 1.0
    assert saved["warehouse"]["bytes_per_image"] > 0 and saved["coco_json"]["bytes_per_image"] > 0
    # the two 1000-image chunks were compacted into one file per table, and nothing big was left behind
    assert saved["warehouse"]["tables"]["detections"]["files"] == 1
    assert not (tmp_path / "warehouse-data").exists() and not (tmp_path / "coco-subset.json").exists()


def _sentence_items(sentence: str) -> tuple[str, list[str]]:
    """(prefix, sorted items) of one verbalizer sentence."""
    if not sentence:
        return "", []
    prefix, _, items = sentence.rstrip(".").partition(": ")
    return prefix, sorted(items.split(", and "))


def test_benchmark_aux_text_is_what_the_verbalizer_writes(monkeypatch):
    """The synthetic aux text has the real verbalizer's sentences (items may come in another order)."""
    monkeypatch.syspath_prepend(str(DOCS.parents[1]))
    from benchmarks.warehouse import generate_chunk
    from verbalize.moai import verbalize
    from warehouse.rows import records_from_table_row

    tables = generate_chunk(1, 300, 0)
    by_image: dict[tuple[str, int], list[dict]] = {}
    for name, table in (
        ("detection", "detections"),
        ("segmentation", "segments"),
        ("sgg", "relations"),
        ("ocr", "ocr"),
    ):
        for row in tables[table].to_pylist():
            by_image.setdefault((name, row["image_id"]), []).append(records_from_table_row(name, row))
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in tables["images"].to_pylist()}
    checked = 0
    for aux in tables["aux_text"].to_pylist()[:100]:
        i = aux["image_id"]
        names = ("segmentation", "detection", "sgg", "ocr")
        real = verbalize({n: by_image.get((n, i), []) for n in names}, *sizes[i])
        for name in names:
            ours, theirs = aux[f"{name}_text"], getattr(real, name)
            assert _sentence_items(ours) == _sentence_items(theirs), (i, name, ours, theirs)
        assert len(aux["text"]) == len(real.text)
        checked += 1
    assert checked > 90


# ------------------------------------------------------------------------------ reading without the project
def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)


def python_block(title: str) -> str:
    found = [b for b in python_blocks() if b.splitlines()[0].startswith(f"# {title}")]
    assert len(found) == 1, f"docs/sql.md has {len(found)} python blocks titled {title!r}"
    return found[0]


def _strip_dataset_columns(root: Path) -> None:
    """The files as older versions wrote them: `dataset` only in the folder name."""
    import pyarrow.parquet as pq

    for rels in json.loads((root / "_manifest.json").read_text())["tables"].values():
        for rel in rels:
            table = pq.read_table(root / rel, partitioning=None)
            pq.write_table(table.drop_columns(["dataset"]), root / rel)


def _run_snippet(title: str, root: Path) -> dict:
    """Run a docs snippet as a reader would, on `root` instead of outputs/warehouse; its variables."""
    code = python_block(title)
    assert (
        'Path("outputs/warehouse")' in code
        and "import warehouse" not in code
        and "from warehouse" not in code
    )
    scope: dict = {}
    exec(compile(code.replace('Path("outputs/warehouse")', f"Path({str(root)!r})"), title, "exec"), scope)
    return scope


@pytest.fixture(scope="module", params=["current", "old"])
def odd_named(request, tmp_path_factory):
    """The docs warehouse with its rows moved to dataset '2017' (a name readers type as a number), as
    written now and as older versions wrote it (no `dataset` column in the files)."""
    wh = build_warehouse(tmp_path_factory.mktemp("docs-wh"))
    copy = Warehouse(tmp_path_factory.mktemp(f"odd-{request.param}"))
    for table in ("images", "detections", "done"):
        rows = wh.query(f"SELECT * EXCLUDE (dataset), '2017' AS dataset FROM {table}")
        copy.commit({table: rows.select(TABLES[table].names)})
    if request.param == "old":
        _strip_dataset_columns(copy.root)
    return copy


def _expected_detections(wh: Warehouse) -> list[tuple]:
    rows = wh.query("SELECT dataset, label, count(*) AS n FROM detections GROUP BY ALL ORDER BY ALL")
    return [tuple(r.values()) for r in rows.to_pylist()]


def test_docs_read_the_manifest_with_pyarrow(odd_named):
    scope = _run_snippet("pyarrow", odd_named.root)
    table, frame = scope["detections"], scope["frame"]
    assert str(table.schema.field("dataset").type) == "string"
    pairs = zip(table.column("dataset").to_pylist(), table.column("label").to_pylist(), strict=True)
    got = sorted(Counter(pairs).items())
    assert [(d, label, n) for (d, label), n in got] == _expected_detections(odd_named)
    assert frame["dataset"].tolist() == table.column("dataset").to_pylist()


def test_docs_read_the_manifest_with_duckdb(odd_named):
    scope = _run_snippet("DuckDB", odd_named.root)
    assert sorted(scope["per_class"]) == _expected_detections(odd_named)
    con = scope["con"]
    assert con.sql("SELECT DISTINCT typeof(dataset) FROM images").fetchall() == [("VARCHAR",)]
    assert (
        con.sql("SELECT count(*) FROM done WHERE dataset = '2017'").fetchall()[0][0]
        == (odd_named.query("SELECT count(*) AS n FROM done").to_pylist()[0]["n"])
    )


def test_docs_read_the_manifest_with_polars(odd_named):
    import polars as pl

    frame = _run_snippet("polars", odd_named.root)["detections"]
    assert frame.schema["dataset"] == pl.String
    got = frame.group_by("dataset", "label").len().sort("dataset", "label").rows()
    assert got == _expected_detections(odd_named)


def test_docs_read_the_manifest_with_hugging_face_datasets(odd_named, monkeypatch, tmp_path):
    import shutil

    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    datasets.disable_progress_bars()
    shutil.copytree(odd_named.root, tmp_path / "wh")
    Warehouse(tmp_path / "wh").compact(min_files=1)  # what the snippet tells an older warehouse to do
    ds = _run_snippet("Hugging Face datasets", tmp_path / "wh")["detections"]
    got = sorted(Counter(zip(ds["dataset"], ds["label"], strict=True)).items())
    assert [(d, label, n) for (d, label), n in got] == _expected_detections(odd_named)
