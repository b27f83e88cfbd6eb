"""The one small protocol every expert follows, and the typed records they return.

An expert is built from a plain config dict (one block of a YAML profile), loads its model once
(`load()`, called once per worker), and maps a batch of decoded RGB images to one `ExpertOutput`
per image. Experts know nothing about Ray or Parquet: the pipeline wires them up and the warehouse
stores what they return.

    expert = annotators.registry.make_expert("detection", {"backend": "onnx", "model": "centernet", ...})
    expert.load()
    outputs = expert([ImageInput(image_id=1, image=rgb_uint8_hwc)])
    outputs[0].records          # list[Detection]
    expert.identity.config_hash # part of the warehouse's exactly-once key
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from core.hashing import config_hash

RANDOM_INIT = "random-init"


# ----------------------------------------------------------------------------- inputs / outputs


@dataclass
class ImageInput:
    """One decoded image: HxWx3 uint8 RGB, EXIF orientation already applied."""

    image_id: int
    image: np.ndarray
    # Records of experts that ran earlier on the same image, by expert name (e.g. segmentation is
    # prompted with upstream["detection"]; sgg reads upstream["segmentation"] / ["detection"]).
    upstream: dict[str, list[Any]] = field(default_factory=dict)

    def rgb(self) -> np.ndarray:
        """The image, after checking it is what every expert expects (HxWx3 uint8, non-empty)."""
        image = self.image
        if not (
            isinstance(image, np.ndarray)
            and image.ndim == 3
            and image.shape[2] == 3
            and image.dtype == np.uint8
            and min(image.shape[:2]) > 0
        ):
            raise ValueError(
                f"image {self.image_id}: expected HxWx3 uint8 RGB, got {type(image).__name__} "
                f"{getattr(image, 'shape', None)}"
            )
        return image

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class ExpertOutput:
    """What an expert produced for one image: records, or the reason it failed on that image."""

    image_id: int
    records: list[Any] = field(default_factory=list)
    error: str | None = None  # set when the expert failed on this image only
    seconds: float = 0.0  # model time spent on this image (batch time divided evenly)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Detection:
    label: str
    class_id: int
    score: float
    box: list[float]  # [x1, y1, x2, y2] in pixels of the original image


@dataclass
class Segment:
    segment_id: int  # 1-based, unique within the image's segment map (0 = void)
    label: str  # detector label for things, "unlabeled" (or a stuff name) otherwise
    category_id: int  # COCO category id for things, 0 for unlabeled regions
    isthing: bool
    area: int  # pixels in the final, non-overlapping segment map
    bbox: list[float]  # [x, y, w, h] (COCO convention) of the final segment
    rle: dict  # COCO RLE {"size": [h, w], "counts": str} of the final segment
    score: float  # detector score for things, predicted IoU for stuff
    predicted_iou: float
    stability_score: float


@dataclass
class Relation:
    subject_id: int  # segment_id (or detection index + 1 when no segments exist)
    subject: str  # numbered label as MoAI writes it: "person (#1)"; plain label when unique
    predicate: str  # "on", "above", "left of", ...
    object_id: int
    object: str
    score: float


@dataclass
class TextLine:
    text: str
    score: float
    polygon: list[list[float]]  # [[x, y], ...] in pixels of the original image, clockwise from top-left


def record_to_dict(record: Any) -> dict:
    return asdict(record)


def field_of(record: Any, name: str, default: Any = None) -> Any:
    """A record's field, whether the record is a dataclass or the dict it was stored as."""
    if isinstance(record, Mapping):
        return record.get(name, default)
    return getattr(record, name, default)


UNLABELED = "unlabeled"  # the label of a region no detector named
_PANOPTIC_SUFFIXES = re.compile(r"(-merged|-other|-stuff)+$")


def clean_label(label: Any) -> str:
    """Drop COCO-panoptic suffixes, as MoAI does ("wall-other-merged" -> "wall")."""
    return _PANOPTIC_SUFFIXES.sub("", str(label)).strip()


# ----------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class ExpertIdentity:
    expert: str  # "detection" | "segmentation" | "sgg" | "ocr"
    backend: str  # "ultralytics" | "onnx" | "segment-anything" | "geometric" | "rapidocr" | ...
    model: str  # human-readable model name, e.g. "yolo11n" or "centernet.onnx"
    weights_sha256: str  # sha256 of the weight file(s), or RANDOM_INIT
    config_hash: str  # hash of the full config incl. weights sha and the expert's code version

    @property
    def random_init(self) -> bool:
        return self.weights_sha256 == RANDOM_INIT


# ----------------------------------------------------------------------------- the protocol


class Expert:
    """Base class: subclasses set `name`, `version`, implement `load()` and `predict()`."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"  # bump when the expert's output for the same config changes

    def __init__(self, config: Mapping[str, Any] | None = None):
        self.config: dict[str, Any] = dict(config or {})
        self._identity: ExpertIdentity | None = None

    # Subclasses -------------------------------------------------------------------------------
    def load(self) -> None:
        """Load weights / sessions. Called once per worker before the first batch."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Find (fetch, verify) every weight file `load()` will need, without loading any model: the
        preflight runs it for every expert before a cluster starts, so a missing file fails in
        seconds. Experts without weight files need nothing here."""

    def predict(self, batch: Sequence[ImageInput]) -> list[list[Any]]:
        """Records for each image of the batch, in order. May raise; `__call__` isolates images."""
        raise NotImplementedError

    def weights_sha256(self) -> str:
        """sha256 of the loaded weights, or RANDOM_INIT. Valid after `load()`."""
        raise NotImplementedError

    def model_name(self) -> str:
        return str(self.config.get("model", self.name))

    # Shared -----------------------------------------------------------------------------------
    @property
    def identity(self) -> ExpertIdentity:
        if self._identity is None:
            weights = self.weights_sha256()
            full = {"expert": self.name, "version": self.version, "weights_sha256": weights, **self.config}
            self._identity = ExpertIdentity(
                expert=self.name,
                backend=str(self.config.get("backend", "")),
                model=self.model_name(),
                weights_sha256=weights,
                config_hash=config_hash(full),
            )
        return self._identity

    def __call__(self, batch: Sequence[ImageInput]) -> list[ExpertOutput]:
        """Run the batch; if it fails as a whole, retry image by image so one bad image fails alone."""
        import time

        start = time.perf_counter()
        try:
            results = self.predict(batch)
            per_image = (time.perf_counter() - start) / max(len(batch), 1)
            return [
                ExpertOutput(item.image_id, list(recs), None, per_image)
                for item, recs in zip(batch, results, strict=True)
            ]
        except Exception:
            if len(batch) == 1:
                return [self._one(batch[0])]
            return [self._one(item) for item in batch]

    def _one(self, item: ImageInput) -> ExpertOutput:
        import time

        start = time.perf_counter()
        try:
            (records,) = self.predict([item])
            return ExpertOutput(item.image_id, list(records), None, time.perf_counter() - start)
        except Exception as err:  # the expert failed on this image only: report, keep going
            return ExpertOutput(
                item.image_id, [], f"{type(err).__name__}: {err}", time.perf_counter() - start
            )
