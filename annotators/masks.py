"""Mask utilities shared by the segmentation expert and the exporters.

Everything here is plain numpy + pycocotools, so exporters (`moai export coco`) and analysts can
use it without loading a model:

- COCO RLE encode/decode (`counts` stored as `str`, so records stay JSON-able);
- painting ranked masks into ONE non-overlapping segment map (0 = void, 1..N = segments);
- rebuilding that map from stored records (`segment_map_from_records`);
- COCO panoptic export: `panoptic_png` (id = R + 256*G + 256^2*B), `ids_from_panoptic_png`
  and `segments_info`, which round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from annotators.base import field_of

# ----------------------------------------------------------------------------- COCO RLE


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a HxW boolean mask, with `counts` as str (JSON/Parquet friendly)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _coco_rle(rle: Mapping[str, Any]) -> dict:
    """pycocotools wants `counts` as bytes; stored records hold str."""
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """HxW boolean mask of a COCO RLE (str or bytes counts)."""
    return mask_utils.decode(_coco_rle(rle)).astype(bool)


def rle_area(rle: Mapping[str, Any]) -> int:
    return int(mask_utils.area(_coco_rle(rle)))


def rle_bbox(rle: Mapping[str, Any]) -> list[float]:
    """[x, y, w, h] in the COCO convention (w = x_max - x_min + 1); zeros for an empty mask."""
    return [float(v) for v in mask_utils.toBbox(_coco_rle(rle))]


# ----------------------------------------------------------------------------- boxes and NMS


def mask_box_xyxy(mask: np.ndarray) -> np.ndarray:
    """[x1, y1, x2, y2] (x2/y2 exclusive) enclosing a non-empty mask, as float32."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(4, np.float32)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS as torchvision.ops.nms: indices kept, by decreasing score; IoU > threshold suppresses.
    The one NMS of the project: detectors use it per class, SAM's mask generator on mask boxes."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[position + 1 :]
        rest = rest[~suppressed[rest]]
        width = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(min=0)
        height = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(min=0)
        inter = width * height
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, np.finfo(np.float32).tiny)
        suppressed[rest[iou > iou_threshold]] = True
    return np.asarray(keep, dtype=np.int64)


# ----------------------------------------------------------------------------- segment maps


def paint_segment_map(
    masks: Iterable[np.ndarray], height: int, width: int, min_area: int = 0
) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
    """Paint ranked masks into one non-overlapping int32 map: each mask only gets pixels no
    earlier mask took, and a leftover smaller than `min_area` (or empty) is dropped.

    Returns the map (0 = void, ids 1..N in painting order), the input index of each kept mask and
    its final (leftover) pixels.
    """
    segment_map = np.zeros((height, width), np.int32)
    kept: list[int] = []
    finals: list[np.ndarray] = []
    for index, mask in enumerate(masks):
        free = mask & (segment_map == 0)
        area = int(free.sum())
        if area == 0 or area < min_area:
            continue
        kept.append(index)
        finals.append(free)
        segment_map[free] = len(kept)
    return segment_map, kept, finals


def segment_map_from_records(records: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Rebuild the int32 segment map (0 = void) from stored records' RLEs and segment ids."""
    segment_map = np.zeros((height, width), np.int32)
    for record in records:
        rle = field_of(record, "rle")
        if list(rle["size"]) != [height, width]:
            raise ValueError(
                f"segment {field_of(record, 'segment_id')} has RLE size {rle['size']}, "
                f"not the image's {[height, width]}"
            )
        segment_map[decode_rle(rle)] = int(field_of(record, "segment_id"))
    return segment_map


# ----------------------------------------------------------------------------- COCO panoptic


def panoptic_png(segment_map: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB image of a segment map in COCO panoptic encoding: id = R + 256*G + 256^2*B."""
    ids = np.asarray(segment_map, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError("segment ids must lie in [0, 256^3) for a COCO panoptic PNG")
    return np.stack([ids % 256, (ids // 256) % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def ids_from_panoptic_png(png: np.ndarray) -> np.ndarray:
    """The inverse of `panoptic_png` (panopticapi's rgb2id): HxWx3 RGB → int32 segment ids."""
    rgb = np.asarray(png, dtype=np.int64)
    return (rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]).astype(np.int32)


def segments_info(records: Sequence[Any], include_unlabeled: bool = True) -> list[dict]:
    """`segments_info` entries of a COCO panoptic annotation, one per record.

    Unlabeled regions carry category_id 0, which no COCO panoptic category has; pass
    `include_unlabeled=False` (and void those pixels, see `panoptic_annotation`) for strict
    COCO-panoptic consumers.
    """
    info = []
    for record in records:
        if not include_unlabeled and int(field_of(record, "category_id")) == 0:
            continue
        info.append(
            {
                "id": int(field_of(record, "segment_id")),
                "category_id": int(field_of(record, "category_id")),
                "iscrowd": 0,
                "bbox": [float(v) for v in field_of(record, "bbox")],
                "area": int(field_of(record, "area")),
            }
        )
    return info


def panoptic_annotation(
    records: Sequence[Any], height: int, width: int, include_unlabeled: bool = True
) -> tuple[np.ndarray, list[dict]]:
    """PNG pixels and segments_info for one image, consistent with each other: when unlabeled
    regions are excluded their pixels become void (0), so every id in the PNG is listed."""
    segment_map = segment_map_from_records(records, height, width)
    if not include_unlabeled:
        dropped = [int(field_of(r, "segment_id")) for r in records if int(field_of(r, "category_id")) == 0]
        segment_map[np.isin(segment_map, dropped)] = 0
    return panoptic_png(segment_map), segments_info(records, include_unlabeled)
