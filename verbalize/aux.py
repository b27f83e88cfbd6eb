"""The aux text of one image as warehouse rows: its text columns, its key, and its ledger row.

The aux row's key is (image_id, "aux", aux_hash(verbalizer thresholds, the experts' plan hashes)), so
the same records verbalized with the same thresholds are one row, whoever writes them (the annotation
job or `moai verbalize`).
"""

from __future__ import annotations

import json
from typing import Any

from annotators.registry import EXPERT_NAMES
from core.hashing import config_hash
from verbalize.moai import VerbalizeConfig, verbalize


def verbalizer_hash(params: dict[str, Any] | None) -> str:
    return VerbalizeConfig.from_mapping(params).config_hash()


def aux_hash(verbalizer: str, hashes: dict[str, str]) -> str:
    """The aux text's config part of its key: the verbalizer's and each contributing expert's hash."""
    return config_hash({"verbalizer": verbalizer, "experts": hashes})


def verbalize_row(row: dict, params: dict[str, Any] | None) -> dict[str, str]:
    records = {name: json.loads(row[f"{name}_records"] or "[]") for name in EXPERT_NAMES}
    return verbalize(records, row["width"], row["height"], VerbalizeConfig.from_mapping(params)).columns()


def aux_rows(
    dataset: str,
    image_id: int,
    run_id: str,
    text: dict[str, str],
    verbalizer: str,
    key: str,
    random_init: bool,
) -> tuple[dict, dict]:
    """(the `aux_text` row, its `done` ledger row) for one image."""
    aux = {
        "dataset": dataset,
        "image_id": image_id,
        "run_id": run_id,
        **text,
        "verbalizer_hash": verbalizer,
        "config_hash": key,
        "random_init": random_init,
    }
    done = {
        "dataset": dataset,
        "image_id": image_id,
        "expert": "aux",
        "config_hash": key,
        "status": "ok",
        "n_records": 1,
        "seconds": 0.0,
        "run_id": run_id,
    }
    return aux, done
