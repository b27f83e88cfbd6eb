"""`moai viz`: draw one image's stored records (boxes, masks, relations, OCR polygons) to a PNG.

People use it to check the experts before trusting a run, so it reads exactly what was committed:
each expert's current records for that image (warehouse/current.py), nothing recomputed. Experts
without a drawing below (a new expert, say) are listed in the warehouse but not drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from annotators.masks import decode_rle
from annotators.registry import EXPERT_NAMES
from core.errors import UserError
from corpora.decode import decode_image
from corpora.layout import find_image
from corpora.resolve import resolve_corpus
from warehouse.current import current_records
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

    canvas = image.astype(np.float32).copy()
    for i, seg in enumerate(segments):
        mask = decode_rle(seg["rle"])
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
    ref = find_image(resolve_corpus(dataset), image)
    # the image's current records of every expert (warehouse/current.py): what export and the trainer see
    records = {
        name: current_records(wh, dataset, name, [ref.image_id])[ref.image_id] for name in EXPERT_NAMES
    }
    if not any(records.values()):
        raise UserError(
            f"The warehouse at {wh.root} holds no records for {dataset}/{ref.file_name}; "
            f"run `make annotate DATASET={dataset}` first."
        )
    picture = render(
        decode_image(ref.path).image,
        records.get("detection", []),
        records.get("segmentation", []),
        records.get("sgg", []),
        records.get("ocr", []),
        min_score=min_score,
    )
    out = out or Path("outputs") / "viz" / dataset / f"{Path(ref.file_name).stem}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return out
