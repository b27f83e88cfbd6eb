"""Scene-graph expert: relations between the objects found upstream.

No maintained package ships scene-graph weights, so the default backend, `geometric`, derives
relations deterministically from where objects are: from the segments of the segmentation expert
(masks decoded from their COCO RLE, plus boxes) or, when an image has no segment records, from the
detector's boxes. A learned model (e.g. a PSG-style checkpoint) plugs in through `backend: plugin`.

    expert = build_scene_graph({"backend": "geometric"})
    expert.load()
    outputs = expert([ImageInput(1, rgb, {"segmentation": segments, "detection": detections})])
    outputs[0].records   # [Relation(3, "cup", "on", 1, "table", 1.0), ...]

Objects
-------
Segments are used when the image has any segment record (ids = segment ids), otherwise detections
(ids = detection index + 1, the index in the stored detection list). Objects with score below
`min_object_score` (0.5, MoAI's perception threshold) and, by default, "unlabeled" stuff segments
are skipped; the best `max_objects` (by score) are kept. Boxes are [x1, y1, x2, y2] with exclusive
right/bottom edges (a segment's COCO [x, y, w, h] gives x2 = x + w).

Names: a label that occurs more than once among the kept objects is numbered as MoAI writes it,
`person (#1)`, `person (#2)`, ..., in left-to-right order (box x1, then y1, then id); a label that
occurs once stays plain. COCO-panoptic suffixes (-merged, -other, -stuff) are dropped.

Predicates (geometric)
----------------------
Each unordered pair of objects yields at most ONE relation: the first rule below that holds (most
specific first), so "A left of B" and "B right of A" are never both emitted. The subject of the
symmetric or mirrored predicates is the *figure*, the object the *ground*: the smaller box is the
figure ("cup left of laptop", "ball above box"); equal areas go to the left-most, then top-most,
then lower id. For "on" and "inside" the geometry itself fixes the direction. With S the subject,
O the object, h/w box height/width, tol = max(2 px, 0.05 * h_S):

1. **on** — S rests on O's top: S's top is above O's top (S.y1 < O.y1), S's bottom lies in O's
   top band (O.y1 - tol <= S.y2 <= O.y1 + 0.5 * h_O), and S is supported: with boxes, the share of
   S's width over O; with masks, the share of S's base columns (those whose lowest pixel is within
   tol of S's lowest row) with an O pixel between tol above the column's lowest pixel and tol
   below S's lowest row. Support >= 0.7 (a
   thing half over an edge would fall; two diagonally offset squares are "overlapping", not "on").
   q = min(ramp(support, 0.7, 0.9), contact), contact = 1 when S.y2 >= O.y1, falling linearly to 0
   as the gap above O grows to tol. Tried in both directions; the better one wins.
2. **inside** — the figure is (almost) contained in the ground: containment >= 0.9 and the figure
   is smaller. Containment with masks = share of S's pixels in O's *filled* region (O's pixels plus
   every pixel with O on its left, right, above and below, so a hole that a non-overlapping
   panoptic map cut out of O for S still counts); with boxes = share of S's box inside O's box.
   q = ramp(containment, 0.9, 1).
3. **overlapping** — the boxes overlap partly: intersection / smaller box area = r >= 0.1. Boxes,
   not masks, because segments of one panoptic map never overlap; an occluding object shows up only
   as overlapping boxes. q = ramp(r, 0.1, 0.3).
4. Arrangement of (nearly) disjoint boxes. gap = distance between the boxes, L = sqrt(smaller box
   area), close when gap <= 0.5 * L, closeness = 1 - gap / (0.5 * L). The axis of separation is the
   one with the larger gap; alignment = overlap on the other axis / smaller extent on that axis.
   - **near** — close, and the boxes share no extent on the other axis (diagonal neighbours);
     q = closeness.
   - **above / below** — separated vertically (not diagonal-and-close); S's centre above/below O's.
     q = min(ramp(alignment, 0, 0.5), proximity). A small gap stays "above" (more telling than
     "near"); contact was already "on".
   - **beside** — close and side by side; q = min(closeness, ramp(alignment, 0, 0.5)).
   - **left of / right of** — separated horizontally and not close; by S's centre x.
     q = min(ramp(alignment, 0, 0.5), proximity).
   proximity = 1 - ramp(gap, 2 L, 6 L): a direction between objects many of their own sizes apart
   is still true but says little about the scene, so it fades to score 0.5 and the verbalizer's
   top-10 goes to the relations that describe it (on, inside, beside, ...).

score = 0.5 + 0.5 * q (rounded to 4 decimals): 0.5 means the rule barely holds, 1.0 a textbook
case. MoAI verbalizes relations with score >= 0.8, i.e. q >= 0.6. Relations are sorted by score
(desc), then subject id, then object id, and capped at `max_relations` per image.

Limits of 2-D geometry (a learned plug-in is the fix): an object lying on a surface seen from
above (plate on a table, car on a road) is enclosed by the surface and reads as "inside"; an
object standing in front of another reads as "overlapping" rather than "in front of".

Plug-in backend
---------------
    {"backend": "plugin", "entry": "package.module:factory", ...any keys the plug-in wants}

`factory(config_dict)` returns an object with `load()`, `weights_sha256()` (sha256 of its
weights, or "random-init") and `relate(image, segments, detections)` returning Relation records
or dicts with the same fields. Empty subject/object names are filled with numbered names (as
above, but counting every upstream object, unlabeled and low-score ones included, since the
plug-in may relate any of them). Output is sorted and capped like the geometric backend's; the
object filters above do not apply (the plug-in sees every record).
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa

from annotators.base import (
    RANDOM_INIT,
    UNLABELED,
    Detection,
    Expert,
    ImageInput,
    Relation,
    Segment,
    clean_label,
    field_of,
)
from annotators.masks import decode_rle
from core.errors import UserError

GEOMETRIC_ID = "geometric-v1"  # identity of the rule set; bump with any rule change


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GeometryRules:
    """Thresholds of the geometric predicates (see the module docstring)."""

    on_min_support: float = 0.7
    on_clear_support: float = 0.9
    on_top_band: float = 0.5
    contact_ratio: float = 0.05
    contact_min_px: float = 2.0
    inside_min: float = 0.9
    overlap_min: float = 0.1
    overlap_clear: float = 0.3
    near_ratio: float = 0.5
    align_clear: float = 0.5
    far_start: float = 2.0
    far_end: float = 6.0


@dataclass(frozen=True)
class SceneGraphSettings:
    include_unlabeled: bool = False
    min_object_score: float = 0.5
    max_objects: int = 50
    max_relations: int = 100
    rules: GeometryRules = field(default_factory=GeometryRules)


_RULE_KEYS = {f.name for f in fields(GeometryRules)}
_SETTING_KEYS = {f.name for f in fields(SceneGraphSettings)} - {"rules"}
GEOMETRIC_KEYS = frozenset(
    {"backend", "model", "enabled"} | _SETTING_KEYS | _RULE_KEYS
)  # enabled: profile switch


def resolve_settings(config: Mapping[str, Any], *, strict: bool = True) -> SceneGraphSettings:
    """Settings from a flat config block; unknown keys are an error for the geometric backend."""
    unknown = sorted(set(config) - GEOMETRIC_KEYS)
    if strict and unknown:
        raise UserError(f"sgg (geometric): unknown config keys {unknown}; known: {sorted(GEOMETRIC_KEYS)}.")
    rules = GeometryRules(**{k: float(config[k]) for k in _RULE_KEYS if k in config})
    settings = SceneGraphSettings(
        include_unlabeled=bool(config.get("include_unlabeled", False)),
        min_object_score=float(config.get("min_object_score", 0.5)),
        max_objects=int(config.get("max_objects", 50)),
        max_relations=int(config.get("max_relations", 100)),
        rules=rules,
    )
    if settings.max_objects < 2 or settings.max_relations < 1:
        raise UserError("sgg: max_objects must be at least 2 and max_relations at least 1.")
    return settings


# ----------------------------------------------------------------------------- objects


@dataclass
class Entity:
    """One object as the rules see it: a box and, for segments, its mask cropped to that box."""

    entity_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 (x2/y2 exclusive)
    mask: np.ndarray | None = None  # bool, the box's pixels (only for integer mask boxes)
    name: str = ""  # numbered display name
    _filled: np.ndarray | None = None

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def filled(self) -> np.ndarray:
        """The mask plus every pixel it encloses along both its row and its column."""
        if self._filled is None:
            m = self.mask
            left = np.maximum.accumulate(m, axis=1)
            right = np.maximum.accumulate(m[:, ::-1], axis=1)[:, ::-1]
            up = np.maximum.accumulate(m, axis=0)
            down = np.maximum.accumulate(m[::-1], axis=0)[::-1]
            self._filled = m | (left & right & up & down)
        return self._filled


def decode_mask_crop(rle: Mapping[str, Any] | None) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """A segment's mask cropped to its extent, and that extent; None when absent or empty."""
    if not rle or not rle.get("counts"):
        return None
    mask = decode_rle(rle)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    return mask[y1:y2, x1:x2].copy(), (x1, y1, x2, y2)


def object_label(record: Any) -> str:
    """The label the rules and names use: panoptic suffixes dropped, "unlabeled" when empty."""
    return clean_label(field_of(record, "label", "")) or UNLABELED


def _keep(label: str, score: float, settings: SceneGraphSettings) -> bool:
    if label == UNLABELED and not settings.include_unlabeled:
        return False
    return score >= settings.min_object_score


def _best(entities: list[Entity], limit: int) -> list[Entity]:
    return sorted(entities, key=lambda e: (-e.score, e.entity_id))[:limit]


def entities_from_segments(segments: Sequence[Any], settings: SceneGraphSettings) -> list[Entity]:
    """Kept segments, boxes from their decoded masks (the stored bbox when the mask is missing)."""
    candidates = []
    for seg in segments:
        label, score = object_label(seg), float(field_of(seg, "score", 0.0))
        x, y, w, h = (float(v) for v in field_of(seg, "bbox", [0, 0, 0, 0]))
        if w > 0 and h > 0 and _keep(label, score, settings):
            candidates.append(
                (Entity(int(field_of(seg, "segment_id")), label, score, (x, y, x + w, y + h)), seg)
            )
    kept = {id(e) for e in _best([e for e, _ in candidates], settings.max_objects)}
    entities = []
    for entity, seg in candidates:
        if id(entity) not in kept:
            continue
        decoded = decode_mask_crop(field_of(seg, "rle"))
        if decoded is not None:
            entity.mask, box = decoded
            entity.box = tuple(float(v) for v in box)
        entities.append(entity)
    return entities


def entities_from_detections(detections: Sequence[Any], settings: SceneGraphSettings) -> list[Entity]:
    entities = []
    for index, det in enumerate(detections):
        label, score = object_label(det), float(field_of(det, "score", 0.0))
        x1, y1, x2, y2 = (float(v) for v in field_of(det, "box"))
        if x2 > x1 and y2 > y1 and _keep(label, score, settings):
            entities.append(Entity(index + 1, label, score, (x1, y1, x2, y2)))
    return _best(entities, settings.max_objects)


def number_labels(entities: Sequence[Entity]) -> None:
    """MoAI-style names: repeated labels get "(#k)" in left-to-right order; unique ones stay plain."""
    counts = Counter(e.label for e in entities)
    seen: Counter[str] = Counter()
    for e in sorted(entities, key=lambda e: (e.box[0], e.box[1], e.entity_id)):
        if counts[e.label] > 1:
            seen[e.label] += 1
            e.name = f"{e.label} (#{seen[e.label]})"
        else:
            e.name = e.label


def image_entities(item: ImageInput, settings: SceneGraphSettings) -> list[Entity]:
    """The objects of one image: its segments if it has any, else its detections; numbered."""
    segments = item.upstream.get("segmentation") or []
    if segments:
        entities = entities_from_segments(segments, settings)
    else:
        entities = entities_from_detections(item.upstream.get("detection") or [], settings)
    number_labels(entities)
    return entities


# ----------------------------------------------------------------------------- geometry


def ramp(x: float, lo: float, hi: float) -> float:
    """0 at lo, 1 at hi, linear in between (clipped)."""
    if hi <= lo:
        return 1.0 if x >= hi else 0.0
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    """Length shared by two intervals; negative = the gap between them."""
    return min(a1, b1) - max(a0, b0)


def box_intersection(a: Entity, b: Entity) -> float:
    ix = _overlap(a.box[0], a.box[2], b.box[0], b.box[2])
    iy = _overlap(a.box[1], a.box[3], b.box[1], b.box[3])
    return max(ix, 0.0) * max(iy, 0.0)


def _shared_window(a: Entity, b: Entity) -> tuple[slice, slice, slice, slice] | None:
    """Slices of a's and b's mask crops covering the intersection of their (integer) boxes."""
    ax1, ay1, bx1, by1 = int(a.box[0]), int(a.box[1]), int(b.box[0]), int(b.box[1])
    x1, y1 = max(ax1, bx1), max(ay1, by1)
    x2, y2 = min(int(a.box[2]), int(b.box[2])), min(int(a.box[3]), int(b.box[3]))
    if x2 <= x1 or y2 <= y1:
        return None
    return (
        slice(y1 - ay1, y2 - ay1),
        slice(x1 - ax1, x2 - ax1),
        slice(y1 - by1, y2 - by1),
        slice(x1 - bx1, x2 - bx1),
    )


def containment(s: Entity, o: Entity) -> float:
    """Share of S inside O: of S's pixels in O's filled mask, or of S's box in O's box."""
    box_share = box_intersection(s, o) / s.area
    if s.mask is None or o.mask is None or box_share < 0.5:
        return box_share
    window = _shared_window(s, o)
    if window is None:
        return 0.0
    sy, sx, oy, ox = window
    inside = int((s.mask[sy, sx] & o.filled()[oy, ox]).sum())
    return inside / max(int(s.mask.sum()), 1)


def contact_tolerance(s: Entity, rules: GeometryRules) -> float:
    return max(rules.contact_min_px, rules.contact_ratio * s.height)


def mask_support(s: Entity, o: Entity, tol: float) -> float:
    """Share of S's base columns with O pixels from tol above their lowest pixel to tol below S's."""
    cols = np.flatnonzero(s.mask.any(axis=0))
    lowest_in_col = s.mask.shape[0] - 1 - np.argmax(s.mask[::-1, cols], axis=0)
    bottoms = int(s.box[1]) + lowest_in_col  # absolute rows
    base = bottoms >= bottoms.max() - tol
    xs, bottoms = cols[base] + int(s.box[0]), bottoms[base]
    # O's pixels per column, counted between rows [bottom - tol, bottom + tol] via a cumulative sum.
    ox1, oy1 = int(o.box[0]), int(o.box[1])
    in_o = (xs >= ox1) & (xs < ox1 + o.mask.shape[1])
    if not in_o.any():
        return 0.0
    csum = np.vstack([np.zeros((1, o.mask.shape[1]), np.int64), np.cumsum(o.mask, axis=0)])
    t = int(math.ceil(tol))
    lo = np.clip(bottoms[in_o] - t - oy1, 0, o.mask.shape[0])
    hi = np.clip(int(bottoms.max()) + t + 1 - oy1, 0, o.mask.shape[0])
    col = xs[in_o] - ox1
    touching = (csum[hi, col] - csum[lo, col]) > 0
    return float(touching.sum()) / float(base.sum())


def on_quality(s: Entity, o: Entity, rules: GeometryRules) -> float | None:
    """How clearly S rests on O's top (None when it does not); see rule 1 of the docstring."""
    tol = contact_tolerance(s, rules)
    s_bottom, o_top = s.box[3], o.box[1]
    if not (s.box[1] < o_top and o_top - tol <= s_bottom <= o_top + rules.on_top_band * o.height):
        return None
    if s.mask is not None and o.mask is not None:
        support = mask_support(s, o, tol)
    else:
        support = max(_overlap(s.box[0], s.box[2], o.box[0], o.box[2]), 0.0) / s.width
    if support < rules.on_min_support:
        return None
    contact = 1.0 if s_bottom >= o_top else 1.0 - (o_top - s_bottom) / tol
    return min(ramp(support, rules.on_min_support, rules.on_clear_support), contact)


def figure_and_ground(a: Entity, b: Entity) -> tuple[Entity, Entity]:
    """The smaller box is the subject; ties go to the left-most, top-most, lower id."""
    key_a = (a.area, a.box[0], a.box[1], a.entity_id)
    key_b = (b.area, b.box[0], b.box[1], b.entity_id)
    return (a, b) if key_a <= key_b else (b, a)


def arrangement(s: Entity, o: Entity, rules: GeometryRules) -> tuple[str, float]:
    """Predicate and quality for boxes that are disjoint or barely overlap (rule 4)."""
    ix = _overlap(s.box[0], s.box[2], o.box[0], o.box[2])
    iy = _overlap(s.box[1], s.box[3], o.box[1], o.box[3])
    gap = math.hypot(max(-ix, 0.0), max(-iy, 0.0))
    size = math.sqrt(min(s.area, o.area))
    closeness = 1.0 - gap / (rules.near_ratio * size)
    proximity = 1.0 - ramp(gap, rules.far_start * size, rules.far_end * size)
    (sx, sy), (ox, oy) = s.center, o.center
    if -iy > -ix:  # separated more vertically than horizontally
        alignment = max(ix, 0.0) / min(s.width, o.width)
        if alignment == 0.0 and closeness >= 0.0:
            return "near", closeness
        direction = "above" if sy < oy else "below"
        return direction, min(ramp(alignment, 0.0, rules.align_clear), proximity)
    alignment = max(iy, 0.0) / min(s.height, o.height)
    if closeness >= 0.0:
        if alignment == 0.0:
            return "near", closeness
        return "beside", min(closeness, ramp(alignment, 0.0, rules.align_clear))
    direction = "left of" if sx < ox else "right of"
    return direction, min(ramp(alignment, 0.0, rules.align_clear), proximity)


def relate_pair(a: Entity, b: Entity, rules: GeometryRules) -> tuple[Entity, str, Entity, float]:
    """The one relation of an unordered pair: (subject, predicate, object, quality in [0, 1])."""
    figure, ground = figure_and_ground(a, b)
    on = [
        (q, s, o)
        for s, o in ((figure, ground), (ground, figure))
        if (q := on_quality(s, o, rules)) is not None
    ]
    if on:
        q, s, o = max(on, key=lambda t: t[0])
        return s, "on", o, q
    if figure.area < ground.area:
        contained = containment(figure, ground)
        if contained >= rules.inside_min:
            return figure, "inside", ground, ramp(contained, rules.inside_min, 1.0)
    shared = box_intersection(figure, ground) / min(figure.area, ground.area)
    if shared >= rules.overlap_min:
        return figure, "overlapping", ground, ramp(shared, rules.overlap_min, rules.overlap_clear)
    predicate, q = arrangement(figure, ground, rules)
    return figure, predicate, ground, q


def sort_and_cap(relations: list[Relation], limit: int) -> list[Relation]:
    return sorted(relations, key=lambda r: (-r.score, r.subject_id, r.object_id, r.predicate))[:limit]


def geometric_relations(entities: Sequence[Entity], settings: SceneGraphSettings) -> list[Relation]:
    """One relation per pair of objects, best first, at most `max_relations`."""
    relations = []
    for i, a in enumerate(entities):
        for b in entities[i + 1 :]:
            s, predicate, o, q = relate_pair(a, b, settings.rules)
            relations.append(
                Relation(s.entity_id, s.name, predicate, o.entity_id, o.name, round(0.5 + 0.5 * q, 4))
            )
    return sort_and_cap(relations, settings.max_relations)


# ----------------------------------------------------------------------------- plug-in


class PluginBackend:
    """A learned SGG model behind `entry: "package.module:factory"` (see the module docstring)."""

    required = ("load", "relate", "weights_sha256")

    def __init__(self, config: Mapping[str, Any]):
        entry = str(config.get("entry") or "")
        module_name, _, attr = entry.partition(":")
        if not module_name or not attr:
            raise UserError(f"sgg plugin: `entry` must look like 'package.module:factory', not {entry!r}.")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UserError(f"sgg plugin: cannot import {entry!r} ({type(err).__name__}: {err}).") from err
        self.model = factory(dict(config))
        missing = [m for m in self.required if not callable(getattr(self.model, m, None))]
        if missing:
            raise UserError(f"sgg plugin {entry!r}: the object its factory returned lacks {missing}.")
        self.entry = entry
        self._sha: str | None = None

    def load(self) -> None:
        if self._sha is not None:
            return
        self.model.load()
        sha = str(self.model.weights_sha256())
        if sha != RANDOM_INIT and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise UserError(
                f"sgg plugin {self.entry!r}: weights_sha256() gave {sha!r}; expected a sha256 hex "
                f"digest or {RANDOM_INIT!r}."
            )
        self._sha = sha

    def weights_sha256(self) -> str:
        self.load()
        return self._sha

    def model_name(self) -> str:
        name = getattr(self.model, "model_name", "")
        return str((name() if callable(name) else name) or self.entry)

    def relations(self, item: ImageInput, max_relations: int) -> list[Relation]:
        segments = [_as_record(Segment, r) for r in item.upstream.get("segmentation") or []]
        detections = [_as_record(Detection, r) for r in item.upstream.get("detection") or []]
        names = plugin_names(item)
        out = [self._relation(raw, names) for raw in self.model.relate(item.image, segments, detections)]
        return sort_and_cap(out, max_relations)

    @staticmethod
    def _relation(raw: Any, names: Mapping[int, str]) -> Relation:
        rel = _as_record(Relation, raw)
        score = float(rel.score)
        if not 0.0 <= score <= 1.0 or not rel.predicate:
            raise ValueError(
                f"sgg plugin returned an invalid relation {rel!r} (score in [0, 1], a predicate)"
            )
        subject = rel.subject or names.get(int(rel.subject_id), "")
        obj = rel.object or names.get(int(rel.object_id), "")
        return Relation(int(rel.subject_id), subject, str(rel.predicate), int(rel.object_id), obj, score)


def _as_record(cls: type, record: Any) -> Any:
    return cls(**record) if isinstance(record, Mapping) else record


def plugin_names(item: ImageInput) -> dict[int, str]:
    """Numbered names of every upstream object, to fill names a plug-in left empty."""
    everything = SceneGraphSettings(include_unlabeled=True, min_object_score=-math.inf, max_objects=10**9)
    segments = item.upstream.get("segmentation") or []
    if segments:  # names only: boxes from the stored bbox, no mask decoding
        entities = []
        for seg in segments:
            x, y, w, h = (float(v) for v in field_of(seg, "bbox", [0, 0, 0, 0]))
            entities.append(
                Entity(
                    int(field_of(seg, "segment_id")),
                    object_label(seg),
                    float(field_of(seg, "score", 0.0)),
                    (x, y, x + w, y + h),
                )
            )
    else:
        entities = entities_from_detections(item.upstream.get("detection") or [], everything)
    number_labels(entities)
    return {e.entity_id: e.name for e in entities}


# ----------------------------------------------------------------------------- the expert


class SceneGraphExpert(Expert):
    """Relations between upstream objects: geometric rules by default, or a learned plug-in."""

    name = "sgg"
    version = "1"

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        self.config.setdefault("backend", "geometric")  # so {} and the explicit default hash alike
        self.backend_name = str(self.config["backend"])
        if self.backend_name not in ("geometric", "plugin"):
            raise UserError(
                f"sgg backend {self.backend_name!r} is unknown; expected 'geometric' or 'plugin'."
            )
        plugin = self.backend_name == "plugin"
        self.settings = resolve_settings(self.config, strict=not plugin)
        self.plugin = PluginBackend(self.config) if plugin else None

    def load(self) -> None:
        if self.plugin is not None:
            self.plugin.load()

    def weights_sha256(self) -> str:
        # The geometric rules have no weights; name the rule set so the identity still pins it.
        return self.plugin.weights_sha256() if self.plugin is not None else GEOMETRIC_ID

    def model_name(self) -> str:
        if "model" in self.config:
            return str(self.config["model"])
        return self.plugin.model_name() if self.plugin is not None else "geometric"

    def predict(self, batch: Sequence[ImageInput]) -> list[list[Relation]]:
        self.load()
        return [self.relations(item) for item in batch]

    def relations(self, item: ImageInput) -> list[Relation]:
        if self.plugin is not None:
            return self.plugin.relations(item, self.settings.max_relations)
        return geometric_relations(image_entities(item, self.settings), self.settings)


def build_scene_graph(config: Mapping[str, Any]) -> SceneGraphExpert:
    """Entry point used by annotators.base.make_expert("sgg", config)."""
    return SceneGraphExpert(config)


# ----------------------------------------------------------------------------- registry facts
# (annotators/registry.py reads these: the config keys each backend reads, and the warehouse table)
DEFAULT_BACKEND = "geometric"
BACKEND_KEYS: dict[str, frozenset[str] | None] = {
    "geometric": GEOMETRIC_KEYS,
    "plugin": None,
}  # a plug-in reads its own
MEMORY_MB = {"geometric": 250}  # measured peak 0.16 GiB in a Ray actor; a plug-in's need is unknown here
COST_MS = {"geometric": 1}
TABLE = "relations"
COLUMNS = [
    ("subject_id", pa.int32()),
    ("subject", pa.string()),
    ("predicate", pa.string()),
    ("object_id", pa.int32()),
    ("object", pa.string()),
    ("score", pa.float32()),
]
_FIELDS = [name for name, _ in COLUMNS]


def to_columns(index: int, r: Mapping[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in _FIELDS}


def from_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in _FIELDS}
