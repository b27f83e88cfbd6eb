"""Turn one finished pipeline row (an image with its experts' records) into warehouse table rows."""

from __future__ import annotations

import json
from typing import Any

from annotators.base import EXPERT_NAMES
from warehouse.schema import DECODE_KEY  # noqa: F401  (re-exported: the decode step's ledger key)


def _identity(row: dict, name: str, plan_hash: str) -> dict[str, Any]:
    ident = json.loads(row[f"{name}_identity"] or "{}")
    return {
        "dataset": row["dataset"],
        "image_id": row["image_id"],
        "run_id": row["run_id"],
        "model": ident.get("model", ""),
        "backend": ident.get("backend", ""),
        "weights_sha256": ident.get("weights_sha256", ""),
        "config_hash": plan_hash,
    }


def detection_rows(base: dict, records: list[dict]) -> list[dict]:
    return [
        {
            **base,
            "det_index": i,
            "label": r["label"],
            "class_id": r["class_id"],
            "score": r["score"],
            "x1": r["box"][0],
            "y1": r["box"][1],
            "x2": r["box"][2],
            "y2": r["box"][3],
        }
        for i, r in enumerate(records)
    ]


def segment_rows(base: dict, records: list[dict]) -> list[dict]:
    out = []
    for r in records:
        x, y, w, h = r["bbox"]
        out.append(
            {
                **base,
                "segment_id": r["segment_id"],
                "label": r["label"],
                "category_id": r["category_id"],
                "isthing": r["isthing"],
                "area": r["area"],
                "bbox_x": x,
                "bbox_y": y,
                "bbox_w": w,
                "bbox_h": h,
                "rle_counts": r["rle"]["counts"],
                "rle_height": r["rle"]["size"][0],
                "rle_width": r["rle"]["size"][1],
                "score": r["score"],
                "predicted_iou": r["predicted_iou"],
                "stability_score": r["stability_score"],
            }
        )
    return out


def relation_rows(base: dict, records: list[dict]) -> list[dict]:
    return [
        {**base, **{k: r[k] for k in ("subject_id", "subject", "predicate", "object_id", "object", "score")}}
        for r in records
    ]


def ocr_rows(base: dict, records: list[dict]) -> list[dict]:
    return [
        {**base, "line_index": i, "text": r["text"], "score": r["score"], "polygon": r["polygon"]}
        for i, r in enumerate(records)
    ]


ROW_BUILDERS = {
    "detection": ("detections", detection_rows),
    "segmentation": ("segments", segment_rows),
    "sgg": ("relations", relation_rows),
    "ocr": ("ocr", ocr_rows),
}


def records_from_table_row(name: str, row: dict) -> dict:
    """Inverse of the builders above: a stored table row back to the expert's record dict."""
    if name == "detection":
        return {
            "label": row["label"],
            "class_id": row["class_id"],
            "score": row["score"],
            "box": [row["x1"], row["y1"], row["x2"], row["y2"]],
        }
    if name == "segmentation":
        return {
            "segment_id": row["segment_id"],
            "label": row["label"],
            "category_id": row["category_id"],
            "isthing": row["isthing"],
            "area": row["area"],
            "bbox": [row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]],
            "rle": {"size": [row["rle_height"], row["rle_width"]], "counts": row["rle_counts"]},
            "score": row["score"],
            "predicted_iou": row["predicted_iou"],
            "stability_score": row["stability_score"],
        }
    if name == "sgg":
        return {k: row[k] for k in ("subject_id", "subject", "predicate", "object_id", "object", "score")}
    return {"text": row["text"], "score": row["score"], "polygon": row["polygon"]}


def error_row(row: dict, stage: str, reason: str, message: str, config_hash: str) -> dict:
    return {
        "dataset": row["dataset"],
        "split": row["split"],
        "image_id": row["image_id"],
        "file_name": row["file_name"],
        "stage": stage,
        "reason": reason,
        "message": message,
        "config_hash": config_hash,
        "run_id": row["run_id"],
    }


def done_row(row: dict, expert: str, config_hash: str, status: str, n: int = 0, seconds: float = 0.0) -> dict:
    return {
        "dataset": row["dataset"],
        "image_id": row["image_id"],
        "expert": expert,
        "config_hash": config_hash,
        "status": status,
        "n_records": n,
        "seconds": seconds,
        "run_id": row["run_id"],
    }


def image_row(row: dict) -> dict:
    return {
        k: row[k]
        for k in (
            "dataset",
            "split",
            "image_id",
            "file_name",
            "width",
            "height",
            "source_mode",
            "exif_rotated",
            "frames",
            "run_id",
        )
    }


def table_rows_for(row: dict, hashes: dict[str, str], decode_done: bool) -> dict[str, list[dict]]:
    """All warehouse rows one processed image contributes (aux text is added by the caller)."""
    tables: dict[str, list[dict]] = {"images": [], "errors": [], "done": []}
    if not decode_done:
        if row["decode_reason"]:
            tables["errors"].append(
                error_row(row, "decode", row["decode_reason"], row["decode_message"], DECODE_KEY)
            )
            tables["done"].append(done_row(row, "decode", DECODE_KEY, "error"))
            return tables
        tables["images"].append(image_row(row))
        tables["done"].append(done_row(row, "decode", DECODE_KEY, "ok"))
    if row["decode_reason"]:
        return tables
    for name in EXPERT_NAMES:
        if name not in row["todo"].split(","):
            continue
        table, build = ROW_BUILDERS[name]
        if row[f"{name}_error"]:
            reason = "upstream-failed" if row[f"{name}_error"].startswith("skipped:") else "expert-failed"
            tables["errors"].append(error_row(row, name, reason, row[f"{name}_error"], hashes[name]))
            tables["done"].append(done_row(row, name, hashes[name], "error", 0, row[f"{name}_seconds"]))
            continue
        records = json.loads(row[f"{name}_records"] or "[]")
        tables.setdefault(table, []).extend(build(_identity(row, name, hashes[name]), records))
        tables["done"].append(done_row(row, name, hashes[name], "ok", len(records), row[f"{name}_seconds"]))
    return tables


ORDER_COLUMN = {"detection": "det_index", "segmentation": "segment_id", "ocr": "line_index"}


def stored_records(wh, dataset: str, name: str, config_hash: str, image_ids=None) -> dict[int, list[dict]]:
    """Committed records of one expert config, grouped by image in their original order. With
    `image_ids`, only those images (each present in the result, possibly with no records)."""
    table = ROW_BUILDERS[name][0]
    rows = wh.query(
        f"SELECT * FROM {table} WHERE dataset = ? AND config_hash = ?", [dataset, config_hash]
    ).to_pylist()
    key = ORDER_COLUMN.get(name)
    out: dict[int, list[dict]] = {i: [] for i in image_ids} if image_ids is not None else {}
    for row in sorted(rows, key=lambda r: (r["image_id"], r[key] if key else 0)):
        if image_ids is None or row["image_id"] in out:
            out.setdefault(row["image_id"], []).append(records_from_table_row(name, row))
    return out


def latest_committed_config(wh, dataset: str, expert: str) -> str | None:
    """The config hash of the expert's newest committed work on `dataset`, from the `done` ledger: the
    one source of "current config" for re-verbalizing and exporting (a config may have produced no rows,
    so the newest *rows* can belong to an older config)."""
    rows = wh.query(
        "SELECT config_hash FROM done WHERE dataset = ? AND expert = ? ORDER BY run_id DESC LIMIT 1",
        [dataset, expert],
    ).to_pylist()
    return rows[0]["config_hash"] if rows else None
