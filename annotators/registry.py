"""One row per expert: everything planning, the stages, the warehouse rows and schema, and `moai viz`
need to know about an expert, read from here and nowhere else.

A new expert is one new file plus one row in `EXPERTS`. Its file holds the `Expert` subclass and its
builder, its record type, and these module-level facts (see annotators/detection.py for one):

    DEFAULT_BACKEND, BACKEND_KEYS      the backend used when a profile names none; each backend's keys
    TABLE, COLUMNS                     its warehouse table and the columns after the identity columns
    to_columns(index, record) -> dict  one record (as a dict) -> one table row
    from_columns(row) -> dict          and back
    MEMORY_MB (optional)               by backend: what one worker needs (Ray reserves it per actor)
    COST_MS (optional)                 by backend: model ms per image with one thread (sizes actor pools)

Rows are in dependency order: an expert comes after the experts it reads (`upstream`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from annotators import detection, ocr, segmentation, sgg
from annotators.base import Detection, Expert, Relation, Segment, TextLine


@dataclass(frozen=True)
class ExpertSpec:
    name: str  # the profile key, the ledger's `expert`, the pipeline row's column prefix
    module: ModuleType  # the expert's file
    build: Callable[[Mapping[str, Any]], Expert]
    record: type  # what the expert returns per finding
    upstream: tuple[str, ...] = ()  # experts whose records it reads (and whose config is in its key)
    order_column: str | None = None  # keeps an image's records in their original order in the table

    @property
    def table(self) -> str:
        return self.module.TABLE

    @property
    def columns(self) -> list:
        return self.module.COLUMNS

    @property
    def default_backend(self) -> str:
        return self.module.DEFAULT_BACKEND

    @property
    def backend_keys(self) -> dict[str, frozenset[str] | None]:
        return self.module.BACKEND_KEYS

    def memory_mb(self, config: Mapping[str, Any]) -> int:
        """Memory one worker of this expert needs with this config (its file's optional MEMORY_MB, by
        backend: measured peaks plus a margin); 0 when unknown."""
        table = getattr(self.module, "MEMORY_MB", {})
        return int(table.get(str(config.get("backend", self.default_backend)), 0))

    def cost_ms(self, config: Mapping[str, Any]) -> float:
        """Model time per image with one thread (its file's optional COST_MS, by backend; 1000 when
        unknown): how a job shares cores between experts before this warehouse has their history."""
        table = getattr(self.module, "COST_MS", {})
        return float(table.get(str(config.get("backend", self.default_backend)), 1000))

    def reads_threads(self, config: Mapping[str, Any]) -> bool:
        """Whether this backend's config takes `threads` (its intra-op thread count)."""
        keys = self.backend_keys.get(str(config.get("backend", self.default_backend)))
        return keys is not None and "threads" in keys

    def to_columns(self, index: int, record: Mapping[str, Any]) -> dict[str, Any]:
        return self.module.to_columns(index, record)

    def from_columns(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self.module.from_columns(row)

    def version(self) -> str:
        """The code version of every Expert class the file defines for this expert (part of its key)."""
        classes = {
            str(v.version)
            for v in vars(self.module).values()
            if isinstance(v, type) and issubclass(v, Expert) and v.name == self.name
        }
        return ",".join(sorted(classes)) or "1"


EXPERTS: dict[str, ExpertSpec] = {
    spec.name: spec
    for spec in (
        ExpertSpec("detection", detection, detection.build_detector, Detection, (), "det_index"),
        ExpertSpec(
            "segmentation", segmentation, segmentation.build_segmenter, Segment, ("detection",), "segment_id"
        ),
        ExpertSpec("sgg", sgg, sgg.build_scene_graph, Relation, ("detection", "segmentation")),
        ExpertSpec("ocr", ocr, ocr.build_ocr, TextLine, (), "line_index"),
    )
}
EXPERT_NAMES = tuple(EXPERTS)


def expert_spec(name: str) -> ExpertSpec:
    try:
        return EXPERTS[name]
    except KeyError:
        raise ValueError(f"unknown expert {name!r}; expected one of {EXPERT_NAMES}") from None


def make_expert(name: str, config: Mapping[str, Any]) -> Expert:
    """Build an expert by name from its config block."""
    return expert_spec(name).build(config)
