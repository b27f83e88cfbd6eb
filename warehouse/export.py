"""`moai export-coco`: the warehouse as COCO files that pycocotools and panopticapi load.

    DIR/instances.json      COCO instances (ground-truth form): info, licenses, images, categories, one
                            annotation per labeled SAM segment (RLE); no scores, as ground truth has none
    DIR/segmentations.json  COCO results format of the same segments, with SAM's scores:
                            [{image_id, category_id, segmentation, bbox, area, score}] (`COCO.loadRes`)
    DIR/detections.json     COCO results format of the detector: [{image_id, category_id, bbox, score}]
    DIR/panoptic.json       COCO panoptic: info, licenses, images, annotations with segments_info,
                            categories (isthing)
    DIR/panoptic/*.png      id = R + 256·G + 256²·B per pixel

SAM regions no detector labeled (`category_id` 0 in the warehouse) are, in the panoptic export,
`unlabeled="void"` (default): pixels 0, which panoptic consumers ignore, and the categories are the 80
COCO things only (panopticapi's `pq_compute` then has no stuff category and divides by zero on its
"Stuff" row), or `unlabeled="stuff"`: one segment per image of the stuff category
`UNLABELED_STUFF` (id 201, `isthing` 0) covering all of that image's unlabeled regions, as a stuff
class is one segment per image in COCO panoptic.

For each expert the export uses one config: by default the one of its most recent run for the
dataset (`config_hash` columns let analysts pick any other).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from annotators.masks import panoptic_png, segment_map_from_records, segments_info
from core.errors import UserError
from corpora.coco_categories import COCO_CATEGORIES, coco_categories_json
from warehouse.current import current_records
from warehouse.store import Warehouse

LABEL_TO_COCO_ID = {name: cid for cid, name, _ in COCO_CATEGORIES}
# COCO panoptic's own ids stop at 200 (things 1-90, stuff 92-200): 201 names no COCO category.
UNLABELED_STUFF = {"id": 201, "name": "unlabeled", "supercategory": "unlabeled", "isthing": 0}
UNLABELED_CHOICES = ("void", "stuff")


def export_coco(wh: Warehouse, dataset: str, out: Path, unlabeled: str = "void") -> dict[str, int]:
    from PIL import Image

    if unlabeled not in UNLABELED_CHOICES:
        raise UserError(f"unlabeled must be one of {', '.join(UNLABELED_CHOICES)}, not {unlabeled!r}")
    images = wh.query(
        "SELECT image_id, file_name, width, height FROM images WHERE dataset = ? ORDER BY image_id",
        [dataset],
    ).to_pylist()
    if not images:
        raise UserError(
            f"The warehouse at {wh.root} has no images for dataset '{dataset}'; annotate it first."
        )
    out.mkdir(parents=True, exist_ok=True)
    image_entries = [
        {"id": i["image_id"], "file_name": i["file_name"], "width": i["width"], "height": i["height"]}
        for i in images
    ]
    size = {i["image_id"]: (i["height"], i["width"]) for i in images}
    categories = coco_categories_json()
    header = {
        "info": {
            "description": f"moai-forge export of dataset '{dataset}' (expert predictions, not human labels)",
            "url": "",
            "version": "1.0",
            "year": int(time.strftime("%Y", time.gmtime())),
            "contributor": "moai-forge",
            "date_created": time.strftime("%Y/%m/%d", time.gmtime()),
        },
        "licenses": [],
    }

    by_image = current_records(wh, dataset, "segmentation")
    annotations, segment_results = [], []
    for image_id, records in sorted(by_image.items()):
        for record in records:
            if record["isthing"] and record["category_id"] > 0:
                shape = {
                    "image_id": image_id,
                    "category_id": record["category_id"],
                    "segmentation": record["rle"],
                    "area": record["area"],
                    "bbox": record["bbox"],
                }
                annotations.append({"id": len(annotations) + 1, **shape, "iscrowd": 0})
                segment_results.append({**shape, "score": round(record["score"], 5)})
    _write(
        out / "instances.json",
        {**header, "images": image_entries, "annotations": annotations, "categories": categories},
    )
    _write(out / "segmentations.json", segment_results)

    results, skipped = [], 0
    for image_id, records in sorted(current_records(wh, dataset, "detection").items()):
        for record in records:
            category = LABEL_TO_COCO_ID.get(record["label"])
            if category is None:
                skipped += 1  # a label outside COCO's 80 (open-vocabulary or custom models)
                continue
            x1, y1, x2, y2 = record["box"]
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "score": round(record["score"], 5),
                    "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                }
            )
    _write(out / "detections.json", results)

    png_dir = out / "panoptic"
    png_dir.mkdir(exist_ok=True)
    panoptic, stuff_segments = [], 0
    for image in image_entries:
        h, w = size[image["id"]]
        pixels, info = _panoptic(by_image.get(image["id"], []), h, w, unlabeled)
        stuff_segments += sum(1 for s in info if s["category_id"] == UNLABELED_STUFF["id"])
        name = f"{Path(image['file_name']).stem}.png"
        Image.fromarray(pixels).save(png_dir / name)
        panoptic.append({"image_id": image["id"], "file_name": name, "segments_info": info})
    panoptic_categories = [{**c, "isthing": 1} for c in categories]
    if unlabeled == "stuff":
        panoptic_categories.append(dict(UNLABELED_STUFF))
    _write(
        out / "panoptic.json",
        {**header, "images": image_entries, "annotations": panoptic, "categories": panoptic_categories},
    )
    return {
        "images": len(image_entries),
        "instances": len(annotations),
        "detections": len(results),
        "detections_skipped": skipped,
        "panoptic_pngs": len(panoptic),
        "panoptic_stuff_segments": stuff_segments,
    }


def _panoptic(records: list[dict], height: int, width: int, unlabeled: str) -> tuple[np.ndarray, list[dict]]:
    """One image's panoptic PNG pixels and segments_info, consistent with each other: every id in the
    PNG is listed and every listed segment's area is its pixel count."""
    segment_map = segment_map_from_records(records, height, width)
    things = [r for r in records if r["category_id"] > 0]
    unlabeled_ids = [int(r["segment_id"]) for r in records if r["category_id"] <= 0]
    info = segments_info(things)
    stuff = np.isin(segment_map, unlabeled_ids) if unlabeled_ids else np.zeros_like(segment_map, bool)
    if unlabeled == "void" or not stuff.any():
        segment_map[stuff] = 0
    else:  # one stuff segment per image, under the smallest unlabeled id (ids stay unique)
        stuff_id = min(unlabeled_ids)
        segment_map[stuff] = stuff_id
        ys, xs = np.nonzero(stuff)
        x0, y0 = int(xs.min()), int(ys.min())
        box = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
        info.append(
            {
                "id": stuff_id,
                "category_id": UNLABELED_STUFF["id"],
                "iscrowd": 0,
                "bbox": box,
                "area": int(stuff.sum()),
            }
        )
    return panoptic_png(segment_map), info


def _write(path: Path, document) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document), encoding="utf-8")
    tmp.replace(path)
