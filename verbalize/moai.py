"""MoAI's verbalization: the experts' stored records as four English sentences.

The templates are MoAI's, word for word (moai-spec.md §2):

    The image includes bounding box coordinates and their objects: [0.12, 0.30, 0.55, 0.98] person, and [0.00, 0.00, 1.00, 0.41] sky.
    The image includes bounding box coordinates and their objects: [0.61, 0.52, 0.80, 0.77] dog.
    The image includes relationships between objects: person (#1) is on bench, and person (#2) is beside person (#1).
    The image includes text descriptions: STOP, and Main St.

It needs nothing but stored records: the dataclasses of `annotators.base` or plain dicts with the
same field names (how rows come back from Parquet), plus the image's width and height, so aux text
can be regenerated with new thresholds without running any model.

Conventions (decided here, pinned by tests/test_verbalize.py):
- Boxes are normalized by the image's own width/height, clamped to [0, 1] and written with
  `format(v, ".2f")`, which rounds the exact binary value half-to-even (0.125 -> "0.12",
  0.375 -> "0.38"); -0.0 is written "0.00". Segment boxes are COCO [x, y, w, h] -> x2 = x + w.
- Scores are compared with thresholds inclusively (score >= threshold), both taken at float32,
  the warehouse's storage precision, so text made in the pipeline and text regenerated from
  Parquet are identical (0.8 stored as float32 is 0.800000011..., 0.7 is 0.699999988...).
  Coordinates are likewise taken at float32 before normalizing.
- Item order: objects by score (desc), ties by position (x1, y1, x2, y2) then label; with
  `include_unlabeled`, labelled segments first and unlabeled regions after them (each group by its
  own score: a detector's confidence and SAM's predicted IoU are not one scale; MoAI's Mask2Former
  labels every segment, so its sentence holds labelled objects only). Relations by score (desc),
  ties by subject id, object id, predicate.
- Relations kept (decided, MoAI's rule): the top min(sgg_top_k, number of objects) by score, the
  objects being those the image's relations name, then those scoring >= the threshold. Where MoAI's
  `argpartition` fails (fewer relations than that number) and its bare `except` drops the whole
  sentence, ours keeps every relation. MoAI lists its top-k in argpartition's unspecified order; ours
  by score.
- OCR lines in reading order, `annotators.ocr.reading_order` (the order the OCR expert stores them
  in): rows top to bottom, a line joining a row when its vertical centre lies within the row's first
  line; left to right within a row. Decided, not MoAI's: MoAI kept PaddleOCR's `sorted_boxes` order
  (sort by the top-left corner, then swap neighbours whose top-left y differ by < 10 px into x order),
  tuned for its 490 px squash; OCR here runs at native resolution, where 10 px splits one row of large
  text whose words sit a few pixels apart. Both agree whenever the tops within a row differ by less
  than 10 px and less than half the text's height, and rows are further apart than their height
  (tests/test_verbalize.py). Lines without a polygon come last, by text.
- Segmentation labels lose COCO-panoptic suffixes (-merged, -other, -stuff) as in MoAI; segments
  labelled "unlabeled" (or empty) are left out unless `include_unlabeled`.
- OCR strings have their whitespace collapsed; blank strings are dropped. The final "." is always
  appended, as MoAI's template does, even after a string that ends in "." ("Main St..").
- A sentence with nothing to say is ""; the aux text joins the non-empty sentences (segmentation,
  detection, SGG, OCR) with single spaces, so it never has double or edge spaces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from annotators.base import UNLABELED, clean_label, field_of
from annotators.ocr import reading_order
from core.errors import UserError
from core.hashing import config_hash

VERBALIZER_VERSION = "2"  # bump whenever the text for the same records and config changes
OBJECTS_PREFIX = "The image includes bounding box coordinates and their objects: "
RELATIONS_PREFIX = "The image includes relationships between objects: "
TEXT_PREFIX = "The image includes text descriptions: "
JOINER = ", and "


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class VerbalizeConfig:
    """Thresholds of the four sentences; defaults are MoAI's."""

    segmentation_threshold: float = 0.5  # Mask2Former post-processing threshold
    detection_threshold: float = 0.5  # OWLv2: only scores >= 0.5 are verbalized
    sgg_top_k: int = 10  # PSGTR: the 10 best relations ...
    sgg_threshold: float = 0.8  # ... of which those scoring >= 0.8
    ocr_threshold: float = 0.85  # PaddleOCR line confidence
    include_unlabeled: bool = False  # write "unlabeled" stuff segments in the segmentation sentence

    def __post_init__(self) -> None:
        # Coerce YAML values (1 vs 1.0, "10") so equal settings always hash alike.
        for f in fields(self):
            object.__setattr__(self, f.name, _COERCE[f.name](getattr(self, f.name)))
        for name in ("segmentation_threshold", "detection_threshold", "sgg_threshold", "ocr_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"verbalize: {name} must be in [0, 1], not {value}.")
        if self.sgg_top_k < 0:
            raise UserError(f"verbalize: sgg_top_k must be >= 0, not {self.sgg_top_k}.")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> VerbalizeConfig:
        """From a profile's `verbalize:` block; unknown keys are an error, not silently ignored."""
        mapping = dict(mapping or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise UserError(f"verbalize: unknown keys {unknown}; known: {sorted(known)}.")
        return cls(**mapping)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_hash(self) -> str:
        """Versions the aux text: changes with any threshold or with the verbalizer's code version."""
        return config_hash({"verbalizer": VERBALIZER_VERSION, **self.to_dict()})


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise UserError(f"verbalize: include_unlabeled must be true or false, not {value!r}.")
    return bool(value)


_COERCE = {
    "segmentation_threshold": float,
    "detection_threshold": float,
    "sgg_top_k": int,
    "sgg_threshold": float,
    "ocr_threshold": float,
    "include_unlabeled": _strict_bool,
}
DEFAULT_CONFIG = VerbalizeConfig()


@dataclass(frozen=True)
class AuxText:
    """The four sentences of one image; `text` is what the trainer embeds."""

    segmentation: str = ""
    detection: str = ""
    sgg: str = ""
    ocr: str = ""

    @property
    def text(self) -> str:
        return join_sentences([self.segmentation, self.detection, self.sgg, self.ocr])

    def columns(self) -> dict[str, str]:
        """The text columns of the warehouse's `aux_text` table."""
        return {
            "text": self.text,
            "segmentation_text": self.segmentation,
            "detection_text": self.detection,
            "sgg_text": self.sgg,
            "ocr_text": self.ocr,
        }


# ----------------------------------------------------------------------------- small helpers


def _f32(value: Any) -> float:
    """The value as the warehouse stores it (float32), so fresh and stored records agree."""
    return float(np.float32(value))


def passes(score: Any, threshold: float) -> bool:
    """Inclusive threshold at storage precision."""
    return np.float32(score) >= np.float32(threshold)


def format_coordinate(value: float, size: float) -> str:
    normalized = min(1.0, max(0.0, _f32(value) / float(size)))
    return format(normalized + 0.0, ".2f")  # + 0.0 turns -0.0 into 0.0


def format_box(box: Sequence[float], width: float, height: float) -> str:
    """Pixel [x1, y1, x2, y2] -> "[0.12, 0.30, 0.55, 0.98]"."""
    x1, y1, x2, y2 = box
    coordinates = (
        format_coordinate(x1, width),
        format_coordinate(y1, height),
        format_coordinate(x2, width),
        format_coordinate(y2, height),
    )
    return "[" + ", ".join(coordinates) + "]"


def sentence(prefix: str, items: Sequence[str]) -> str:
    return prefix + JOINER.join(items) + "." if items else ""


def join_sentences(sentences: Iterable[str]) -> str:
    return " ".join(s for s in sentences if s)


_SENTENCE_START = re.compile(
    " (?=" + "|".join(re.escape(p) for p in (OBJECTS_PREFIX, RELATIONS_PREFIX, TEXT_PREFIX)) + ")"
)


def split_sentences(text: str) -> list[str]:
    """An aux text back into its sentences (the inverse of `join_sentences` for verbalizer output): a new
    sentence starts at each space followed by one of the templates' prefixes. Text that is not the
    verbalizer's (no prefix) is one sentence."""
    return [s for s in _SENTENCE_START.split(text) if s] if text else []


# ----------------------------------------------------------------------------- the four sentences


def _objects_sentence(objects: list[tuple[float, list[float], str]], width: float, height: float) -> str:
    """(score, [x1, y1, x2, y2], label) items, best score first, ties by position then label."""
    objects.sort(key=lambda o: (-_f32(o[0]), *(_f32(v) for v in o[1]), o[2]))
    return sentence(
        OBJECTS_PREFIX, [f"{format_box(box, width, height)} {label}" for _, box, label in objects]
    )


def segment_box(segment: Any) -> list[float]:
    """COCO [x, y, w, h] -> [x1, y1, x2, y2]."""
    x, y, w, h = (_f32(v) for v in field_of(segment, "bbox"))
    return [x, y, x + w, y + h]


def verbalize_segments(
    segments: Iterable[Any], width: float, height: float, config: VerbalizeConfig = DEFAULT_CONFIG
) -> str:
    labelled, unlabeled = [], []
    for seg in segments:
        label = clean_label(field_of(seg, "label", ""))
        if label in ("", UNLABELED) and not config.include_unlabeled:
            continue
        if passes(field_of(seg, "score", 0.0), config.segmentation_threshold):
            group = unlabeled if label in ("", UNLABELED) else labelled
            group.append((field_of(seg, "score", 0.0), segment_box(seg), label or UNLABELED))
    if not unlabeled:
        return _objects_sentence(labelled, width, height)
    first, second = _objects_sentence(labelled, width, height), _objects_sentence(unlabeled, width, height)
    if not first:
        return second
    return first[:-1] + JOINER + second.removeprefix(OBJECTS_PREFIX)  # one sentence: labelled, then the rest


def verbalize_detections(
    detections: Iterable[Any], width: float, height: float, config: VerbalizeConfig = DEFAULT_CONFIG
) -> str:
    objects = [
        (field_of(d, "score", 0.0), [_f32(v) for v in field_of(d, "box")], str(field_of(d, "label", "")))
        for d in detections
        if passes(field_of(d, "score", 0.0), config.detection_threshold)
    ]
    return _objects_sentence(objects, width, height)


def verbalize_relations(relations: Iterable[Any], config: VerbalizeConfig = DEFAULT_CONFIG) -> str:
    """MoAI's PSGTR filter: the top min(k, objects) relations by score, then those scoring >= the threshold
    (see the module docstring for where ours and MoAI's code part)."""
    relations = list(relations)
    objects = {int(field_of(r, key, 0)) for r in relations for key in ("subject_id", "object_id")}
    ranked = sorted(
        relations,
        key=lambda r: (
            -_f32(field_of(r, "score", 0.0)),
            int(field_of(r, "subject_id", 0)),
            int(field_of(r, "object_id", 0)),
            str(field_of(r, "predicate", "")),
        ),
    )
    top_k = min(config.sgg_top_k, len(objects))
    kept = [r for r in ranked[:top_k] if passes(field_of(r, "score", 0.0), config.sgg_threshold)]
    items = [f"{field_of(r, 'subject')} is {field_of(r, 'predicate')} {field_of(r, 'object')}" for r in kept]
    return sentence(RELATIONS_PREFIX, items)


def verbalize_ocr(lines: Iterable[Any], config: VerbalizeConfig = DEFAULT_CONFIG) -> str:
    """Recognized strings scoring >= the threshold; positions are dropped, as in MoAI."""
    kept = [line for line in lines if passes(field_of(line, "score", 0.0), config.ocr_threshold)]
    texts = [" ".join(str(field_of(line, "text", "")).split()) for line in reading_order(kept)]
    return sentence(TEXT_PREFIX, [t for t in texts if t])


def verbalize(
    records: Mapping[str, Iterable[Any]],
    width: float,
    height: float,
    config: VerbalizeConfig = DEFAULT_CONFIG,
) -> AuxText:
    """All four sentences of one image from its records, keyed by expert name.

    records: {"segmentation": [...], "detection": [...], "sgg": [...], "ocr": [...]}; a missing
    expert simply contributes no sentence. width/height: the image's size in pixels.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"verbalize needs the image size, got width={width}, height={height}")
    return AuxText(
        segmentation=verbalize_segments(records.get("segmentation") or [], width, height, config),
        detection=verbalize_detections(records.get("detection") or [], width, height, config),
        sgg=verbalize_relations(records.get("sgg") or [], config),
        ocr=verbalize_ocr(records.get("ocr") or [], config),
    )
