"""`moai export coco`: the warehouse as COCO files that pycocotools and panopticapi load.

    DIR/instances.json     COCO instances: images, categories, one annotation per thing segment (RLE)
    DIR/detections.json    COCO results format: [{image_id, category_id, bbox, score}]
    DIR/panoptic.json      COCO panoptic: annotations with segments_info + categories (isthing)
    DIR/panoptic/*.png     id = R + 256·G + 256²·B per pixel

For each expert the export uses one config: by default the one of its most recent run for the
dataset (`config_hash` columns let analysts pick any other).
"""

from __future__ import annotations

import json
from pathlib import Path

from annotators.masks import panoptic_annotation
from core.errors import UserError
from corpora.coco_categories import COCO_CATEGORIES, coco_categories_json
from warehouse.current import current_records
from warehouse.store import Warehouse

LABEL_TO_COCO_ID = {name: cid for cid, name, _ in COCO_CATEGORIES}


def export_coco(wh: Warehouse, dataset: str, out: Path) -> dict[str, int]:
    from PIL import Image

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

    by_image = current_records(wh, dataset, "segmentation")
    annotations = []
    for image_id, records in sorted(by_image.items()):
        for record in records:
            if record["isthing"] and record["category_id"] > 0:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": record["category_id"],
                        "segmentation": record["rle"],
                        "area": record["area"],
                        "bbox": record["bbox"],
                        "iscrowd": 0,
                        "score": record["score"],
                    }
                )
    _write(
        out / "instances.json",
        {"images": image_entries, "annotations": annotations, "categories": categories},
    )

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
    panoptic = []
    for image in image_entries:
        h, w = size[image["id"]]
        pixels, info = panoptic_annotation(by_image.get(image["id"], []), h, w, include_unlabeled=False)
        name = f"{Path(image['file_name']).stem}.png"
        Image.fromarray(pixels).save(png_dir / name)
        panoptic.append({"image_id": image["id"], "file_name": name, "segments_info": info})
    panoptic_categories = [{**c, "isthing": 1} for c in categories]
    _write(
        out / "panoptic.json",
        {"images": image_entries, "annotations": panoptic, "categories": panoptic_categories},
    )
    return {
        "images": len(image_entries),
        "instances": len(annotations),
        "detections": len(results),
        "detections_skipped": skipped,
        "panoptic_pngs": len(panoptic),
    }


def _write(path: Path, document) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document), encoding="utf-8")
    tmp.replace(path)
