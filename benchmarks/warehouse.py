"""Warehouse benchmark: analyst queries in DuckDB over the Parquet warehouse vs a Python scan of COCO JSON.

    python -m benchmarks.warehouse [--images 1000000] [--out outputs/bench] [--json-images 100000] [--keep]

1. Generates a synthetic annotation set for N images with COCO-like statistics (≈7 detections per
   image over the 80 COCO labels with COCO's skewed label frequencies, ≈10 SAM segments with
   compressed-RLE-like strings of 100–300 characters, ≈8 scene-graph relations, ≈0.5 OCR lines,
   one MoAI-style aux_text row, a few errors, the `done` ledger and one `runs` row per chunk).
   Columns are built with numpy/pyarrow, never a Python loop per row.
2. Writes it through `Warehouse.commit` in chunks of 100k images (one commit = one run), then
   `Warehouse.compact()`.
3. Times typical analyst questions in DuckDB over the warehouse views (default threads, one
   warm-up, median of ≥3 runs).
4. Writes the first `--json-images` images (default 100k) as one COCO-results-like JSON document,
   times `json.load` and a Python scan answering the same questions, checks that the answers equal
   DuckDB's on that subset, and scales the Python times linearly to N (marked as extrapolated).

Results: <out>/warehouse.json. The warehouse and the JSON are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpora.coco_categories import COCO_CATEGORIES
from verbalize.moai import VerbalizeConfig
from warehouse.schema import TABLES
from warehouse.store import Warehouse

DATASET = "bench"
CHUNK_IMAGES = 100_000
JSON_IMAGES = 100_000
REPEATS = 5
SEARCH_WORD = "umbrella"
HIST_LABEL = "dog"
PERSON_SCORE = 0.5
# the verbalizer's defaults (MoAI's): detections are stored from 0.1 up, verbalized from 0.5
VERBALIZE = VerbalizeConfig().to_dict()
OBJECTS_PREFIX = "The image includes bounding box coordinates and their objects: "
RELATIONS_PREFIX = "The image includes relationships between objects: "
TEXT_PREFIX = "The image includes text descriptions: "

# Approximate COCO train2017 instance counts per category: only the skew matters here.
COCO_COUNTS = {
    "person": 262465,
    "bicycle": 7113,
    "car": 43867,
    "motorcycle": 8725,
    "airplane": 5135,
    "bus": 6069,
    "train": 4571,
    "truck": 9973,
    "boat": 10759,
    "traffic light": 12884,
    "fire hydrant": 1865,
    "stop sign": 1983,
    "parking meter": 1285,
    "bench": 9838,
    "bird": 10806,
    "cat": 4768,
    "dog": 5508,
    "horse": 6587,
    "sheep": 9509,
    "cow": 8147,
    "elephant": 5513,
    "bear": 1294,
    "zebra": 5303,
    "giraffe": 5131,
    "backpack": 8720,
    "umbrella": 11431,
    "handbag": 12354,
    "tie": 6496,
    "suitcase": 6192,
    "frisbee": 2682,
    "skis": 6646,
    "snowboard": 2685,
    "sports ball": 6347,
    "kite": 9076,
    "baseball bat": 3276,
    "baseball glove": 3747,
    "skateboard": 5543,
    "surfboard": 6126,
    "tennis racket": 4812,
    "bottle": 24342,
    "wine glass": 7913,
    "cup": 20650,
    "fork": 5479,
    "knife": 7770,
    "spoon": 6165,
    "bowl": 14358,
    "banana": 9458,
    "apple": 5851,
    "sandwich": 4373,
    "orange": 6399,
    "broccoli": 7308,
    "carrot": 7852,
    "hot dog": 2918,
    "pizza": 5821,
    "donut": 7179,
    "cake": 6353,
    "chair": 38491,
    "couch": 5779,
    "potted plant": 8652,
    "bed": 4192,
    "dining table": 15714,
    "toilet": 4157,
    "tv": 5805,
    "laptop": 4970,
    "mouse": 2262,
    "remote": 5703,
    "keyboard": 2855,
    "cell phone": 6434,
    "microwave": 1673,
    "oven": 3334,
    "toaster": 225,
    "sink": 5610,
    "refrigerator": 2637,
    "book": 24715,
    "clock": 6334,
    "vase": 6613,
    "scissors": 1481,
    "teddy bear": 4793,
    "hair drier": 198,
    "toothbrush": 1954,
}
LABELS = [name for _, name, _ in COCO_CATEGORIES]
COCO_IDS = np.array([cid for cid, _, _ in COCO_CATEGORIES], dtype=np.int32)
LABEL_P = np.array([COCO_COUNTS[name] for name in LABELS], dtype=np.float64)
LABEL_P /= LABEL_P.sum()

# the geometric scene-graph backend's predicates (annotators/sgg.py), most frequent first
PREDICATES = ["left of", "right of", "above", "below", "near", "beside", "overlapping", "on", "inside"]
PREDICATE_P = np.array([17, 17, 12, 12, 12, 10, 10, 7, 3], dtype=np.float64)
PREDICATE_P /= PREDICATE_P.sum()
OCR_WORDS = [
    "STOP",
    "EXIT",
    "OPEN",
    "SALE",
    "PIZZA",
    "CAFE",
    "BUS",
    "POLICE",
    "TAXI",
    "HOTEL",
    "BANK",
    "PARKING",
    "ONE WAY",
    "YIELD",
    "MAIN ST",
    "5TH AVE",
    "WELCOME",
    "EXPRESS",
    "BAR",
    "MARKET",
    "NO PARKING",
    "DELTA",
    "BROADWAY",
    "SUBWAY",
    "PHARMACY",
    "KEEP RIGHT",
    "SPEED LIMIT",
    "TOYOTA",
    "AIR FRANCE",
    "COFFEE",
    "BAKERY",
    "DO NOT ENTER",
    "SCHOOL",
    "BIKE LANE",
    "ZOO",
]
SHORT_SIDES = np.array([480, 427, 424, 426, 428, 360, 512, 383, 400, 453], dtype=np.int32)
SHORT_P = np.array([40, 20, 8, 7, 7, 5, 5, 3, 3, 2], dtype=np.float64)
SHORT_P /= SHORT_P.sum()
DECODE_REASONS = ["truncated", "corrupt", "too-small", "not-an-image", "unsupported-mode", "empty"]
DECODE_MESSAGES = [
    "image file is truncated (14 bytes not processed)",
    "broken data stream when reading image file",
    "31x18 is smaller than 32 px on a side",
    "not an image Pillow can identify",
    "mode I;16 gave shape (480, 640)",
    "is an empty file",
]
EXPERT_FAIL_MESSAGES = [
    "RuntimeError: CUDA out of memory. Tried to allocate 1.50 GiB",
    "ValueError: empty mask after hole filling",
    "RuntimeError: onnxruntime failed: invalid shape",
]

EXPERTS = {  # (backend, model, weights) as the default profile would record them
    "detection": ("ultralytics", "yolo11s.pt", hashlib.sha256(b"yolo11s.pt").hexdigest()),
    "segmentation": ("segment-anything", "vit_b", hashlib.sha256(b"sam_vit_b_01ec64.pth").hexdigest()),
    "sgg": ("geometric", "geometric", ""),
    "ocr": ("rapidocr", "ppocr-v4", hashlib.sha256(b"ch_PP-OCRv4").hexdigest()),
}


def _hash(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


PLAN_HASHES = {"detection": _hash("detection", "v1")}
PLAN_HASHES["segmentation"] = _hash("segmentation", "v1", PLAN_HASHES["detection"])
PLAN_HASHES["sgg"] = _hash("sgg", "v1", PLAN_HASHES["detection"], PLAN_HASHES["segmentation"])
PLAN_HASHES["ocr"] = _hash("ocr", "v1")
VERBALIZER_HASH = _hash("verbalizer", json.dumps(VERBALIZE, sort_keys=True))
AUX_HASH = _hash("aux", VERBALIZER_HASH, *PLAN_HASHES.values())


# ----------------------------------------------------------------------------- the benchmark, step by step


@dataclass(frozen=True)
class Settings:
    """The sizes of one benchmark run, after clamping (the JSON subset and a chunk are at most N images)."""

    images: int
    json_images: int
    chunk_images: int
    repeats: int
    seed: int

    @property
    def scale(self) -> float:
        """How many times the JSON subset the full run is: the Python times are multiplied by it."""
        return self.images / self.json_images

    @property
    def subset_where(self) -> str:
        """The image_id filter that gives DuckDB the JSON subset's images."""
        return f"image_id <= {self.json_images}"


def run(
    images: int,
    out_dir: Path,
    *,
    json_images: int = JSON_IMAGES,
    chunk_images: int = CHUNK_IMAGES,
    repeats: int = REPEATS,
    keep: bool = False,
    seed: int = 0,
) -> dict:
    """Build the warehouse for `images` images under out_dir, measure, write out_dir/warehouse.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = Settings(
        images=images,
        json_images=min(json_images, images),
        chunk_images=max(1, min(chunk_images, images)),
        repeats=max(3, repeats),
        seed=seed,
    )
    root = out_dir / "warehouse-data"
    shutil.rmtree(root, ignore_errors=True)
    wh = Warehouse(root)

    # the synthetic warehouse, and its bytes per image
    written = build_warehouse(wh, s)
    peak_rss = {"write_and_compact": _peak_rss()}
    per_table = table_bytes(wh, written.rows, s)

    # the analyst questions in DuckDB over the warehouse views
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    con = wh.connect()
    connect_s = time.perf_counter() - t0
    threads = con.sql("SELECT current_setting('threads')").fetchall()[0][0]
    results, subset_answers = time_questions(con, s)
    time_fresh_connections(wh, results)
    peak_rss["duckdb_queries"] = _peak_rss()
    alternatives = time_snappy_alternative(con, wh, out_dir, results, s)

    # the JSON-scanning baseline: the same questions over a COCO-style JSON of the first json_images
    json_path = out_dir / "coco-subset.json"
    coco = write_json_subset(con, json_path, s)
    con.close()
    doc = load_json(json_path, coco)
    peak_rss["json_write_and_load"] = _peak_rss()
    time_python_scans(doc, results, subset_answers, s, load_s=coco.load_s, connect_s=connect_s)
    peak_rss["python_scans"] = _peak_rss()
    del doc
    gc.collect()

    # the report
    result = report(
        s,
        written=written,
        per_table=per_table,
        coco=coco,
        duckdb={"threads": threads, "connect_s": connect_s},
        results=results,
        alternatives=alternatives,
        load_before=load_before,
        peak_rss=peak_rss,
        kept={"warehouse": str(root), "json": str(json_path)} if keep else None,
    )
    (out_dir / "warehouse.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
        json_path.unlink(missing_ok=True)
    return result


# ----------------------------------------------------------------------------- the synthetic warehouse
#
# A chunk is built table by table from one random generator: each builder below draws from it in turn,
# so the order of the calls in generate_chunk is part of the data.


def generate_chunk(first_id: int, n: int, chunk_no: int, seed: int = 0) -> dict[str, pa.Table]:
    """Every warehouse table's rows for images first_id .. first_id + n - 1 (deterministic per seed/chunk)."""
    rng = np.random.default_rng([seed, chunk_no])
    run_id = f"20260301T{chunk_no // 60:02d}{chunk_no % 60:02d}00Z-{chunk_no:06x}"
    im = _images(rng, first_id, n, run_id)
    det = _detections(rng, im)
    seg = _segments(rng, im, det)
    rel = _relations(rng, im, det)
    ocr = _ocr(rng, im)
    tables = {
        "images": im.table,
        "detections": det.table,
        "segments": seg.table,
        "relations": rel.table,
        "ocr": ocr.table,
        "aux_text": _aux_text(im, det, seg, rel, ocr),
        "errors": _errors(rng, im),
        "done": _done(rng, im, {"detection": det.n, "segmentation": seg.n, "sgg": rel.n, "ocr": ocr.n}),
    }
    tables["runs"] = _runs_row(im, tables)
    return tables


@dataclass(frozen=True)
class _Images:
    """A chunk's images (COCO shapes) and which stage fails on which image."""

    n: int
    run_id: str
    image_id: np.ndarray
    file_name: pa.Array
    width: np.ndarray
    height: np.ndarray
    decode_fail: np.ndarray
    det_fail: np.ndarray
    seg_fail: np.ndarray
    ocr_fail: np.ndarray
    ok: np.ndarray  # decoded
    table: pa.Table


def _images(rng: np.random.Generator, first_id: int, n: int, run_id: str) -> _Images:
    """images: COCO shapes (long side 640), a few decode failures; and the failures of each expert."""
    image_id = np.arange(first_id, first_id + n, dtype=np.int64)
    file_name = _join(pc.utf8_lpad(pc.cast(pa.array(image_id), pa.string()), 12, "0"), pa.scalar(".jpg"))
    short = rng.choice(SHORT_SIDES, size=n, p=SHORT_P)
    landscape = rng.random(n) < 0.72
    width = np.where(landscape, 640, short).astype(np.int32)
    height = np.where(landscape, short, 640).astype(np.int32)
    decode_fail = rng.random(n) < 0.002
    det_fail = ~decode_fail & (rng.random(n) < 0.0002)
    seg_fail = ~decode_fail & ~det_fail & (rng.random(n) < 0.0005)
    ocr_fail = ~decode_fail & (rng.random(n) < 0.0005)
    ok = ~decode_fail
    mode = rng.choice(np.array(["RGB", "L", "CMYK", "P"]), size=n, p=[0.975, 0.02, 0.003, 0.002])
    table = _table(
        "images",
        {
            "dataset": pa.repeat(DATASET, int(ok.sum())),
            "split": pa.repeat("train2017", int(ok.sum())),
            "image_id": image_id[ok],
            "file_name": file_name.filter(pa.array(ok)),
            "width": width[ok],
            "height": height[ok],
            "source_mode": mode[ok],
            "exif_rotated": (rng.random(n) < 0.01)[ok],
            "frames": np.ones(int(ok.sum()), np.int32),
            "run_id": pa.repeat(run_id, int(ok.sum())),
        },
    )
    return _Images(
        n, run_id, image_id, file_name, width, height, decode_fail, det_fail, seg_fail, ocr_fail, ok, table
    )


@dataclass(frozen=True)
class _Detections:
    n: np.ndarray  # detections per image
    img: np.ndarray  # image index of each detection
    start: np.ndarray  # first detection of each image
    cls: np.ndarray
    score: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    bw: np.ndarray
    bh: np.ndarray
    labels: pa.Array
    numbered: pa.Array  # "person (#2)": the names the relations use
    table: pa.Table


def _detections(rng: np.random.Generator, im: _Images) -> _Detections:
    """detections: negative binomial counts (mean 7, overdispersed like COCO), COCO label skew."""
    width, height = im.width, im.height
    n_det = rng.negative_binomial(1.5, 1.5 / 8.5, size=im.n).astype(np.int64)
    n_det[im.decode_fail | im.det_fail] = 0
    d_img, d_idx, d_start = _local_index(n_det)
    nd = len(d_img)
    cls = rng.choice(80, size=nd, p=LABEL_P)
    score = (0.1 + 0.9 * rng.beta(0.9, 1.6, size=nd)).astype(np.float32)
    w_img, h_img = width[d_img].astype(np.float64), height[d_img].astype(np.float64)
    bw = np.clip(rng.lognormal(-1.8, 0.9, nd), 0.01, 1.0) * w_img
    bh = np.clip(bw / w_img * rng.lognormal(0.0, 0.5, nd), 0.01, 1.0) * h_img
    x1 = rng.random(nd) * (w_img - bw)
    y1 = rng.random(nd) * (h_img - bh)
    labels = pa.array(LABELS).take(pa.array(cls))
    table = _table(
        "detections",
        {
            **_identity("detection", im.run_id, nd),
            "image_id": im.image_id[d_img],
            "det_index": d_idx,
            "label": labels,
            "class_id": cls,
            "score": score,
            "x1": x1,
            "y1": y1,
            "x2": x1 + bw,
            "y2": y1 + bh,
        },
    )
    numbered = _numbered_labels(labels, d_img, cls)
    return _Detections(n_det, d_img, d_start, cls, score, x1, y1, bw, bh, labels, numbered, table)


def _numbered_labels(labels: pa.Array, d_img: np.ndarray, cls: np.ndarray) -> pa.Array:
    """MoAI numbers repeated labels within an image: "person (#2)"; a unique label stays plain."""
    nd = len(d_img)
    key = d_img * 80 + cls
    order = np.argsort(key, kind="stable")
    sk = key[order]
    group_start = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    group_len = np.diff(np.r_[group_start, nd])
    rank = np.empty(nd, np.int64)
    rank[order] = np.arange(nd) - np.repeat(group_start, group_len) + 1
    same = np.empty(nd, np.int64)
    same[order] = np.repeat(group_len, group_len)
    return pc.if_else(
        pa.array(same > 1),
        _join(labels, pa.scalar(" (#"), pc.cast(pa.array(rank), pa.string()), pa.scalar(")")),
        labels,
    )


@dataclass(frozen=True)
class _Segments:
    n: np.ndarray  # segments per image
    img: np.ndarray  # image index of each segment
    thing: np.ndarray
    label: pa.Array
    score: np.ndarray
    bx: np.ndarray
    by: np.ndarray
    bbw: np.ndarray
    bbh: np.ndarray
    table: pa.Table


def _segments(rng: np.random.Generator, im: _Images, det: _Detections) -> _Segments:
    """segments: thing segments from (most) detections first, then unlabeled SAM regions."""
    width, height, n_det, nd = im.width, im.height, det.n, len(det.img)
    n_thing = rng.binomial(n_det, 0.8)
    n_stuff = rng.poisson(4.4, size=im.n)
    n_stuff[im.decode_fail | im.det_fail | im.seg_fail] = 0
    n_thing[im.seg_fail] = 0
    n_seg = n_thing + n_stuff
    s_img, s_idx, _ = _local_index(n_seg)
    ns = len(s_img)
    thing = s_idx < n_thing[s_img]
    det_row = np.where(thing, det.start[s_img] + np.minimum(s_idx, np.maximum(n_det[s_img] - 1, 0)), 0)
    sw, sh = width[s_img].astype(np.float64), height[s_img].astype(np.float64)
    stuff_w = np.clip(rng.lognormal(-1.0, 0.6, ns), 0.05, 1.0) * sw
    stuff_h = np.clip(rng.lognormal(-1.0, 0.6, ns), 0.05, 1.0) * sh
    if nd:
        bx = np.where(thing, det.x1[det_row], rng.random(ns) * (sw - stuff_w))
        by = np.where(thing, det.y1[det_row], rng.random(ns) * (sh - stuff_h))
        bbw = np.where(thing, det.bw[det_row], stuff_w)
        bbh = np.where(thing, det.bh[det_row], stuff_h)
        s_label = pc.if_else(pa.array(thing), det.labels.take(pa.array(det_row)), pa.scalar("unlabeled"))
        s_cat = np.where(thing, COCO_IDS[det.cls[det_row]], 0)
        det_score = det.score[det_row]
    else:
        bx, by, bbw, bbh = rng.random(ns) * (sw - stuff_w), rng.random(ns) * (sh - stuff_h), stuff_w, stuff_h
        s_label, s_cat, det_score = (
            pa.repeat("unlabeled", ns),
            np.zeros(ns, np.int32),
            np.zeros(ns, np.float32),
        )
    piou = rng.uniform(0.7, 1.0, ns).astype(np.float32)
    score = np.where(thing, det_score, piou)
    table = _table(
        "segments",
        {
            **_identity("segmentation", im.run_id, ns),
            "image_id": im.image_id[s_img],
            "segment_id": s_idx + 1,
            "label": s_label,
            "category_id": s_cat,
            "isthing": thing,
            "area": (bbw * bbh * rng.uniform(0.35, 0.85, ns)).astype(np.int64),
            "bbox_x": bx,
            "bbox_y": by,
            "bbox_w": bbw,
            "bbox_h": bbh,
            "rle_counts": _random_strings(rng, rng.integers(100, 301, size=ns)),
            "rle_height": height[s_img],
            "rle_width": width[s_img],
            "score": score,
            "predicted_iou": piou,
            "stability_score": rng.uniform(0.85, 1.0, ns).astype(np.float32),
        },
    )
    return _Segments(n_seg, s_img, thing, s_label, score, bx, by, bbw, bbh, table)


@dataclass(frozen=True)
class _Relations:
    n: np.ndarray  # relations per image
    img: np.ndarray  # image index of each relation
    score: np.ndarray
    table: pa.Table


def _relations(rng: np.random.Generator, im: _Images, det: _Detections) -> _Relations:
    """relations between detections of the same image (needs two), ≈8 per image overall."""
    n_det = det.n
    sgg_fail = im.seg_fail  # sgg reads segmentation: its failure is an upstream failure here
    n_rel = np.where(n_det >= 2, rng.poisson(11.2, size=im.n), 0)
    n_rel = np.minimum(n_rel, n_det * (n_det - 1))
    n_rel[sgg_fail] = 0
    r_img, _, _ = _local_index(n_rel)
    nr = len(r_img)
    k = n_det[r_img]
    subj = (rng.random(nr) * k).astype(np.int64)
    obj = (subj + 1 + (rng.random(nr) * (k - 1)).astype(np.int64)) % np.maximum(k, 1)
    subj_row, obj_row = det.start[r_img] + subj, det.start[r_img] + obj
    rel_score = (0.5 + 0.5 * rng.beta(2.0, 1.2, nr)).astype(np.float32)  # 0.5 + 0.5 * quality, as geometric
    table = _table(
        "relations",
        {
            **_identity("sgg", im.run_id, nr),
            "image_id": im.image_id[r_img],
            "subject_id": subj + 1,
            "subject": det.numbered.take(pa.array(subj_row)),
            "predicate": pa.array(PREDICATES).take(
                pa.array(rng.choice(len(PREDICATES), size=nr, p=PREDICATE_P))
            ),
            "object_id": obj + 1,
            "object": det.numbered.take(pa.array(obj_row)),
            "score": rel_score,
        },
    )
    return _Relations(n_rel, r_img, rel_score, table)


@dataclass(frozen=True)
class _Ocr:
    n: np.ndarray  # lines per image
    img: np.ndarray  # image index of each line
    text: pa.Array
    table: pa.Table


def _ocr(rng: np.random.Generator, im: _Images) -> _Ocr:
    """OCR: ≈20% of images carry text, 1 + Poisson(1.5) lines each (mean ≈0.5 lines per image)."""
    n = im.n
    n_ocr = np.where(rng.random(n) < 0.2, 1 + rng.poisson(1.5, size=n), 0)
    n_ocr[im.decode_fail | im.ocr_fail] = 0
    o_img, o_idx, _ = _local_index(n_ocr)
    no = len(o_img)
    words = pa.array(OCR_WORDS)
    w1 = words.take(pa.array(rng.integers(0, len(OCR_WORDS), no)))
    w2 = _join(w1, pa.scalar(" "), words.take(pa.array(rng.integers(0, len(OCR_WORDS), no))))
    num = pc.cast(pa.array(rng.integers(1, 2000, no)), pa.string())
    kind = rng.integers(0, 3, no)
    text = pc.if_else(pa.array(kind == 0), w1, pc.if_else(pa.array(kind == 1), num, w2))
    ow, oh = im.width[o_img].astype(np.float64), im.height[o_img].astype(np.float64)
    tw, th = rng.uniform(0.05, 0.4, no) * ow, rng.uniform(0.02, 0.08, no) * oh
    tx, ty = rng.random(no) * (ow - tw), rng.random(no) * (oh - th)
    corners = np.stack([tx, ty, tx + tw, ty, tx + tw, ty + th, tx, ty + th], axis=1).ravel()
    points = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 8 * no + 1, 2, dtype=np.int32)), pa.array(corners)
    )
    polygon = pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * no + 1, 4, dtype=np.int32)), points)
    table = _table(
        "ocr",
        {
            **_identity("ocr", im.run_id, no),
            "image_id": im.image_id[o_img],
            "line_index": o_idx,
            "text": text,
            "score": rng.uniform(0.5, 1.0, no).astype(np.float32),
            "polygon": polygon,
        },
    )
    return _Ocr(n_ocr, o_img, text, table)


def _aux_text(im: _Images, det: _Detections, seg: _Segments, rel: _Relations, ocr: _Ocr) -> pa.Table:
    """aux_text: verbalize/moai.py's four sentences with its default thresholds (item order is storage
    order here, not the verbalizer's score order: same content and length)."""
    seg_text = _segmentation_sentence(im, seg)
    det_text = _detection_sentence(im, det)
    sgg_text = _relations_sentence(im, rel)
    ocr_text = _ocr_sentence(im, ocr)
    full = _join(seg_text, det_text, sgg_text, ocr_text, sep=" ")
    full = pc.utf8_trim_whitespace(pc.replace_substring_regex(full, "  +", " "))
    ok = im.ok
    na = int(ok.sum())
    okm = pa.array(ok)
    return _table(
        "aux_text",
        {
            "dataset": pa.repeat(DATASET, na),
            "image_id": im.image_id[ok],
            "run_id": pa.repeat(im.run_id, na),
            "text": full.filter(okm),
            "segmentation_text": seg_text.filter(okm),
            "detection_text": det_text.filter(okm),
            "sgg_text": sgg_text.filter(okm),
            "ocr_text": ocr_text.filter(okm),
            "verbalizer_hash": pa.repeat(VERBALIZER_HASH, na),
            "config_hash": pa.repeat(AUX_HASH, na),
            "random_init": np.zeros(na, bool),
        },
    )


def _box_piece(name, bx1, by1, bx2, by2, w, h) -> pa.Array:
    """The verbalizer's item `[x1, y1, x2, y2] name`: the box normalized by the image's size."""
    return _join(
        pa.scalar("["),
        _fmt(bx1 / w),
        pa.scalar(", "),
        _fmt(by1 / h),
        pa.scalar(", "),
        _fmt(bx2 / w),
        pa.scalar(", "),
        _fmt(by2 / h),
        pa.scalar("] "),
        name,
    )


def _segmentation_sentence(im: _Images, seg: _Segments) -> pa.Array:
    """The thing segments scoring >= the threshold, as boxes."""
    sw, sh = im.width[seg.img].astype(np.float64), im.height[seg.img].astype(np.float64)
    seg_keep = seg.thing & (seg.score >= np.float32(VERBALIZE["segmentation_threshold"]))
    return _per_image_join(
        _box_piece(seg.label, seg.bx, seg.by, seg.bx + seg.bbw, seg.by + seg.bbh, sw, sh).filter(
            pa.array(seg_keep)
        ),
        np.bincount(seg.img[seg_keep], minlength=im.n),
        OBJECTS_PREFIX,
    )


def _detection_sentence(im: _Images, det: _Detections) -> pa.Array:
    """The detections scoring >= the threshold, as boxes."""
    w_img, h_img = im.width[det.img].astype(np.float64), im.height[det.img].astype(np.float64)
    keep = det.score >= np.float32(VERBALIZE["detection_threshold"])
    return _per_image_join(
        _box_piece(det.labels, det.x1, det.y1, det.x1 + det.bw, det.y1 + det.bh, w_img, h_img).filter(
            pa.array(keep)
        ),
        np.bincount(det.img[keep], minlength=im.n),
        OBJECTS_PREFIX,
    )


def _relations_sentence(im: _Images, rel: _Relations) -> pa.Array:
    """The top min(k, objects) relations by score per image (objects: the ids its relations name), then
    those scoring >= the threshold."""
    v, r_img, n_rel, nr = VERBALIZE, rel.img, rel.n, len(rel.img)
    t = rel.table
    by_score = np.lexsort((-rel.score, r_img))
    rank = np.empty(nr, np.int64)
    rank[by_score] = np.arange(nr) - np.repeat(np.cumsum(n_rel) - n_rel, n_rel)
    named = np.unique(  # (image, object id) pairs, an object id being below 2**32
        np.r_[r_img, r_img] << 32 | np.r_[t["subject_id"].to_numpy(), t["object_id"].to_numpy()]
    )
    objects = np.bincount(named >> 32, minlength=im.n)
    top_k = np.minimum(v["sgg_top_k"], objects[r_img])
    rel_keep = (rank < top_k) & (rel.score >= np.float32(v["sgg_threshold"]))
    rel_pieces = _join(t["subject"], pa.scalar("is"), t["predicate"], t["object"], sep=" ")
    return _per_image_join(
        rel_pieces.filter(pa.array(rel_keep)), np.bincount(r_img[rel_keep], minlength=im.n), RELATIONS_PREFIX
    )


def _ocr_sentence(im: _Images, ocr: _Ocr) -> pa.Array:
    """The OCR lines scoring >= the threshold."""
    ocr_score = ocr.table["score"].to_numpy()
    ocr_keep = ocr_score >= np.float32(VERBALIZE["ocr_threshold"])
    return _per_image_join(
        ocr.text.filter(pa.array(ocr_keep)), np.bincount(ocr.img[ocr_keep], minlength=im.n), TEXT_PREFIX
    )


def _errors(rng: np.random.Generator, im: _Images) -> pa.Table:
    """errors: decode failures, expert failures, and the upstream failures they cause."""
    n = im.n
    reason_i = rng.integers(0, len(DECODE_REASONS), n)
    stages = (  # (stage, images, reason, message, config hash)
        (
            "decode",
            im.decode_fail,
            pa.array(DECODE_REASONS).take(pa.array(reason_i)),
            _join(im.file_name, pa.scalar(": "), pa.array(DECODE_MESSAGES).take(pa.array(reason_i))),
            "decode-v1",
        ),
        (
            "detection",
            im.det_fail,
            "expert-failed",
            pa.array(EXPERT_FAIL_MESSAGES).take(pa.array(rng.integers(0, 3, n))),
            PLAN_HASHES["detection"],
        ),
        (
            "segmentation",
            im.det_fail,
            "upstream-failed",
            "skipped: detection failed",
            PLAN_HASHES["segmentation"],
        ),
        (
            "segmentation",
            im.seg_fail,
            "expert-failed",
            pa.array(EXPERT_FAIL_MESSAGES).take(pa.array(rng.integers(0, 3, n))),
            PLAN_HASHES["segmentation"],
        ),
        (
            "sgg",
            im.det_fail | im.seg_fail,
            "upstream-failed",
            "skipped: segmentation failed",
            PLAN_HASHES["sgg"],
        ),
        (
            "ocr",
            im.ocr_fail,
            "expert-failed",
            pa.array(EXPERT_FAIL_MESSAGES).take(pa.array(rng.integers(0, 3, n))),
            PLAN_HASHES["ocr"],
        ),
    )
    return pa.concat_tables([_error_rows(im, *stage) for stage in stages])


def _error_rows(
    im: _Images, stage: str, mask: np.ndarray, reason: str | pa.Array, message: str | pa.Array, chash: str
) -> pa.Table:
    """The `errors` rows of one stage: one per image in mask (reason, message: one per image or one for all)."""
    m = pa.array(mask)
    cnt = int(mask.sum())
    return _table(
        "errors",
        {
            "dataset": pa.repeat(DATASET, cnt),
            "split": pa.repeat("train2017", cnt),
            "image_id": im.image_id[mask],
            "file_name": im.file_name.filter(m),
            "stage": pa.repeat(stage, cnt),
            "reason": reason.filter(m) if isinstance(reason, pa.Array) else pa.repeat(reason, cnt),
            "message": message.filter(m) if isinstance(message, pa.Array) else pa.repeat(message, cnt),
            "config_hash": pa.repeat(chash, cnt),
            "run_id": pa.repeat(im.run_id, cnt),
        },
    )


def _done(rng: np.random.Generator, im: _Images, records: dict[str, np.ndarray]) -> pa.Table:
    """The exactly-once ledger: decode + four experts + aux per image (records: each expert's rows per image)."""
    n, ok = im.n, im.ok
    done_parts = []
    fails = {
        "detection": im.det_fail,
        "segmentation": im.det_fail | im.seg_fail,
        "sgg": im.det_fail | im.seg_fail,
        "ocr": im.ocr_fail,
    }
    for expert, chash in (("decode", "decode-v1"), *PLAN_HASHES.items(), ("aux", AUX_HASH)):
        mask = np.ones(n, bool) if expert == "decode" else ok
        failed = im.decode_fail if expert == "decode" else fails.get(expert, np.zeros(n, bool))
        cnt = int(mask.sum())
        done_parts.append(
            _table(
                "done",
                {
                    "dataset": pa.repeat(DATASET, cnt),
                    "image_id": im.image_id[mask],
                    "expert": pa.repeat(expert, cnt),
                    "config_hash": pa.repeat(chash, cnt),
                    "status": np.where(failed[mask], "error", "ok"),
                    "n_records": records.get(expert, np.ones(n, np.int64))[mask].astype(np.int32),
                    "seconds": rng.gamma(2.0, 0.02, cnt).astype(np.float32),
                    "run_id": pa.repeat(im.run_id, cnt),
                },
            )
        )
    return pa.concat_tables(done_parts)


def _runs_row(im: _Images, tables: dict[str, pa.Table]) -> pa.Table:
    """The chunk's one `runs` row, as `moai annotate` writes it."""
    rows = {f"rows_{t}": tables[t].num_rows for t in ("detections", "segments", "relations", "ocr")}
    started = datetime(2026, 3, 1, tzinfo=timezone.utc)
    return pa.Table.from_pylist(
        [
            {
                "run_id": im.run_id,
                "dataset": DATASET,
                "profile": "default",
                "started_at": started,
                "finished_at": started,
                "images_listed": im.n,
                "images_processed": im.n,
                "errors": int(tables["errors"].num_rows),
                "images_per_s": 25.0,
                "counts_json": json.dumps(rows),
                "config_json": json.dumps({"plan_hashes": PLAN_HASHES, "verbalize": VERBALIZE}),
                "versions_json": json.dumps({"duckdb": _version("duckdb"), "pyarrow": pa.__version__}),
                "random_init_experts": "",
            }
        ],
        schema=TABLES["runs"],
    )


@dataclass(frozen=True)
class Written:
    """What writing the warehouse did: rows per table, and seconds per phase."""

    rows: Counter
    generate_s: float
    commit_s: float
    compact_s: float
    write_s: float


def build_warehouse(wh: Warehouse, s: Settings) -> Written:
    """Generate the images chunk by chunk through `Warehouse.commit` (one commit = one run), then compact."""
    images, chunk_images = s.images, s.chunk_images
    rows: Counter = Counter()
    gen_s = commit_s = 0.0
    t_all = time.perf_counter()
    for chunk_no, first in enumerate(range(0, images, chunk_images)):
        n = min(chunk_images, images - first)
        t0 = time.perf_counter()
        tables = generate_chunk(first + 1, n, chunk_no, s.seed)
        t1 = time.perf_counter()
        wh.commit(tables)
        t2 = time.perf_counter()
        gen_s, commit_s = gen_s + t1 - t0, commit_s + t2 - t1
        rows.update({t: tab.num_rows for t, tab in tables.items()})
        del tables
        _log(
            f"chunk {chunk_no}: {first + n:,}/{images:,} images (generate {t1 - t0:.1f}s, commit {t2 - t1:.1f}s)"
        )
    t0 = time.perf_counter()
    wh.compact(min_files=2)
    compact_s = time.perf_counter() - t0
    write_s = time.perf_counter() - t_all
    _log(f"compacted in {compact_s:.1f}s; total write {write_s:.1f}s")
    gc.collect()
    pa.default_memory_pool().release_unused()
    return Written(rows, gen_s, commit_s, compact_s, write_s)


def table_bytes(wh: Warehouse, rows: Counter, s: Settings) -> dict[str, dict]:
    """Rows, files and bytes of every warehouse table, and its bytes per image."""
    per_table = {}
    for table in TABLES:
        files = wh.files(table)
        size = sum(f.stat().st_size for f in files)
        per_table[table] = {
            "rows": rows.get(table, 0),
            "files": len(files),
            "bytes": size,
            "bytes_per_image": size / s.images,
        }
    return per_table


# ----------------------------------------------------------------------------- vectorised helpers of the chunk


def _rle_alphabet_table() -> np.ndarray:
    """256-entry lookup: half the mass on the run characters COCO RLE strings are full of, half uniform."""
    common = np.frombuffer(b"O0O1N2O1O0M3N2L4O0O100001N", dtype=np.uint8)
    uniform = np.arange(48, 112, dtype=np.uint8)  # '0'..'o', the compressed-RLE character range
    return np.concatenate([np.resize(common, 128), np.resize(uniform, 128)])


RLE_TABLE = _rle_alphabet_table()


def _random_strings(rng: np.random.Generator, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = RLE_TABLE[rng.integers(0, 256, size=int(offsets[-1]), dtype=np.uint8)]
    return pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data)).cast(
        pa.string()
    )


def _join(*parts, sep: str = "") -> pa.Array:
    return pc.binary_join_element_wise(*parts, sep)


COORDS = pa.array([f"{v / 100:.2f}" for v in range(101)])  # "0.00" .. "1.00"


def _fmt(values: np.ndarray) -> pa.Array:
    """Normalized coordinates as the verbalizer writes them: clamped to [0, 1], two decimals."""
    return COORDS.take(pa.array(np.rint(np.clip(values, 0.0, 1.0) * 100).astype(np.int64)))


def _per_image_join(pieces: pa.Array, counts: np.ndarray, prefix: str) -> pa.Array:
    """One sentence per image: prefix + items joined with ", and " + "."; "" when nothing to say."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    if isinstance(pieces, pa.ChunkedArray):
        pieces = pieces.combine_chunks()
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), pieces), ", and ")
    return pc.if_else(pa.array(counts > 0), _join(pa.scalar(prefix), joined, pa.scalar(".")), pa.scalar(""))


def _local_index(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image index of each row, index of the row within its image, first row of each image)."""
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    img = np.repeat(np.arange(len(counts)), counts)
    return img, np.arange(int(counts.sum())) - starts[img], starts


def _identity(expert: str, run_id: str, n: int) -> dict[str, pa.Array]:
    backend, model, weights = EXPERTS[expert]
    return {
        "dataset": pa.repeat(DATASET, n),
        "run_id": pa.repeat(run_id, n),
        "model": pa.repeat(model, n),
        "backend": pa.repeat(backend, n),
        "weights_sha256": pa.repeat(weights, n),
        "config_hash": pa.repeat(PLAN_HASHES[expert], n),
    }


def _table(name: str, columns: dict[str, pa.Array | np.ndarray]) -> pa.Table:
    schema = TABLES[name]
    return pa.table({f.name: columns[f.name] for f in schema}).cast(schema)


# ----------------------------------------------------------------------------- the analyst questions in DuckDB


@dataclass(frozen=True)
class Question:
    name: str
    question: str
    sql: str  # `{w}` is an image_id filter: TRUE for the full run, a range for the JSON subset
    python: Callable[[dict], list]  # the same answer from the COCO-style JSON document


def _names(doc: dict) -> dict[int, str]:
    return {c["id"]: c["name"] for c in doc["categories"]}


def _py_persons_with_text(doc: dict) -> list:
    person = next(c["id"] for c in doc["categories"] if c["name"] == "person")
    with_text = {o["image_id"] for o in doc["ocr"]}
    persons = Counter(
        a["image_id"] for a in doc["annotations"] if a["category_id"] == person and a["score"] >= PERSON_SCORE
    )
    return [(i,) for i in sorted(i for i, c in persons.items() if c >= 3 and i in with_text)]


def _py_top_relations(doc: dict) -> list:
    counts = Counter(
        (r["subject"].split(" (#", 1)[0], r["predicate"], r["object"].split(" (#", 1)[0])
        for r in doc["relations"]
    )
    return [(*key, n) for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20]]


def _py_per_class(doc: dict) -> list:
    names, n, total = _names(doc), Counter(), defaultdict(float)
    for a in doc["annotations"]:
        n[a["category_id"]] += 1
        total[a["category_id"]] += a["score"]
    return sorted(((names[c], k, total[c] / k) for c, k in n.items()), key=lambda r: (-r[1], r[0]))


def _py_histogram(doc: dict) -> list:
    cat = next(c["id"] for c in doc["categories"] if c["name"] == HIST_LABEL)
    counts = Counter(math.floor(a["score"] * 20) / 20 for a in doc["annotations"] if a["category_id"] == cat)
    return sorted(counts.items())


def _py_aux_word(doc: dict) -> list:
    return [(a["image_id"],) for a in doc["aux_text"] if SEARCH_WORD in a["text"]]


def _py_errors(doc: dict) -> list:
    counts = Counter((e["stage"], e["reason"]) for e in doc["errors"])
    return [(*key, n) for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _py_aux_length(doc: dict) -> list:
    return sorted(Counter(len(a["text"]) // 250 * 250 for a in doc["aux_text"]).items())


def _py_segments_per_label(doc: dict) -> list:
    names, n, area, stab = _names(doc), Counter(), defaultdict(float), defaultdict(float)
    for s in doc["segments"]:
        if s["isthing"]:
            c = s["category_id"]
            n[c] += 1
            area[c] += s["area"]
            stab[c] += s["stability_score"]
    return sorted(
        ((names[c], k, area[c] / k, stab[c] / k) for c, k in n.items()), key=lambda r: (-r[1], r[0])
    )


QUESTIONS = [
    Question(
        "persons_with_text",
        f"images with >= 3 persons (score >= {PERSON_SCORE}) and any OCR text",
        "SELECT image_id FROM detections WHERE label = 'person' AND score >= 0.5 AND {w} "
        "AND image_id IN (SELECT image_id FROM ocr WHERE {w}) "
        "GROUP BY image_id HAVING count(*) >= 3 ORDER BY image_id",
        _py_persons_with_text,
    ),
    Question(
        "top_relations",
        "top-20 (subject label, predicate, object label) triples",
        "SELECT split_part(subject, ' (#', 1) AS subject_label, predicate, "
        "split_part(object, ' (#', 1) AS object_label, count(*) AS n FROM relations WHERE {w} "
        "GROUP BY ALL ORDER BY n DESC, subject_label, predicate, object_label LIMIT 20",
        _py_top_relations,
    ),
    Question(
        "per_class",
        "detections per class with mean score",
        "SELECT label, count(*) AS n, avg(score) AS mean_score FROM detections WHERE {w} "
        "GROUP BY label ORDER BY n DESC, label",
        _py_per_class,
    ),
    Question(
        "score_histogram",
        f"score histogram (0.05 bins) of class '{HIST_LABEL}'",
        "SELECT floor(score::DOUBLE * 20) / 20 AS bucket, count(*) AS n FROM detections "
        f"WHERE label = '{HIST_LABEL}' AND {{w}} GROUP BY 1 ORDER BY 1",
        _py_histogram,
    ),
    Question(
        "aux_text_word",
        f"images whose aux_text mentions '{SEARCH_WORD}'",
        f"SELECT image_id FROM aux_text WHERE contains(text, '{SEARCH_WORD}') AND {{w}} ORDER BY image_id",
        _py_aux_word,
    ),
    Question(
        "errors_by_stage",
        "error counts by stage and reason",
        "SELECT stage, reason, count(*) AS n FROM errors WHERE {w} GROUP BY ALL "
        "ORDER BY n DESC, stage, reason",
        _py_errors,
    ),
    Question(
        "aux_text_length",
        "aux_text length distribution (250-character bins)",
        "SELECT length(text) // 250 * 250 AS bucket, count(*) AS n FROM aux_text WHERE {w} "
        "GROUP BY 1 ORDER BY 1",
        _py_aux_length,
    ),
    Question(
        "segments_per_label",
        "thing segments per label: count, mean area, mean stability",
        "SELECT label, count(*) AS n, avg(area) AS mean_area, avg(stability_score) AS mean_stability "
        "FROM segments WHERE isthing AND {w} GROUP BY label ORDER BY n DESC, label",
        _py_segments_per_label,
    ),
]


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        if len(ra) != len(rb):
            return False
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) or isinstance(y, float):
                if not math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-9):
                    return False
            elif x != y:
                return False
    return True


def time_questions(con, s: Settings) -> tuple[dict[str, dict], dict[str, list]]:
    """Every question over all images and over the JSON subset: per question its timings, and the
    subset answers the Python scans must reproduce."""
    results: dict[str, dict] = {}
    subset_answers: dict[str, list] = {}
    for q in QUESTIONS:
        sql = q.sql.format(w="TRUE")
        med, times, answer = _median_time(lambda sql=sql: con.sql(sql).fetchall(), s.repeats)
        sub_sql = q.sql.format(w=s.subset_where)
        sub_med, _, sub_answer = _median_time(lambda sub_sql=sub_sql: con.sql(sub_sql).fetchall(), s.repeats)
        subset_answers[q.name] = sub_answer
        results[q.name] = {
            "question": q.question,
            "sql": sql,
            "duckdb_s": med,
            "duckdb_runs_s": times,
            "rows_returned": len(answer),
            "duckdb_subset_s": sub_med,
        }
        _log(f"duckdb {q.name}: {med * 1000:.1f} ms ({len(answer)} rows)")
    return results, subset_answers


def time_fresh_connections(wh: Warehouse, results: dict[str, dict]) -> None:
    """What `moai sql "..."` pays per question: a fresh connection and views each time."""
    for q in QUESTIONS:
        sql = results[q.name]["sql"]
        med, _, _ = _median_time(lambda sql=sql: wh.query(sql), 3)
        results[q.name]["duckdb_fresh_connection_s"] = med


def time_snappy_alternative(con, wh: Warehouse, out_dir: Path, results: dict[str, dict], s: Settings) -> dict:
    """What-if: the aux_text `text` column alone, snappy instead of zstd (decompression dominates)."""
    probe = out_dir / "aux-text-snappy.parquet"
    target = str(probe).replace("'", "''")
    con.execute(
        f"COPY (SELECT image_id, text FROM aux_text) TO '{target}' "
        "(FORMAT parquet, COMPRESSION snappy, ROW_GROUP_SIZE 131072)"
    )
    alternatives = {
        "aux_text_text_snappy": {
            "what": "the same `text` column written by DuckDB with snappy (the warehouse writes zstd); "
            "not the committed warehouse, a measured alternative for store.py. Timed interleaved with the "
            "same query over the warehouse (median of repeats each)",
            "file_bytes_image_id_and_text": probe.stat().st_size,
            "warehouse_text_column_bytes_zstd": _column_bytes(wh.files("aux_text"), "text"),
        }
    }
    for name in ("aux_text_word", "aux_text_length"):  # interleaved, so both see the same CPU contention
        pair = {
            "zstd_warehouse": results[name]["sql"],
            "snappy": results[name]["sql"].replace("FROM aux_text", f"FROM read_parquet('{target}')"),
        }
        times: dict[str, list[float]] = {k: [] for k in pair}
        for sql in pair.values():
            con.sql(sql).fetchall()  # warm-up
        for _ in range(s.repeats):
            for k, sql in pair.items():
                start = time.perf_counter()
                con.sql(sql).fetchall()
                times[k].append(time.perf_counter() - start)
        for k, ts in times.items():
            alternatives["aux_text_text_snappy"][f"{name}_{k}_s"] = statistics.median(ts)
    probe.unlink(missing_ok=True)
    return alternatives


# ----------------------------------------------------------------------------- the JSON-scanning baseline


JSON_PARTS = {  # key in the document -> SELECT over the warehouse views (`{w}` = the subset filter)
    "images": "SELECT image_id AS id, file_name, width, height FROM images WHERE {w} ORDER BY image_id",
    "annotations": "SELECT image_id, c.id AS category_id, [x1::DOUBLE, y1::DOUBLE, x2::DOUBLE - x1::DOUBLE, "
    "y2::DOUBLE - y1::DOUBLE] AS bbox, score::DOUBLE AS score FROM detections d "
    "JOIN cats c ON d.label = c.name WHERE {w} ORDER BY image_id, det_index",
    "segments": "SELECT image_id, segment_id AS id, category_id, isthing, area, [bbox_x::DOUBLE, "
    "bbox_y::DOUBLE, bbox_w::DOUBLE, bbox_h::DOUBLE] AS bbox, {{'size': [rle_height, rle_width], "
    "'counts': rle_counts}} AS segmentation, score::DOUBLE AS score, "
    "predicted_iou::DOUBLE AS predicted_iou, stability_score::DOUBLE AS stability_score "
    "FROM segments WHERE {w} ORDER BY image_id, segment_id",
    "relations": "SELECT image_id, subject_id, subject, predicate, object_id, object, score::DOUBLE AS score "
    "FROM relations WHERE {w} ORDER BY image_id, subject_id, object_id",
    "ocr": "SELECT image_id, text, score::DOUBLE AS score, polygon FROM ocr WHERE {w} ORDER BY image_id, line_index",
    "aux_text": "SELECT image_id, text, segmentation_text, detection_text, sgg_text, ocr_text, random_init "
    "FROM aux_text WHERE {w} ORDER BY image_id",
    "errors": "SELECT image_id, file_name, stage, reason, message FROM errors WHERE {w} ORDER BY image_id, stage",
}


def write_coco_json(con, path: Path, where: str) -> None:
    """One JSON document, COCO-results-like: provenance once in `info`, then one array per record kind."""
    con.register(
        "cats",
        pa.table({"id": COCO_IDS, "name": LABELS, "supercategory": [s for _, _, s in COCO_CATEGORIES]}),
    )
    info = {
        "description": "moai-forge benchmark export (COCO results layout + segments/relations/ocr/aux)",
        "experts": {
            e: {"backend": b, "model": m, "weights_sha256": w, "config_hash": PLAN_HASHES[e]}
            for e, (b, m, w) in EXPERTS.items()
        },
        "verbalizer_hash": VERBALIZER_HASH,
    }
    categories = [
        {"id": int(i), "name": n, "supercategory": s}
        for i, (_, n, s) in zip(COCO_IDS, COCO_CATEGORIES, strict=True)
    ]
    tmp = path.with_suffix(".part.json")
    with open(path, "wb") as out:
        out.write(
            b'{"info": ' + json.dumps(info).encode() + b', "categories": ' + json.dumps(categories).encode()
        )
        for key, sql in JSON_PARTS.items():
            target = str(tmp).replace("'", "''")
            con.execute(f"COPY ({sql.format(w=where)}) TO '{target}' (FORMAT json, ARRAY true)")
            out.write(f', "{key}": '.encode())
            with open(tmp, "rb") as part:
                shutil.copyfileobj(part, out, 16 << 20)
        out.write(b"}\n")
    tmp.unlink(missing_ok=True)


@dataclass
class CocoJson:
    """The COCO-style JSON of the first json_images images: its size, and what writing and parsing it took."""

    images: int
    bytes: int
    write_s: float
    load_runs_s: list[float] = field(default_factory=list)
    parsed_rss_bytes: int = 0  # approximate: RSS growth of this process across the loads

    @property
    def load_s(self) -> float:
        return statistics.median(self.load_runs_s)


def write_json_subset(con, json_path: Path, s: Settings) -> CocoJson:
    """Write the JSON subset and time it."""
    t0 = time.perf_counter()
    write_coco_json(con, json_path, s.subset_where)
    json_write_s = time.perf_counter() - t0
    json_bytes = json_path.stat().st_size
    _log(f"COCO JSON for {s.json_images:,} images: {json_bytes / 1e6:.0f} MB in {json_write_s:.1f}s")
    return CocoJson(images=s.json_images, bytes=json_bytes, write_s=json_write_s)


def load_json(json_path: Path, coco: CocoJson) -> dict:
    """json.load the subset three times (times and memory go to coco); the parsed document."""
    load_times: list[float] = []
    gc.collect()
    rss_before = _rss()
    doc: dict = {}
    for _ in range(3):  # the file was just written, so every load reads it from the page cache
        doc = {}
        gc.collect()
        start = time.perf_counter()
        with open(json_path, "rb") as f:
            doc = json.load(f)
        load_times.append(time.perf_counter() - start)
    coco.parsed_rss_bytes = _rss() - rss_before
    coco.load_runs_s = load_times
    _log(f"json.load: {coco.load_s:.1f}s (median of 3)")
    return doc


def time_python_scans(
    doc: dict,
    results: dict[str, dict],
    subset_answers: dict[str, list],
    s: Settings,
    *,
    load_s: float,
    connect_s: float,
) -> None:
    """Every question as a Python scan of the parsed document: its time, scaled to N, the speedups, and
    whether its answer equals DuckDB's on the subset."""
    scale = s.scale
    for q in QUESTIONS:
        med, times, answer = _median_time(lambda q=q, doc=doc: q.python(doc), s.repeats)
        r = results[q.name]
        agree = _same(answer, subset_answers[q.name])
        py_full = med * scale
        r.update(
            {
                "python_scan_subset_s": med,
                "python_scan_subset_runs_s": times,
                "python_scan_s": py_full,
                "python_scan_extrapolated": scale != 1.0,
                "speedup_scan_only": py_full / r["duckdb_s"],
                "speedup_incl_load": (load_s * scale + py_full) / (connect_s + r["duckdb_s"]),
                "speedup_same_size_subset": med / r["duckdb_subset_s"],
                "answers_agree_on_subset": agree,
            }
        )
        _log(
            f"python {q.name}: {med * 1000:.0f} ms on {s.json_images:,} images -> x{r['speedup_scan_only']:.0f} "
            f"(agree={agree})"
        )


# ----------------------------------------------------------------------------- the report

SPEEDUP_DEFINITIONS = {
    "speedup_incl_load": "(json.load + Python scan, both at N) / (DuckDB connect + query): what it costs "
    "to answer one question from the JSON file vs from the warehouse",
    "speedup_scan_only": "Python scan at N / DuckDB query: the JSON already parsed in memory (needs "
    "coco_json.parsed_rss_bytes_at_n of RAM) vs DuckDB reading Parquet",
    "speedup_same_size_subset": "Python scan / DuckDB with an image_id filter, both on the JSON subset "
    "(measured, nothing scaled; DuckDB still opens the full warehouse files)",
}


def report(
    s: Settings,
    *,
    written: Written,
    per_table: dict[str, dict],
    coco: CocoJson,
    duckdb: dict,
    results: dict[str, dict],
    alternatives: dict,
    load_before: tuple[float, float, float],
    peak_rss: dict[str, int],
    kept: dict | None,
) -> dict:
    """The content of warehouse.json."""
    images = s.images
    wh_bytes = sum(t["bytes"] for t in per_table.values())
    return {
        "benchmark": "warehouse",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_1_5_15min": {
            "before_queries": load_before,
            "after_python_scans": os.getloadavg(),
            "note": "other processes share these CPUs; a 1-min load above the CPU "
            "count means the timings were contended",
        },
        "images": images,
        "chunk_images": s.chunk_images,
        "seed": s.seed,
        "repeats": s.repeats,
        "timing_method": f"one warm-up then the median of {s.repeats} runs per query; files in the page cache "
        "(just written); DuckDB with its default threads on one connection over the "
        "warehouse views; Python answers from the json.load-ed document",
        "generated": _report_generated(written, images),
        "warehouse": {
            "bytes": wh_bytes,
            "bytes_per_image": wh_bytes / images,
            "tables": per_table,
            "compression": "zstd parquet, one compacted file per table partition",
        },
        "coco_json": _report_coco_json(coco, s.scale),
        "size_ratio_json_over_warehouse": (coco.bytes / coco.images) / (wh_bytes / images),
        "duckdb": duckdb,
        "queries": results,
        "alternatives": alternatives,
        "extrapolated": _report_extrapolated(s),
        "goals": _report_goals(results),
        "speedup_definitions": SPEEDUP_DEFINITIONS,
        "peak_rss_bytes": _peak_rss(),
        "peak_rss_bytes_by_end_of_phase": peak_rss,
        "kept": kept,
    }


def _report_generated(written: Written, images: int) -> dict:
    rows = written.rows
    return {
        "rows": dict(rows),
        "per_image": {
            t: rows.get(t, 0) / images
            for t in ("detections", "segments", "relations", "ocr", "aux_text", "errors")
        },
        "generate_s": written.generate_s,
        "commit_s": written.commit_s,
        "compact_s": written.compact_s,
        "write_total_s": written.write_s,
        "images_per_s": images / written.write_s,
    }


def _report_coco_json(coco: CocoJson, scale: float) -> dict:
    return {
        "images": coco.images,
        "bytes": coco.bytes,
        "bytes_per_image": coco.bytes / coco.images,
        "write_s": coco.write_s,
        "load_s": coco.load_s,
        "load_runs_s": coco.load_runs_s,
        "load_method": "median of 3 json.load calls; no separate warm-up load, the file is in the page "
        "cache because it was just written",
        "load_s_at_n": coco.load_s * scale,
        "parsed_rss_bytes": coco.parsed_rss_bytes,  # approximate: RSS growth of this process across the loads
        "parsed_rss_bytes_at_n": coco.parsed_rss_bytes * scale,
        "layout": "one JSON document: info (expert provenance once), categories, images, annotations "
        "(COCO results: image_id, category_id, bbox xywh, score), segments (COCO RLE), "
        "relations, ocr, aux_text, errors; per-row run_id/model/config_hash are not repeated",
    }


def _report_extrapolated(s: Settings) -> dict:
    scale = s.scale
    return {
        "python_times": scale != 1.0,
        "how": (
            f"the COCO JSON holds only the first {s.json_images:,} of {s.images:,} images; json.load and "
            f"the Python scans were timed on it and multiplied by {scale:g} (linear scaling); "
            "DuckDB times are measured on all images. Answers were compared on the subset "
            "(DuckDB with an image_id filter vs the Python scan)."
            if scale != 1.0
            else "nothing: the JSON holds all images"
        ),
        "json_bytes_per_image": "measured on the subset" if scale != 1.0 else "measured on all images",
    }


def _report_goals(results: dict[str, dict]) -> dict:
    return {
        "query_latency_s": 1.0,
        "speedup": 50,
        "all_queries_under_goal": all(r["duckdb_s"] < 1.0 for r in results.values()),
        "queries_over_latency_goal": [n for n, r in results.items() if r["duckdb_s"] >= 1.0],
        "all_speedups_incl_load_at_goal": all(r["speedup_incl_load"] >= 50 for r in results.values()),
        "all_speedups_scan_only_at_goal": all(r["speedup_scan_only"] >= 50 for r in results.values()),
        "all_answers_agree": all(r["answers_agree_on_subset"] for r in results.values()),
    }


def summary(result: dict) -> str:
    n, m = result["images"], result["coco_json"]["images"]
    lines = [
        f"warehouse benchmark: {n:,} images (Python scans on {m:,} images"
        + (f", scaled x{n / m:g})" if n != m else ")"),
        f"  write {result['generated']['write_total_s']:.0f}s  warehouse {result['warehouse']['bytes_per_image']:.0f} "
        f"B/image  COCO JSON {result['coco_json']['bytes_per_image']:.0f} B/image  "
        f"json.load {result['coco_json']['load_s_at_n']:.1f}s at N",
        f"  {'query':<20}{'duckdb ms':>10}{'fresh ms':>9}{'python s':>10}{'x scan':>8}{'x +load':>9}  agree",
    ]
    for name, r in result["queries"].items():
        lines.append(
            f"  {name:<20}{r['duckdb_s'] * 1000:>10.1f}{r['duckdb_fresh_connection_s'] * 1000:>9.1f}"
            f"{r['python_scan_s']:>10.2f}{r['speedup_scan_only']:>8.0f}{r['speedup_incl_load']:>9.0f}"
            f"  {r['answers_agree_on_subset']}"
        )
    lines.append(f"  peak RSS {result['peak_rss_bytes'] / 2**30:.1f} GiB")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- measuring


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float], object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def _column_bytes(files: list[Path], column: str) -> int:
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                if meta.row_group(g).column(c).path_in_schema == column:
                    total += meta.row_group(g).column(c).total_compressed_size
    return total


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss() -> int:
    """Resident set size of this process now, in bytes (Linux; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover
        return 0


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # pragma: no cover
        return "?"


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus_visible": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "duckdb": _version("duckdb"),
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
    }


def _log(msg: str) -> None:
    print(f"[bench warehouse] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.warehouse", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument(
        "--json-images",
        type=int,
        default=JSON_IMAGES,
        help="images in the COCO JSON the Python scans read (times are scaled to --images)",
    )
    parser.add_argument("--chunk", type=int, default=CHUNK_IMAGES, help="images per warehouse commit")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per query (median; >= 3)")
    parser.add_argument("--keep", action="store_true", help="keep the warehouse and the JSON under --out")
    args = parser.parse_args(argv)
    result = run(
        args.images,
        args.out,
        json_images=args.json_images,
        chunk_images=args.chunk,
        repeats=args.repeats,
        keep=args.keep,
    )
    print(summary(result))
    print(f"-> {Path(args.out) / 'warehouse.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
