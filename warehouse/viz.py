"""`moai viz`: draw one image's stored records (boxes, masks, relations, OCR polygons) to a PNG.

People use it to check the experts before trusting a run, so it reads exactly what was committed:
the latest config of each expert for that image, nothing recomputed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.corpus import resolve_corpus
from pipeline.decode import decode_image
from pipeline.errors import UserError
from warehouse.rows import ORDER_COLUMN, records_from_table_row
from warehouse.store import Warehouse

PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (0, 0, 128),
]


def _latest(wh: Warehouse, table: str, name: str, dataset: str, image_id: int) -> list[dict]:
    """Records of the most recent run that committed `table` rows for this image."""
    rows = wh.query(
        f"SELECT * FROM {table} WHERE dataset = ? AND image_id = ? AND run_id = "
        f"(SELECT max(run_id) FROM {table} WHERE dataset = ? AND image_id = ?)",
        [dataset, image_id, dataset, image_id],
    ).to_pylist()
    key = ORDER_COLUMN.get(name)
    rows.sort(key=lambda r: r[key] if key else 0)
    return [records_from_table_row(name, r) for r in rows]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - very old Pillow
        return ImageFont.load_default()


def render(
    image: np.ndarray,
    detections: list[dict],
    segments: list[dict],
    relations: list[dict],
    ocr: list[dict],
    min_score: float = 0.0,
):
    """Return a PIL image with every kind of record drawn on top of `image`."""
    from PIL import Image, ImageDraw
    from pycocotools import mask as mask_utils

    canvas = image.astype(np.float32).copy()
    for i, seg in enumerate(segments):
        rle = {"size": seg["rle"]["size"], "counts": seg["rle"]["counts"].encode("ascii")}
        mask = mask_utils.decode(rle).astype(bool)
        color = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        canvas[mask] = 0.55 * canvas[mask] + 0.45 * color
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    scale = max(image.shape[:2]) / 640
    font = _font(max(11, int(13 * scale)))
    width = max(2, int(2 * scale))

    centers = {}
    for seg in segments:
        x, y, w, h = seg["bbox"]
        centers[seg["segment_id"]] = (x + w / 2, y + h / 2)
        if seg["isthing"]:
            draw.text((x + 3, y + h - 16 * scale), f"#{seg['segment_id']}", fill=(255, 255, 255), font=font)
    for i, det in enumerate(d for d in detections if d["score"] >= min_score):
        color = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = det["box"]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        label = f"{det['label']} {det['score']:.2f}"
        box = draw.textbbox((x1, y1), label, font=font)
        draw.rectangle([box[0], box[1] - 1, box[2] + 2, box[3] + 1], fill=color)
        draw.text((x1 + 1, y1), label, fill=(0, 0, 0), font=font)
    for rel in relations:
        a, b = centers.get(rel["subject_id"]), centers.get(rel["object_id"])
        if a is None or b is None:
            continue
        draw.line([a, b], fill=(255, 255, 0), width=width)
        v = np.subtract(b, a)
        n = np.linalg.norm(v) or 1.0
        tip = np.array(b) - v / n * 4
        left = tip - v / n * 10 * scale + np.array([-v[1], v[0]]) / n * 5 * scale
        right = tip - v / n * 10 * scale - np.array([-v[1], v[0]]) / n * 5 * scale
        draw.polygon([tuple(tip), tuple(left), tuple(right)], fill=(255, 255, 0))
        mid = (np.array(a) + np.array(b)) / 2
        draw.text(
            tuple(mid), rel["predicate"], fill=(255, 255, 0), font=font, stroke_width=1, stroke_fill=(0, 0, 0)
        )
    for line in ocr:
        polygon = [tuple(p) for p in line["polygon"]]
        if len(polygon) >= 3:
            draw.polygon(polygon, outline=(0, 255, 255), width=width)
            draw.text(
                (polygon[0][0], polygon[0][1] - 14 * scale),
                line["text"],
                fill=(0, 255, 255),
                font=font,
                stroke_width=1,
                stroke_fill=(0, 0, 0),
            )
    return out


def viz(dataset: str, image: str, out: Path | None, warehouse: str | Path, min_score: float = 0.3) -> Path:
    wh = Warehouse(warehouse)
    corpus = resolve_corpus(dataset)
    ref = next(
        (
            r
            for r in corpus.images()
            if r.file_name == image or str(r.image_id) == image or Path(r.file_name).stem == image
        ),
        None,
    )
    if ref is None:
        raise UserError(f"No image '{image}' in dataset '{dataset}' (give a file name, stem or image id).")
    records = {
        name: _latest(wh, table, name, dataset, ref.image_id)
        for name, table in (
            ("detection", "detections"),
            ("segmentation", "segments"),
            ("sgg", "relations"),
            ("ocr", "ocr"),
        )
    }
    if not any(records.values()):
        raise UserError(
            f"The warehouse at {wh.root} holds no records for {dataset}/{ref.file_name}; "
            f"run `make annotate DATASET={dataset}` first."
        )
    picture = render(
        decode_image(ref.path).image,
        records["detection"],
        records["segmentation"],
        records["sgg"],
        records["ocr"],
        min_score=min_score,
    )
    out = out or Path("outputs") / "viz" / dataset / f"{Path(ref.file_name).stem}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return out
