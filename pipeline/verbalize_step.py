"""The pipeline's verbalize step: a finished row's records → the `aux_text` columns."""

from __future__ import annotations

import json
from typing import Any

from annotators.base import EXPERT_NAMES
from annotators.verbalize import VerbalizeConfig, verbalize


def verbalizer_hash(params: dict[str, Any] | None) -> str:
    return VerbalizeConfig.from_mapping(params).config_hash()


def verbalize_row(row: dict, params: dict[str, Any] | None) -> dict[str, str]:
    records = {name: json.loads(row[f"{name}_records"] or "[]") for name in EXPERT_NAMES}
    return verbalize(records, row["width"], row["height"], VerbalizeConfig.from_mapping(params)).columns()
