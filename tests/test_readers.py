"""Independent readers agree with the project on the warehouse and the COCO export.

A small warehouse is annotated end to end under dataset names that readers like to type as something
else (`2017` an integer, `2024-05-01` a date, `inf` an infinite date or float), then read back
without the project's code, from `_manifest.json`'s file list:

    warehouse files   pyarrow, polars, DuckDB, pandas, Hugging Face `datasets` (parquet)
    COCO export       pycocotools, faster-coco-eval, torchmetrics (MeanAveragePrecision), supervision
    panoptic export   a minimal PQ (panopticapi's algorithm, below); panopticapi itself when reachable
    heavy readers     FiftyOne, datumaro, panopticapi: they cannot live in the project's environment
                      (FiftyOne and datumaro need opencv-python-headless<5, panopticapi's only PyPI
                      package, panopticapi-lite, needs numpy<2), so they run in another interpreter
                      named by $MOAI_READERS_PYTHON (paths separated by ':'); skipped without one

Each reader must agree on the counts (per table and dataset, images, annotations, detections,
segments, evaluation numbers) and keep `dataset` a string.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from warehouse.schema import TABLES
from warehouse.store import Warehouse

FAST = str(REPO / "tests" / "profiles" / "fast.yaml")
# dataset name -> the sample photos it holds; every name is one a reader would type if it could
NAMES = {"2017": ("astronaut", "coffee"), "2024-05-01": ("bus",), "inf": ("coffee", "motorcycle_left")}


class Odd:
    """The annotated warehouse, its COCO exports and the image folders."""

    def __init__(self, root: Path, tmp: Path):
        self.root = root
        self.wh = Warehouse(root)
        self.tmp = tmp
        self.image_dirs: dict[str, Path] = {}
        self.exports: dict[tuple[str, str], Path] = {}  # (dataset, unlabeled) -> folder
        self.counts: dict[tuple[str, str], dict] = {}  # (dataset, unlabeled) -> export_coco's counts

    def files(self) -> dict[str, list[str]]:
        """table -> the committed files, read from the manifest as any outside reader would."""
        manifest = json.loads((self.root / "_manifest.json").read_text(encoding="utf-8"))
        return {t: [str(self.root / r) for r in rels] for t, rels in manifest["tables"].items() if rels}

    def project_counts(self, table: str) -> dict[str, int]:
        rows = self.wh.query(f"SELECT dataset, count(*) AS n FROM {table} GROUP BY 1").to_pylist()
        return {r["dataset"]: r["n"] for r in rows}


def annotate_odd_names(tmp: Path, sample_image) -> Odd:
    from corpora.resolve import resolve_corpus
    from pipeline.annotate import run_annotation
    from pipeline.profiles import JobSpec, load_profile
    from warehouse.export import export_coco

    odd = Odd(tmp / "wh", tmp)
    profile = load_profile(FAST)
    profile.experts.pop("ocr", None)
    # a 2x2 point grid with every filter open: the random-init SAM leaves unlabeled regions (stuff)
    profile.experts["segmentation"].update(
        points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, stuff_max_covered=1.0
    )
    for name, stems in NAMES.items():
        folder = tmp / f"photos-{name}"
        folder.mkdir()
        for stem in stems:
            shutil.copy(sample_image(stem), folder / f"{stem}.jpg")
        corpus = resolve_corpus(name, images=folder, root=tmp / "data")
        odd.image_dirs[name] = corpus.image_dir("default")
        job = JobSpec(dataset=name, profile="fast", allow_random_weights=True, batch_size=2, commit_every=16)
        assert run_annotation(corpus, profile, job, odd.wh, executor="local") == 0
        for unlabeled in ("void", "stuff"):
            out = tmp / f"export-{unlabeled}" / name
            odd.counts[name, unlabeled] = export_coco(odd.wh, name, out, unlabeled=unlabeled)
            odd.exports[name, unlabeled] = out
    return odd


@pytest.fixture(scope="module")
def odd(tmp_path_factory, sample_image) -> Odd:
    return annotate_odd_names(tmp_path_factory.mktemp("odd"), sample_image)


# ------------------------------------------------------------------------------ the dataset column
def test_every_committed_file_has_a_string_dataset_column_matching_its_folder(odd):
    tables = odd.files()
    assert {"images", "detections", "segments", "done", "aux_text", "runs"} <= set(tables)
    for files in tables.values():
        for f in files:
            table = pq.read_table(f, partitioning=None)
            assert table.schema.field("dataset").type == pa.string(), f
            folder = Path(f).parent.name.removeprefix("dataset=")
            assert set(table.column("dataset").to_pylist()) == {folder}, f
    # and the project's own views read it as a string too
    assert odd.project_counts("images") == {name: len(stems) for name, stems in NAMES.items()}
    types = odd.wh.query("SELECT DISTINCT typeof(dataset) AS t FROM segments").to_pylist()
    assert types == [{"t": "VARCHAR"}]


def test_commands_work_on_number_and_date_like_names(odd, tmp_path):
    """export (done by the fixture), `moai verbalize` and `moai sql` on `2017`, `2024-05-01` and `inf`.
    A reader that types the folder name makes `inf` an infinite DATE, which Python cannot hold
    (OverflowError: days=2147483647): export and verbalize used to break that way."""
    from pipeline.reverbalize import reverbalize
    from warehouse.sql import run_query

    shutil.copytree(odd.root, tmp_path / "wh")
    wh = Warehouse(tmp_path / "wh")
    for name, stems in NAMES.items():
        assert odd.counts[name, "void"]["images"] == len(stems)
        reverbalize(wh, name, {"detection_threshold": 0.0})
    aux = wh.query("SELECT dataset, count(DISTINCT config_hash) AS n FROM aux_text GROUP BY 1").to_pylist()
    assert {r["dataset"]: r["n"] for r in aux} == dict.fromkeys(NAMES, 2)
    out = io.StringIO()
    run_query(wh, "SELECT dataset, count(*) AS n FROM images GROUP BY 1 ORDER BY 1", "csv", out)
    assert out.getvalue().splitlines() == ["dataset,n", "2017,2", "2024-05-01,1", "inf,2"]


def _strip_dataset_columns(root: Path) -> None:
    """Rewrite every committed file as warehouses wrote them before the files carried `dataset`."""
    for rels in json.loads((root / "_manifest.json").read_text())["tables"].values():
        for rel in rels:
            table = pq.read_table(root / rel, partitioning=None)
            pq.write_table(table.drop_columns(["dataset"]), root / rel, compression="zstd")


def test_old_warehouses_without_the_column_stay_readable_and_compaction_adds_it(odd, tmp_path):
    from warehouse.check import check

    shutil.copytree(odd.root, tmp_path / "wh")
    wh = Warehouse(tmp_path / "wh")
    before = {t: wh.query(f"SELECT * FROM {t} ORDER BY ALL").to_pylist() for t in odd.files()}
    _strip_dataset_columns(wh.root)
    for table, rows in before.items():
        assert wh.query(f"SELECT * FROM {table} ORDER BY ALL").to_pylist() == rows, table
        assert wh.query(f"SELECT * FROM {table} LIMIT 0").column_names == list(rows[0]), table
    assert check(wh).ok
    assert wh.compact(min_files=1) > 0  # rewrites every partition, now with the column
    for table, rows in before.items():
        assert wh.query(f"SELECT * FROM {table} ORDER BY ALL").to_pylist() == rows, table
        for f in wh.files(table):
            assert pq.read_schema(f).field("dataset").type == pa.string()
    assert check(wh).ok


def test_mixed_old_and_new_files_keep_the_schema_column_order(odd, tmp_path):
    shutil.copytree(odd.root, tmp_path / "wh")
    wh = Warehouse(tmp_path / "wh")
    old = wh.files("done")[0]
    pq.write_table(pq.read_table(old, partitioning=None).drop_columns(["dataset"]), old)
    assert wh.query("SELECT * FROM done LIMIT 0").column_names == TABLES["done"].names
    assert wh.query("SELECT * FROM runs LIMIT 0").column_names == TABLES["runs"].names


def test_repair_rewrites_keep_the_column_and_mend_a_mislabeled_file(odd, tmp_path):
    from warehouse.check import check, repair

    shutil.copytree(odd.root, tmp_path / "wh")
    wh = Warehouse(tmp_path / "wh")
    counts = odd.project_counts("detections")
    # a hand-copied file whose column names another dataset than its folder
    victim = next(f for f in wh.files("detections") if "/dataset=inf/" in f.as_posix())
    table = pq.read_table(victim, partitioning=None)
    pq.write_table(table.set_column(0, "dataset", pa.array(["2017"] * table.num_rows)), victim)
    report = check(wh)
    assert not report.ok and list(report.mislabeled) == [victim.relative_to(wh.root).as_posix()]
    assert any("disagrees with the folder" in line for line in report.lines())
    # and lost rows: a segments file of `2017` deleted, so repair also rewrites the ledger and segments
    (next(f for f in wh.files("segments") if "/dataset=2017/" in f.as_posix())).unlink()
    repair(wh)
    assert check(wh).ok
    inf = wh.query("SELECT count(*) AS n FROM detections WHERE dataset = 'inf'").to_pylist()[0]["n"]
    assert inf == counts["inf"]  # the mislabeled rows are back under their folder's name
    for table in odd.files():
        for f in wh.files(table):
            schema = pq.read_schema(f)
            assert schema.field("dataset").type == pa.string(), f
            values = pq.read_table(f, columns=["dataset"], partitioning=None).column("dataset")
            assert set(values.to_pylist()) == {f.parent.name.removeprefix("dataset=")}, f


# ------------------------------------------------------------------------------ warehouse readers
def _pyarrow(files):
    table = pq.read_table(files, partitioning=None)  # the files carry `dataset`: no folder parsing
    return table.schema.field("dataset").type == pa.string(), table.column("dataset").to_pylist()


def _polars(files):
    import polars as pl

    frame = pl.read_parquet(files, hive_partitioning=False)
    return frame.schema["dataset"] == pl.String, frame["dataset"].to_list()


def _duckdb(files):
    import duckdb

    con = duckdb.connect()  # a plain DuckDB, none of the project's settings
    rel = con.sql(f"SELECT dataset FROM read_parquet({files!r}, union_by_name = true)")
    return rel.types == ["VARCHAR"], [r[0] for r in rel.fetchall()]


def _duckdb_hive(files):
    import duckdb

    con = duckdb.connect()  # hive partitioning on, no hive_types: the files' string column decides
    rel = con.sql(
        f"SELECT dataset FROM read_parquet({files!r}, hive_partitioning = true, union_by_name = true)"
    )
    return rel.types == ["VARCHAR"], [r[0] for r in rel.fetchall()]


def _pandas(files):
    import pandas as pd

    frame = pd.read_parquet(files, partitioning=None)
    return pd.api.types.is_string_dtype(frame["dataset"]), frame["dataset"].tolist()


def _hf_datasets(files, cache_dir):
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache_dir))
    return ds.features["dataset"] == datasets.Value("string"), list(ds["dataset"])


WAREHOUSE_READERS = {
    "pyarrow": _pyarrow,
    "polars": _polars,
    "duckdb": _duckdb,
    "duckdb-hive": _duckdb_hive,
    "pandas": _pandas,
    "hf-datasets": _hf_datasets,
}


@pytest.mark.parametrize("reader", list(WAREHOUSE_READERS))
def test_warehouse_readers_agree_on_every_table(odd, reader, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # local files only: never ask the Hub
    read = WAREHOUSE_READERS[reader]
    for table, files in odd.files().items():
        string, values = read(files, tmp_path / table) if reader == "hf-datasets" else read(files)
        assert string, f"{reader} does not read {table}.dataset as a string"
        assert dict(Counter(values)) == odd.project_counts(table), (reader, table)


def test_hf_datasets_loses_the_name_of_old_files_but_not_of_new_ones(odd, tmp_path, monkeypatch):
    """Why the column is in the files: a reader that ignores hive folders (Hugging Face `datasets` on a
    file list) has no other way to know the dataset; old files are fixed by compaction."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    shutil.copytree(odd.root, tmp_path / "wh")
    wh = Warehouse(tmp_path / "wh")
    _strip_dataset_columns(wh.root)
    files = [str(f) for f in wh.files("images")]
    old = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "c1"))
    assert "dataset" not in old.features
    wh.compact(["images"], min_files=1)
    files = [str(f) for f in wh.files("images")]
    new = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "c2"))
    assert dict(Counter(new["dataset"])) == odd.project_counts("images")


# ------------------------------------------------------------------------------ COCO readers
def _expected_coco(odd, name):
    """What the warehouse says the export must hold (one config per expert here, so all rows count)."""
    q = odd.wh.query
    return {
        "images": q("SELECT count(*) AS n FROM images WHERE dataset = ?", [name]).to_pylist()[0]["n"],
        "instances": q(
            "SELECT count(*) AS n FROM segments WHERE dataset = ? AND isthing AND category_id > 0", [name]
        ).to_pylist()[0]["n"],
        "detections": q("SELECT count(*) AS n FROM detections WHERE dataset = ?", [name]).to_pylist()[0]["n"],
        "unlabeled_images": q(
            "SELECT count(DISTINCT image_id) AS n FROM segments WHERE dataset = ? AND category_id = 0", [name]
        ).to_pylist()[0]["n"],
    }


def _pycocotools_stats(gt_path, dt_path, iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(dt_path))
        evaluation = COCOeval(gt, dt, iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return np.array(evaluation.stats)


@pytest.mark.parametrize("name", list(NAMES))
def test_pycocotools_loads_the_export_and_agrees_on_counts(odd, name):
    from pycocotools.coco import COCO

    out, expected = odd.exports[name, "void"], _expected_coco(odd, name)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        gt = COCO(str(out / "instances.json"))
        gt.info()  # KeyError before instances.json had `info`
    assert "moai-forge" in printed.getvalue()
    assert isinstance(gt.dataset["licenses"], list)
    assert len(gt.getImgIds()) == expected["images"]
    anns = gt.loadAnns(gt.getAnnIds())
    assert len(anns) == expected["instances"] > 0
    assert all("score" not in a for a in anns)  # ground truth carries no score
    for ann in anns:
        assert gt.annToMask(ann).sum() == ann["area"]
    with contextlib.redirect_stdout(io.StringIO()):
        detections = gt.loadRes(str(out / "detections.json"))
        segments = gt.loadRes(str(out / "segmentations.json"))
    assert len(detections.getAnnIds()) == expected["detections"]
    assert len(segments.getAnnIds()) == expected["instances"]
    assert all(0.0 <= a["score"] <= 1.0 for a in segments.loadAnns(segments.getAnnIds()))
    # the segments scored against themselves: a perfect mask AP
    assert _pycocotools_stats(out / "instances.json", out / "segmentations.json", "segm")[0] == pytest.approx(
        1.0
    )


@pytest.mark.parametrize("iou_type,results", [("bbox", "detections.json"), ("segm", "segmentations.json")])
def test_faster_coco_eval_agrees_with_pycocotools(odd, iou_type, results):
    from faster_coco_eval import COCO, COCOeval_faster

    for name in NAMES:
        out = odd.exports[name, "void"]
        expected = _pycocotools_stats(out / "instances.json", out / results, iou_type)
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(out / "instances.json"))
            gt.info()
            dt = gt.loadRes(str(out / results))
            evaluation = COCOeval_faster(gt, dt, iou_type, print_function=lambda *a: None)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        assert len(gt.getAnnIds()) == _expected_coco(odd, name)["instances"]
        assert np.allclose(np.array(evaluation.stats[:12]), expected, atol=1e-6), (name, iou_type)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_torchmetrics_map_from_the_coco_files_agrees_with_pycocotools(odd, backend):
    from torchmetrics.detection import MeanAveragePrecision

    for name in NAMES:
        out = odd.exports[name, "void"]
        expected = _pycocotools_stats(out / "instances.json", out / "detections.json", "bbox")
        metric = MeanAveragePrecision(box_format="xywh", iou_type="bbox", backend=backend)
        with contextlib.redirect_stdout(io.StringIO()):
            preds, target = metric.coco_to_tm(
                str(out / "detections.json"), str(out / "instances.json"), iou_type="bbox", backend=backend
            )
        assert len(target) == _expected_coco(odd, name)["images"]
        assert sum(len(t["labels"]) for t in target) == _expected_coco(odd, name)["instances"]
        assert sum(len(p["labels"]) for p in preds) == _expected_coco(odd, name)["detections"]
        metric.update(preds, target)
        result = metric.compute()
        assert float(result["map"]) == pytest.approx(max(expected[0], -1.0), abs=1e-6), name
        assert float(result["map_50"]) == pytest.approx(expected[1], abs=1e-6), name


def test_supervision_loads_the_export(odd):
    import supervision as sv

    for name in NAMES:
        out = odd.exports[name, "void"]
        ds = sv.DetectionDataset.from_coco(
            images_directory_path=str(odd.image_dirs[name]),
            annotations_path=str(out / "instances.json"),
            force_masks=True,
        )
        expected = _expected_coco(odd, name)
        assert len(ds) == expected["images"]
        found = [detections for _, _, detections in ds]
        assert sum(len(d) for d in found) == expected["instances"]
        assert all(d.mask is not None for d in found if len(d))


# ------------------------------------------------------------------------------ panoptic
def minimal_pq(gt_json: Path, pred_json: Path, gt_dir: Path, pred_dir: Path) -> dict:
    """Panoptic quality as panopticapi's `pq_compute` defines it (IoU > 0.5 matching, void pixels and
    crowd ignored, averages over categories with any segment), in a few lines: {All, Things, Stuff}
    each {pq, sq, rq, n}, where an average over no category is None (panopticapi divides by zero)."""
    from PIL import Image

    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    stat = {c: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0} for c in categories}

    def ids(path):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint64)
        return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]

    predictions = {a["image_id"]: a for a in pred["annotations"]}
    for g in gt["annotations"]:
        p = predictions[g["image_id"]]
        gmap, pmap = ids(gt_dir / g["file_name"]), ids(pred_dir / p["file_name"])
        gsegs = {s["id"]: s for s in g["segments_info"]}
        psegs = {s["id"]: dict(s) for s in p["segments_info"]}
        for label, n in zip(*np.unique(pmap, return_counts=True), strict=True):
            if label:
                psegs[int(label)]["area"] = int(n)
        joint, counts = np.unique(gmap * 2**24 + pmap, return_counts=True)
        inter = {(int(j) >> 24, int(j) & (2**24 - 1)): int(n) for j, n in zip(joint, counts, strict=True)}
        gm, pm = set(), set()
        for (gl, pl), n in inter.items():
            if gl not in gsegs or pl not in psegs or gsegs[gl]["iscrowd"]:
                continue
            if gsegs[gl]["category_id"] != psegs[pl]["category_id"]:
                continue
            union = psegs[pl]["area"] + gsegs[gl]["area"] - n - inter.get((0, pl), 0)
            if n / union > 0.5:
                stat[gsegs[gl]["category_id"]]["tp"] += 1
                stat[gsegs[gl]["category_id"]]["iou"] += n / union
                gm.add(gl)
                pm.add(pl)
        for gl, s in gsegs.items():
            if gl not in gm and not s["iscrowd"]:
                stat[s["category_id"]]["fn"] += 1
        for pl, s in psegs.items():
            if pl not in pm and inter.get((0, pl), 0) / s["area"] <= 0.5:
                stat[s["category_id"]]["fp"] += 1
    results = {}
    for group, isthing in (("All", None), ("Things", 1), ("Stuff", 0)):
        rows = [
            (s["iou"], s["tp"], s["fp"], s["fn"])
            for c, s in stat.items()
            if (isthing is None or categories[c]["isthing"] == isthing) and s["tp"] + s["fp"] + s["fn"]
        ]
        if not rows:
            results[group] = None
            continue
        pq_ = [iou / (tp + 0.5 * fp + 0.5 * fn) for iou, tp, fp, fn in rows]
        sq_ = [iou / tp if tp else 0.0 for iou, tp, _, _ in rows]
        rq_ = [tp / (tp + 0.5 * fp + 0.5 * fn) for _, tp, fp, fn in rows]
        results[group] = {"pq": np.mean(pq_), "sq": np.mean(sq_), "rq": np.mean(rq_), "n": len(rows)}
    return results


def _degraded_prediction(src: Path, dst: Path) -> Path:
    """A copy of a panoptic export with the first thing segment of every image voided: PQ below 1."""
    from PIL import Image

    shutil.copytree(src, dst)
    doc = json.loads((dst / "panoptic.json").read_text())
    things = {c["id"] for c in doc["categories"] if c["isthing"]}
    for ann in doc["annotations"]:
        first = next((s for s in ann["segments_info"] if s["category_id"] in things), None)
        if first is None:
            continue
        ann["segments_info"].remove(first)
        rgb = np.asarray(Image.open(dst / "panoptic" / ann["file_name"]).convert("RGB")).copy()
        wide = rgb.astype(np.int64)
        ids = wide[..., 0] + 256 * wide[..., 1] + 65536 * wide[..., 2]
        rgb[ids == first["id"]] = 0
        Image.fromarray(rgb).save(dst / "panoptic" / ann["file_name"])
    (dst / "panoptic.json").write_text(json.dumps(doc))
    return dst


def test_panoptic_stuff_option_gives_pq_a_stuff_row_and_void_has_none(odd, tmp_path):
    for name in NAMES:
        expected = _expected_coco(odd, name)
        void, stuff = odd.exports[name, "void"], odd.exports[name, "stuff"]
        assert odd.counts[name, "stuff"]["panoptic_stuff_segments"] == expected["unlabeled_images"]
        # default: unlabeled regions are void, only things are categories, so PQ has no stuff row
        doc = json.loads((void / "panoptic.json").read_text())
        assert {c["isthing"] for c in doc["categories"]} == {1} and "info" in doc and "licenses" in doc
        same = minimal_pq(
            void / "panoptic.json", void / "panoptic.json", void / "panoptic", void / "panoptic"
        )
        assert same["Stuff"] is None and same["Things"]["pq"] == pytest.approx(1.0)
        # --unlabeled stuff: one `unlabeled` stuff segment per image that has unlabeled regions
        same = minimal_pq(
            stuff / "panoptic.json", stuff / "panoptic.json", stuff / "panoptic", stuff / "panoptic"
        )
        assert same["Stuff"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1} and same["All"]["pq"] == 1.0
        worse = _degraded_prediction(stuff, tmp_path / f"worse-{name}")
        got = minimal_pq(
            stuff / "panoptic.json", worse / "panoptic.json", stuff / "panoptic", worse / "panoptic"
        )
        assert got["Things"]["pq"] < 1.0 and got["Stuff"]["pq"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ heavy readers (other interpreter)
def _reader_python(module: str) -> str:
    """The first interpreter of $MOAI_READERS_PYTHON that imports `module`, or skip saying why."""
    candidates = [p for p in os.environ.get("MOAI_READERS_PYTHON", "").split(os.pathsep) if p]
    for python in candidates:
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=300)
        if probe.returncode == 0:
            return python
    why = {
        "fiftyone": "FiftyOne needs opencv-python-headless<5 (the project pins 5.0.0.93) and brings "
        "~1 GB with its own MongoDB",
        "datumaro": "datumaro needs opencv-python-headless<5 (the project pins 5.0.0.93)",
        "panopticapi": "panopticapi is not on PyPI; its repackaging panopticapi-lite needs numpy<2 "
        "(the project pins numpy 2)",
    }[module]
    pytest.skip(
        f"{module} cannot be installed beside the project ({why}). To run this reader, make a venv "
        f"with it (docs/sql.md, 'Readers the export and the warehouse are tested with') and set MOAI_READERS_PYTHON to its "
        f"python; tried: {candidates or 'none'}"
    )


def _run_reader(python: str, script: str, *args, **env) -> dict:
    env = {**os.environ, "PYTHONPATH": "", "PYTHONNOUSERSITE": "1", **env}
    done = subprocess.run(
        [python, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


PANOPTICAPI = """
import contextlib, io, json, sys
from panopticapi.evaluation import pq_compute
d, p = sys.argv[1], sys.argv[2]
out = {}
try:
    with contextlib.redirect_stdout(io.StringIO()):
        r = pq_compute(d + "/panoptic.json", p + "/panoptic.json", d + "/panoptic", p + "/panoptic")
    out = {k: {m: float(v[m]) for m in ("pq", "sq", "rq", "n")} for k, v in r.items() if k != "per_class"}
except ZeroDivisionError as err:
    out = {"error": "ZeroDivisionError"}
print(json.dumps(out))
"""


def test_panopticapi_agrees_with_the_minimal_pq(odd, tmp_path):
    python = _reader_python("panopticapi")
    for name in NAMES:
        stuff, void = odd.exports[name, "stuff"], odd.exports[name, "void"]
        worse = _degraded_prediction(stuff, tmp_path / f"worse-{name}")
        theirs = _run_reader(python, PANOPTICAPI, stuff, worse)
        ours = minimal_pq(
            stuff / "panoptic.json", worse / "panoptic.json", stuff / "panoptic", worse / "panoptic"
        )
        for group in ("All", "Things", "Stuff"):
            for m in ("pq", "sq", "rq", "n"):
                assert theirs[group][m] == pytest.approx(ours[group][m], abs=1e-9), (name, group, m)
        # the default export: panopticapi divides by zero on its Stuff row (docs/sql.md says so)
        assert _run_reader(python, PANOPTICAPI, void, void) == {"error": "ZeroDivisionError"}


FIFTYONE = """
import json, sys
import fiftyone as fo
ds = fo.Dataset.from_dir(
    dataset_type=fo.types.COCODetectionDataset, data_path=sys.argv[1], labels_path=sys.argv[2],
    label_types=["segmentations"], include_id=True,
)
got = {
    "images": len(ds),
    "instances": sum(len(s.segmentations.detections) if s.segmentations else 0 for s in ds),
    "masks": sum(d.mask is not None for s in ds if s.segmentations for d in s.segmentations.detections),
}
ds.delete()
print(json.dumps(got))
"""


def test_fiftyone_loads_the_export(odd, tmp_path):
    python = _reader_python("fiftyone")
    # its own MongoDB, started and stopped by FiftyOne, keeps its files here; no usage reporting
    env = {"FIFTYONE_DATABASE_DIR": str(tmp_path / "fiftyone-db"), "FIFTYONE_DO_NOT_TRACK": "true"}
    for name in NAMES:
        out = odd.exports[name, "void"]
        got = _run_reader(python, FIFTYONE, odd.image_dirs[name], out / "instances.json", **env)
        expected = _expected_coco(odd, name)
        assert got == {
            "images": expected["images"],
            "instances": expected["instances"],
            "masks": expected["instances"],
        }, name


DATUMARO = """
import json, sys
import datumaro as dm
ds = dm.Dataset.import_from(sys.argv[1], "coco_instances")
items = list(ds)
masks = sum(1 for item in items for a in item.annotations if a.type == dm.AnnotationType.mask)
polys = sum(1 for item in items for a in item.annotations if a.type == dm.AnnotationType.polygon)
print(json.dumps({"images": len(items), "instances": masks + polys}))
"""


def test_datumaro_loads_the_export(odd, tmp_path):
    python = _reader_python("datumaro")
    for name in NAMES:
        out = odd.exports[name, "void"]
        # datumaro's COCO importer wants the official layout: annotations/instances_<subset>.json
        layout = tmp_path / name
        (layout / "annotations").mkdir(parents=True)
        shutil.copy(out / "instances.json", layout / "annotations" / "instances_default.json")
        shutil.copytree(odd.image_dirs[name], layout / "images" / "default")
        got = _run_reader(python, DATUMARO, layout)
        expected = _expected_coco(odd, name)
        assert (got["images"], got["instances"]) == (expected["images"], expected["instances"]), name
