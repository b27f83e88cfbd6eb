"""Turn one finished pipeline row (an image with its experts' records) into warehouse table rows."""

from __future__ import annotations

import json
from typing import Any

from annotators.registry import EXPERT_NAMES, expert_spec
from warehouse.schema import DECODE_KEY


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


def records_from_table_row(name: str, row: dict) -> dict:
    """A stored table row back to the expert's record dict (an unknown expert is an error)."""
    return expert_spec(name).from_columns(row)


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
        spec = expert_spec(name)
        if row[f"{name}_error"]:
            reason = "upstream-failed" if row[f"{name}_error"].startswith("skipped:") else "expert-failed"
            tables["errors"].append(error_row(row, name, reason, row[f"{name}_error"], hashes[name]))
            tables["done"].append(done_row(row, name, hashes[name], "error", 0, row[f"{name}_seconds"]))
            continue
        records = json.loads(row[f"{name}_records"] or "[]")
        base = _identity(row, name, hashes[name])
        tables.setdefault(spec.table, []).extend(
            {**base, **spec.to_columns(i, r)} for i, r in enumerate(records)
        )
        tables["done"].append(done_row(row, name, hashes[name], "ok", len(records), row[f"{name}_seconds"]))
    return tables
