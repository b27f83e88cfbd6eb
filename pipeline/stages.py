"""The pipeline's stages as plain functions over rows (one dict per image).

Both executors (in-process `local` and Ray Data) run exactly these functions, so they produce the
same rows. Every row has a fixed set of typed fields (no None), which keeps Arrow schemas stable
between Ray blocks:

    dataset, split, image_id, file_name, path, todo ("detection,segmentation,..."),
    pixels (HxWx3 uint8 bytes), width, height, source_mode, exif_rotated, frames,
    decode_reason, decode_message,
    <expert>_records (JSON list), <expert>_error, <expert>_seconds, <expert>_identity (JSON)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np

from annotators.base import ImageInput
from annotators.registry import EXPERT_NAMES, EXPERTS
from corpora.decode import DecodeError, decode_image


def new_row(ref, todo: list[str], stored: dict[str, list[dict]] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "dataset": ref.dataset,
        "split": ref.split,
        "image_id": int(ref.image_id),
        "file_name": ref.file_name,
        "path": str(ref.path),
        "todo": ",".join(todo),
        "pixels": b"",
        "width": 0,
        "height": 0,
        "source_mode": "",
        "exif_rotated": False,
        "frames": 0,
        "decode_reason": "",
        "decode_message": "",
    }
    for name in EXPERT_NAMES:
        records = (stored or {}).get(name)
        row[f"{name}_records"] = json.dumps(records) if records is not None else ""
        row[f"{name}_error"] = ""
        row[f"{name}_seconds"] = 0.0
        row[f"{name}_identity"] = ""
    return row


def decode_rows(rows: list[dict]) -> list[dict]:
    for row in rows:
        try:
            decoded = decode_image(row["path"])
        except DecodeError as err:
            row["decode_reason"], row["decode_message"] = err.reason, err.message
            continue
        except Exception as err:  # anything unexpected is still data, never a crash
            row["decode_reason"], row["decode_message"] = "decode-failed", f"{type(err).__name__}: {err}"
            continue
        image = decoded.image
        row.update(
            pixels=image.tobytes(),
            height=int(image.shape[0]),
            width=int(image.shape[1]),
            source_mode=decoded.source_mode,
            exif_rotated=bool(decoded.exif_rotated),
            frames=int(decoded.frames),
        )
    return rows


def row_image(row: dict) -> np.ndarray:
    return np.frombuffer(row["pixels"], dtype=np.uint8).reshape(row["height"], row["width"], 3)


def records_from_json(name: str, text: str) -> list:
    if not text:
        return []
    cls = EXPERTS[name].record
    return [cls(**item) for item in json.loads(text)]


class ExpertStage:
    """Runs one expert over the rows that still need it. Loaded once per worker (actor)."""

    def __init__(self, name: str, config: dict, batch_size: int = 4):
        self.name = name
        self.batch_size = batch_size
        self.spec = EXPERTS[name]
        self.expert = self.spec.build(config)
        self.expert.load()
        identity = self.expert.identity
        self.identity_json = json.dumps(
            {"model": identity.model, "backend": identity.backend, "weights_sha256": identity.weights_sha256}
        )

    def __call__(self, rows: list[dict]) -> list[dict]:
        work = []
        for row in rows:
            if self.name not in row["todo"].split(",") or row["decode_reason"]:
                continue
            failed = [u for u in self.spec.upstream if row[f"{u}_error"]]
            if failed:
                row[f"{self.name}_error"] = f"skipped: upstream expert {failed[0]} failed on this image"
                continue
            work.append(row)
        for start in range(0, len(work), self.batch_size):
            chunk = work[start : start + self.batch_size]
            inputs = [
                ImageInput(
                    row["image_id"],
                    row_image(row),
                    {u: records_from_json(u, row[f"{u}_records"]) for u in self.spec.upstream},
                )
                for row in chunk
            ]
            for row, output in zip(chunk, self.expert(inputs), strict=True):
                row[f"{self.name}_identity"] = self.identity_json
                row[f"{self.name}_seconds"] = float(output.seconds)
                if output.ok:
                    row[f"{self.name}_records"] = json.dumps([asdict(r) for r in output.records])
                else:
                    row[f"{self.name}_error"] = output.error or "unknown error"
        return rows
