"""Object detection expert: boxes with a label and a score for every image.

MoAI's detection sentence came from OWLv2 with 1,847 text queries; here the default is a closed-set
ultralytics YOLO (COCO 80), with two alternatives: an open-vocabulary YOLO-World / YOLOE prompted
with a vocabulary file (the OWLv2 mirror), and any ONNX detector run by onnxruntime. Every backend
returns the same records: `Detection(label, class_id, score, box)`, box = [x1, y1, x2, y2] in pixels
of the original image (clipped to it), sorted by score, highest first. Scores are stored down to a
low floor (0.1, as MoAI's OWLv2 post-processing); the verbalizer applies its own, higher threshold.

Config keys (one `detection:` block of a profile; unknown keys are refused, so typos cannot pass):

    backend          "ultralytics" (default) | "onnx"
    model            ultralytics: a weights name or path ("yolo11n.pt", the default), or an architecture
                     file ("yolo11n.yaml", only with `weights: random-init`); onnx: a display name, or
                     the .onnx path itself when `weights` is absent
    weights          "random-init" | a path | {path | file, url, sha256} (see annotators/weights.py).
                     Without it an ultralytics name resolves like ultralytics does: the path as given,
                     then $MOAI_WEIGHTS, then ultralytics' weights_dir, then a download from
                     ultralytics' GitHub releases (only when allowed and reachable; MOAI_OFFLINE=1 stops it)
    device           "auto" (default) | "cpu" | "cuda"; CUDA runs ultralytics in half precision
    half             true/false to override half precision on CUDA (ultralytics only)
    score_threshold  0.1: scores strictly above it are stored
    max_detections   100 per image (highest scores kept)
    nms_iou          IoU above which NMS drops the lower-scored box of the same class. Default 0.7 for
                     ultralytics models, 0.6 for nanodet; end-to-end "boxes" graphs get no NMS unless set
    agnostic_nms     false: NMS across classes instead of per class
    labels           class names, one per line in a text file, or "coco80" for the built-in COCO list;
                     overrides the names a model carries (ultralytics .pt / ONNX metadata; a random-init
                     architecture only has "0", "1", ...)
    enabled          read by the pipeline (profiles), ignored here

  ultralytics only:
    imgsz            640: inference size (letterboxed, as `YOLO.predict` does)
    seed             0: the torch seed random-init weights are drawn with (every actor draws the same model)
    vocabulary       open-vocabulary mode: a text file of class names, one per line, embedded with the
                     model's text encoder (YOLO-World: CLIP; YOLOE: MobileCLIP). Needs such a model

  onnx only:
    preset           "centernet" | "nanodet": the I/O settings of the two shared COCO detectors
                     (../shared/models/README.md); any key given explicitly wins over the preset
    format           "ultralytics" (default): ultralytics' ONNX export, output [1, 4+nc, N] (cx, cy, w,
                     h, class scores) decoded + NMS, or [1, N, 6] for end-to-end exports; names, input
                     size and layout from the metadata ultralytics writes.
                     "boxes": an end-to-end graph whose output rows are x1, y1, x2, y2, score, class
                     (or three outputs named in `outputs`); "nanodet": NanoDet's GFL heads.
    input            {size: 512 | [h, w], layout: nchw | nhwc, channels: rgb | bgr, mean: [..], std: [..]
                     (tensor = (pixel - mean) / std, pixels 0-255), resize: letterbox | stretch,
                     pad_value: 114, name: the input tensor (default: the first)}
    outputs          boxes format only: {boxes, scores, classes} output names for graphs that return
                     three tensors; by default the first output holds [.., N, 6] rows
    box_order        "xyxy" (default) | "yxyx"                     (boxes format)
    box_units        "pixels" (of the network input, default) | "normalized" (0-1)  (boxes format)
    class_offset     0: subtracted from the graph's class numbers (1 for graphs that count from 1)
    strides, reg_max nanodet heads: [8, 16, 32] and 10
    threads          onnxruntime intra-op threads (0 = onnxruntime decides)
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from annotators.base import RANDOM_INIT, Detection, Expert, ImageInput
from annotators.device import Device, onnx_device, pick_device
from annotators.masks import nms
from annotators.weights import named_weights, resolve_weights, sha256_file, weights_dir
from core.errors import UserError, WeightsError

DEFAULT_SCORE_THRESHOLD = 0.1
DEFAULT_MAX_DETECTIONS = 100
ULTRALYTICS_NMS_IOU = 0.7  # ultralytics' own predict default
ULTRALYTICS_RELEASES = "https://github.com/ultralytics/assets/releases"
DOWNLOAD_PROBE_SECONDS = 3.0

COMMON_KEYS = {
    "backend",
    "model",
    "weights",
    "device",
    "score_threshold",
    "max_detections",
    "nms_iou",
    "agnostic_nms",
    "labels",
    "enabled",
}
ULTRALYTICS_KEYS = COMMON_KEYS | {"imgsz", "vocabulary", "half", "seed"}
ONNX_KEYS = COMMON_KEYS | {
    "preset",
    "format",
    "input",
    "outputs",
    "box_order",
    "box_units",
    "class_offset",
    "strides",
    "reg_max",
    "threads",
}
INPUT_KEYS = {"size", "layout", "channels", "mean", "std", "resize", "pad_value", "name"}
ONNX_FORMATS = ("ultralytics", "boxes", "nanodet")
CHOICES = {
    "layout": ("nchw", "nhwc"),
    "channels": ("rgb", "bgr"),
    "resize": ("letterbox", "stretch"),
    "box_order": ("xyxy", "yxyx"),
    "box_units": ("pixels", "normalized"),
}

# The two real COCO detectors in ../shared/models (their I/O is documented in its README).
ONNX_PRESETS: dict[str, dict[str, Any]] = {
    "centernet": {
        "format": "boxes",
        "input": {
            "size": 512,
            "layout": "nhwc",
            "channels": "rgb",
            "mean": 0.0,
            "std": 1.0,
            "resize": "stretch",
        },
        "box_order": "xyxy",
        "box_units": "pixels",
    },
    "nanodet": {
        "format": "nanodet",
        "input": {
            "size": 416,
            "layout": "nchw",
            "channels": "bgr",
            "mean": [103.53, 116.28, 123.675],
            "std": [57.375, 57.12, 58.395],
            "resize": "stretch",
        },
        "strides": [8, 16, 32],
        "reg_max": 10,
        "nms_iou": 0.6,
    },
}


def build_detector(config: Mapping[str, Any]) -> Expert:
    """The detection expert for a config block (see the module docstring for its keys)."""
    backend = str(config.get("backend", "ultralytics"))
    if backend == "ultralytics":
        return UltralyticsDetector(config)
    if backend == "onnx":
        return OnnxDetector(config)
    raise UserError(f"detection backend {backend!r} is unknown; expected 'ultralytics' or 'onnx'.")


# ----------------------------------------------------------------------------- shared by both backends


class _Detector(Expert):
    name = "detection"
    version = "1"
    allowed_keys: frozenset[str] = frozenset(COMMON_KEYS)

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        unknown = sorted(set(self.config) - self.allowed_keys)
        if unknown:
            raise UserError(
                f"detection ({self.config.get('backend', 'ultralytics')}): unknown config keys "
                f"{unknown}; known: {sorted(self.allowed_keys)}."
            )
        self.score_threshold = float(self.config.get("score_threshold", DEFAULT_SCORE_THRESHOLD))
        self.max_detections = int(self.config.get("max_detections", DEFAULT_MAX_DETECTIONS))
        self.agnostic_nms = bool(self.config.get("agnostic_nms", False))
        if not 0.0 <= self.score_threshold < 1.0:
            raise UserError(f"detection score_threshold must be in [0, 1), not {self.score_threshold}.")
        if self.max_detections < 1:
            raise UserError(f"detection max_detections must be at least 1, not {self.max_detections}.")
        if self.config.get("nms_iou") is not None and not 0.0 < float(self.config["nms_iou"]) <= 1.0:
            raise UserError(f"detection nms_iou must be in (0, 1], not {self.config['nms_iou']}.")
        self.device: Device | None = None
        self.names: list[str] = []
        self._weights_path: Path | None = None
        self._weights_sha: str | None = None

    def random_init(self) -> bool:
        return self.config.get("weights") == RANDOM_INIT

    def resolve_weight_file(self) -> Path:
        """The local weight file (found, or downloaded where allowed); raises WeightsError otherwise."""
        raise NotImplementedError

    def prepare(self) -> None:
        if not self.random_init():
            self._weights_path = self._weights_path or self.resolve_weight_file()

    def weights_sha256(self) -> str:
        if self.random_init():
            return RANDOM_INIT
        if self._weights_sha is None:
            self._weights_path = self._weights_path or self.resolve_weight_file()
            self._weights_sha = sha256_file(self._weights_path)
        return self._weights_sha

    def label(self, class_id: int) -> str:
        if not 0 <= class_id < len(self.names):
            raise ValueError(
                f"the model returned class {class_id} but only {len(self.names)} class names are "
                "known; check `labels` (and `class_offset`)"
            )
        return self.names[class_id]

    def to_records(
        self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, width: int, height: int
    ) -> list[Detection]:
        """Clip boxes to the image, drop empty ones and those at or below the floor, keep the best."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        classes = np.asarray(classes).reshape(-1).astype(np.int64)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        keep = (scores > self.score_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        order = np.flatnonzero(keep)
        order = order[np.argsort(-scores[order], kind="stable")][: self.max_detections]
        return [
            Detection(
                self.label(int(classes[i])), int(classes[i]), float(scores[i]), [float(v) for v in boxes[i]]
            )
            for i in order
        ]


def read_class_names(spec: str) -> list[str]:
    """Class names, one per non-blank line of a text file; "coco80" is the built-in COCO list."""
    if spec == "coco80":
        from corpora.coco_categories import COCO_CATEGORIES

        return [name for _, name, _ in COCO_CATEGORIES]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"class-name file {path} does not exist (detection `labels` / `vocabulary`).")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise UserError(f"class-name file {path} names no classes.")
    return names


def _weights_spec(weights: Any) -> dict[str, Any]:
    return named_weights(weights)


def _reachable(host: str, port: int = 443, timeout: float = DOWNLOAD_PROBE_SECONDS) -> bool:
    """Whether `host` accepts a connection within `timeout` s; DNS included, which sockets cannot time out."""
    opened: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=attempt, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(opened)


# ----------------------------------------------------------------------------- ultralytics backend


def import_ultralytics():
    """Import ultralytics with its run-time `pip install` switched off: a worker never installs packages.
    With MOAI_OFFLINE=1 ultralytics is told too, so it skips its own network checks."""
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    if os.environ.get("MOAI_OFFLINE", "0") == "1":
        os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics
    from ultralytics.utils import checks

    checks.AUTOINSTALL = False  # read at call time, so this also holds if ultralytics was imported earlier
    return ultralytics


def find_ultralytics_weights(model: str) -> Path:
    """Resolve a .pt name like ultralytics does, but fail fast and clearly instead of retrying offline."""
    ultralytics = import_ultralytics()
    from ultralytics.utils import SETTINGS

    given = Path(model).expanduser()
    looked = [given]
    if not given.is_absolute():
        looked += [weights_dir() / given.name, Path(SETTINGS["weights_dir"]) / given.name]
    for candidate in looked:
        if candidate.is_file():
            return candidate

    target = weights_dir() / given.name
    if os.environ.get("MOAI_OFFLINE", "0") == "1":
        reason = "downloads are disabled (MOAI_OFFLINE=1)"
    elif given.is_absolute():
        reason = "an absolute path is never downloaded"
    elif not _reachable("github.com"):
        reason = "github.com, where ultralytics publishes its weights, cannot be reached from this machine"
    else:
        from ultralytics.utils.downloads import attempt_download_asset

        try:
            downloaded = Path(attempt_download_asset(str(target), retry=1))
        except Exception as err:  # network, HTTP or disk errors: report them, never retry in a loop
            reason = (
                f"ultralytics {ultralytics.__version__} could not download it ({type(err).__name__}: {err})"
            )
        else:
            if downloaded.is_file():
                return downloaded
            reason = f"ultralytics {ultralytics.__version__} publishes no file of that name"
    where = ", ".join(str(p) for p in looked)
    raise WeightsError(
        f"Weight file '{given.name}' was not found (looked in: {where}) and {reason}. To fix: on a machine "
        f"with internet access run `yolo predict model={given.name}` or download it from {ULTRALYTICS_RELEASES}, "
        f"then put it in {weights_dir()} (or set MOAI_WEIGHTS, or give its full path as `model`). A random-init "
        "model needs an architecture file and `weights: random-init`."
    )


class UltralyticsDetector(_Detector):
    """YOLO detection (and YOLO-World / YOLOE open-vocabulary) through ultralytics' own predictor."""

    allowed_keys = frozenset(ULTRALYTICS_KEYS)

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        weights = self.config.get("weights")
        spec = _weights_spec(weights) if weights and not self.random_init() else {}
        named_file = spec.get("path") or spec.get("file")
        self.model_file = str(self.config.get("model") or named_file or "yolo11n.pt")
        if not Path(self.model_file).suffix:  # "yolo11n" means yolo11n.pt, as in ultralytics
            self.model_file += ".pt"
        is_architecture = Path(self.model_file).suffix.lower() in (".yaml", ".yml")
        if self.random_init() and not is_architecture:
            raise WeightsError(
                f"detection: `weights: random-init` builds a model from an ultralytics architecture file, so "
                f"`model` must be one (e.g. yolo11n.yaml), not '{self.model_file}'."
            )
        if is_architecture and not self.random_init():
            raise WeightsError(
                f"detection: model '{self.model_file}' is an architecture file, so it would run with random "
                "weights. Say `weights: random-init` to ask for that explicitly (its rows are labelled "
                "random-init), or name trained weights such as yolo11n.pt."
            )
        self.imgsz = self.config.get("imgsz", 640)
        self.nms_iou = float(self.config.get("nms_iou", ULTRALYTICS_NMS_IOU))
        self.seed = int(self.config.get("seed", 0))
        self.yolo = None

    def model_name(self) -> str:
        return Path(self.model_file).stem

    def resolve_weight_file(self) -> Path:
        if "weights" in self.config:
            return resolve_weights(_weights_spec(self.config["weights"]))
        return find_ultralytics_weights(self.model_file)

    def load(self) -> None:
        import_ultralytics()
        import torch
        from ultralytics import YOLO

        self.device = pick_device(self.config.get("device"))
        if self.random_init():
            with torch.random.fork_rng(devices=[]):  # seeded, without disturbing anyone else's RNG
                torch.manual_seed(self.seed)
                self.yolo = YOLO(self.model_file)
        else:
            self._weights_path = self._weights_path or self.resolve_weight_file()
            try:
                self.yolo = YOLO(str(self._weights_path))
            except Exception as err:  # truncated download, not a checkpoint, a newer ultralytics' format
                raise WeightsError(
                    f"detection: ultralytics cannot load {self._weights_path}: {type(err).__name__}: {err}"
                ) from err
        if self.yolo.task not in (
            "detect",
            "segment",
            "pose",
        ):  # the tasks whose results carry axis-aligned boxes
            raise UserError(
                f"detection: '{self.model_file}' is a {self.yolo.task} model; it predicts no boxes."
            )
        if "vocabulary" in self.config:
            self._set_vocabulary(read_class_names(str(self.config["vocabulary"])))
        names = self.yolo.names
        self.names = (
            read_class_names(self.config["labels"])
            if "labels" in self.config
            else [names[i] for i in range(len(names))]
        )

    def _set_vocabulary(self, vocabulary: list[str]) -> None:
        """Embed the vocabulary with the model's text encoder, or say plainly why that is impossible here."""
        if not hasattr(self.yolo, "set_classes"):
            raise UserError(
                f"detection: `vocabulary` needs an open-vocabulary model (YOLO-World, YOLOE); "
                f"'{self.model_file}' is a closed-set {type(self.yolo.model).__name__}."
            )
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)  # the text encoder's own download has no timeout of its own
        try:
            self.yolo.set_classes(vocabulary)
        except Exception as err:
            raise WeightsError(
                f"detection: open-vocabulary mode could not load the text encoder of '{self.model_file}' "
                f"({type(err).__name__}: {err}). YOLO-World needs the `clip` package "
                "(pip install git+https://github.com/ultralytics/CLIP.git) and its ViT-B/32 weights; YOLOE needs "
                f"mobileclip_blt.ts from {ULTRALYTICS_RELEASES} in ultralytics' weights_dir. Install / fetch them "
                "on a machine with internet access; this pipeline never installs packages at run time."
            ) from err
        finally:
            socket.setdefaulttimeout(previous)

    def predict(self, batch: Sequence[ImageInput]) -> list[list[Detection]]:
        if self.yolo is None:
            raise RuntimeError("call load() before predict()")
        records: list[list[Detection]] = [[] for _ in batch]
        for indices in same_shape_groups([item.rgb() for item in batch]):
            # ultralytics reads numpy images as BGR (OpenCV's order); ours are RGB.
            images = [np.ascontiguousarray(batch[i].image[..., ::-1]) for i in indices]
            results = self.yolo.predict(
                images,
                conf=self.score_threshold,
                iou=self.nms_iou,
                max_det=self.max_detections,
                imgsz=self.imgsz,
                agnostic_nms=self.agnostic_nms,
                device=self.device.torch_device,
                quantize=16 if self.config.get("half", self.device.half) else None,
                verbose=False,
            )
            for i, result in zip(indices, results, strict=True):
                boxes = result.boxes
                records[i] = self.to_records(
                    boxes.xyxy.float().cpu().numpy(),
                    boxes.conf.float().cpu().numpy(),
                    boxes.cls.cpu().numpy(),
                    batch[i].width,
                    batch[i].height,
                )
        return records


def same_shape_groups(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of the images grouped by shape, in order of first appearance.

    ultralytics letterboxes a batch of equal shapes to the smallest stride-multiple rectangle but a
    mixed batch to the full square, so an image's boxes would depend on its batch-mates. Running each
    shape group as its own batch gives every image the input it gets when predicted alone (batched
    CPU/GPU kernels may still round the last float digits differently).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    return list(groups.values())


# ----------------------------------------------------------------------------- onnx backend


@dataclass(frozen=True)
class Placement:
    """Where the original image sits in the network input, to map boxes back to original pixels."""

    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - self.pad_x) / self.scale_x
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - self.pad_y) / self.scale_y
        return boxes


def letterbox(
    image: np.ndarray, height: int, width: int, pad_value: int = 114
) -> tuple[np.ndarray, Placement]:
    """Resize keeping the aspect ratio and pad to height x width, centred: exactly ultralytics' LetterBox."""
    import cv2

    h, w = image.shape[:2]
    ratio = min(height / h, width / w)
    new_w, new_h = max(round(w * ratio), 1), max(round(h * ratio), 1)
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_w, pad_h = (width - new_w) / 2, (height - new_h) / 2
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return image, Placement(new_w / w, new_h / h, left, top)


def stretch(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, Placement]:
    """Resize to height x width ignoring the aspect ratio (what CenterNet and NanoDet were run with)."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image, Placement(width / w, height / h)


@dataclass(frozen=True)
class InputSpec:
    """How an RGB uint8 image becomes the network's input tensor."""

    name: str
    height: int
    width: int
    layout: str = "nchw"  # "nchw" | "nhwc"
    channels: str = "rgb"  # "rgb" | "bgr"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    resize: str = "letterbox"  # "letterbox" | "stretch"
    pad_value: int = 114

    def tensor(self, image: np.ndarray) -> tuple[np.ndarray, Placement]:
        if self.resize == "letterbox":
            resized, placement = letterbox(image, self.height, self.width, self.pad_value)
        else:
            resized, placement = stretch(image, self.height, self.width)
        if self.channels == "bgr":
            resized = resized[..., ::-1]
        pixels = resized.astype(np.float32)
        if any(self.mean):
            pixels -= np.asarray(self.mean, dtype=np.float32)
        if any(s != 1.0 for s in self.std):
            pixels /= np.asarray(self.std, dtype=np.float32)
        if self.layout == "nchw":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels[None]), placement


def _metadata_value(metadata: Mapping[str, str], key: str, default: Any) -> Any:
    """A value ultralytics wrote into the ONNX metadata with str(); `default` when absent."""
    import ast

    return ast.literal_eval(metadata[key]) if key in metadata else default


def _triple(value: Any, key: str) -> tuple[float, float, float]:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3)]
    if len(values) != 3:
        raise UserError(
            f"detection input.{key} must be one number or three (one per channel), not {value!r}."
        )
    return values[0], values[1], values[2]


def _size(value: Any) -> tuple[int, int]:
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value, value])]
    if len(values) != 2:
        raise UserError(f"detection input.size must be one number or [height, width], not {value!r}.")
    return values[0], values[1]


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, agnostic: bool = False
) -> np.ndarray:
    """Per-class NMS by offsetting each class's boxes far apart (ultralytics' trick, max_wh = 7680)."""
    offsets = 0.0 if agnostic else classes.astype(boxes.dtype)[:, None] * 7680.0
    return nms(boxes + offsets, scores, iou_threshold)


@dataclass
class Candidates:
    """Boxes (x1, y1, x2, y2 in network-input pixels), scores and class indices of one image."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def decode_ultralytics(
    output: np.ndarray,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    agnostic: bool = False,
    end2end: bool = False,
) -> Candidates:
    """ultralytics' ONNX export: [1, 4+nc, N] (cx, cy, w, h, scores) -> NMS as `non_max_suppression`;
    an end-to-end export ([1, N, 6] rows x1, y1, x2, y2, score, class) only needs the score filter."""
    prediction = np.asarray(output, dtype=np.float32)[0]
    if end2end or prediction.shape[-1] == 6:  # the same test ultralytics applies
        rows = prediction[prediction[:, 4] > score_threshold][:max_detections]
        return Candidates(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64))
    rows = prediction.T  # [N, 4 + nc]
    class_scores = rows[:, 4:]
    classes = class_scores.argmax(1)
    scores = class_scores[np.arange(len(rows)), classes]
    keep = scores > score_threshold
    rows, scores, classes = rows[keep], scores[keep], classes[keep]
    if len(scores) > 30000:  # ultralytics' max_nms: the best 30,000 go into NMS
        best = np.argsort(-scores, kind="stable")[:30000]
        rows, scores, classes = rows[best], scores[best], classes[best]
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2] / 2, rows[:, 3] / 2
    boxes = np.stack([cx - w, cy - h, cx + w, cy + h], axis=1)
    kept = batched_nms(boxes, scores, classes, iou_threshold, agnostic)[:max_detections]
    return Candidates(boxes[kept], scores[kept], classes[kept])


def decode_boxes(
    rows: np.ndarray,
    order: str = "xyxy",
    units: str = "pixels",
    input_hw: tuple[int, int] = (1, 1),
    class_offset: int = 0,
) -> Candidates:
    """End-to-end graphs: rows of x1, y1, x2, y2 (or y1, x1, y2, x2), score, class."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, rows.shape[-1])
    boxes = rows[:, [1, 0, 3, 2]] if order == "yxyx" else rows[:, :4]
    if units == "normalized":
        height, width = input_hw
        boxes = boxes * np.array([width, height, width, height], dtype=np.float64)
    classes = np.rint(rows[:, 5]).astype(np.int64) - class_offset
    return Candidates(boxes, rows[:, 4], classes)


def decode_nanodet(
    outputs: Sequence[np.ndarray],
    input_hw: tuple[int, int],
    strides: Sequence[int],
    reg_max: int,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    agnostic: bool = False,
) -> Candidates:
    """NanoDet GFL heads: per stride, class scores [1, N, nc] (sigmoid applied) and box distributions
    [1, N, 4 x (reg_max+1)]; the expected bin x stride is the distance from the cell centre to each side."""
    bins = reg_max + 1
    scores_by_n = {o.shape[1]: o[0] for o in outputs if o.shape[-1] != 4 * bins}
    boxes_by_n = {o.shape[1]: o[0] for o in outputs if o.shape[-1] == 4 * bins}
    height, width = input_hw
    all_boxes, all_scores, all_classes = [], [], []
    for stride in strides:
        rows, cols = -(-height // stride), -(-width // stride)
        n = rows * cols
        if n not in scores_by_n or n not in boxes_by_n:
            raise ValueError(
                f"nanodet: no head outputs of {n} cells for stride {stride} "
                f"(found {sorted(scores_by_n)} / {sorted(boxes_by_n)})"
            )
        class_scores, distribution = scores_by_n[n], boxes_by_n[n]
        classes = class_scores.argmax(1)
        scores = class_scores[np.arange(n), classes]
        keep = np.flatnonzero(scores > score_threshold)
        logits = distribution[keep].reshape(-1, 4, bins).astype(np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        distances = (probabilities * np.arange(bins)).sum(-1) * stride  # left, top, right, bottom
        cx = (keep % cols + 0.5) * stride
        cy = (keep // cols + 0.5) * stride
        all_boxes.append(
            np.stack(
                [cx - distances[:, 0], cy - distances[:, 1], cx + distances[:, 2], cy + distances[:, 3]],
                axis=1,
            )
        )
        all_scores.append(scores[keep])
        all_classes.append(classes[keep])
    boxes, scores, classes = (
        np.concatenate(all_boxes),
        np.concatenate(all_scores),
        np.concatenate(all_classes),
    )
    kept = batched_nms(boxes, scores, classes, iou_threshold, agnostic)[:max_detections]
    return Candidates(boxes[kept], scores[kept], classes[kept])


class OnnxDetector(_Detector):
    """Any ONNX detector through onnxruntime: ultralytics exports, end-to-end box graphs, NanoDet."""

    allowed_keys = frozenset(ONNX_KEYS)

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        if self.random_init():
            raise WeightsError(
                "detection: the onnx backend runs a trained graph; `weights: random-init` is only "
                "possible with the ultralytics backend and an architecture .yaml."
            )
        preset = self.config.get("preset")
        if preset is not None and preset not in ONNX_PRESETS:
            raise UserError(f"detection: unknown onnx preset {preset!r}; known: {sorted(ONNX_PRESETS)}.")
        self.settings = {**ONNX_PRESETS.get(preset, {}), **self.config}
        self.settings["input"] = {
            **ONNX_PRESETS.get(preset, {}).get("input", {}),
            **(self.config.get("input") or {}),
        }
        self.format = str(self.settings.get("format", "ultralytics"))
        if self.format not in ONNX_FORMATS:
            raise UserError(
                f"detection: onnx format {self.format!r} is unknown; expected one of {ONNX_FORMATS}."
            )
        unknown_input = sorted(set(self.settings["input"]) - INPUT_KEYS)
        if unknown_input:
            raise UserError(f"detection: unknown input keys {unknown_input}; known: {sorted(INPUT_KEYS)}.")
        for key, allowed in CHOICES.items():
            value = self.settings["input"].get(key, self.settings.get(key, allowed[0]))
            if value not in allowed:
                raise UserError(f"detection: {key} {value!r} is not one of {allowed}.")
        if "weights" not in self.config and not str(self.config.get("model", "")).endswith(".onnx"):
            raise WeightsError(
                "detection: the onnx backend needs `weights` (the .onnx file) or `model` set to "
                "the .onnx path."
            )
        default_iou = None if self.format == "boxes" else ULTRALYTICS_NMS_IOU
        nms_iou = self.settings.get("nms_iou", default_iou)
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.session = None
        self.end2end = False
        self.input: InputSpec | None = None

    def model_name(self) -> str:
        if "model" in self.config:
            return str(self.config["model"])
        spec = _weights_spec(self.config["weights"])
        return Path(str(spec.get("path") or spec.get("file"))).name

    def resolve_weight_file(self) -> Path:
        return resolve_weights(_weights_spec(self.config.get("weights", self.config.get("model"))))

    def load(self) -> None:
        import onnxruntime as ort

        self.device = onnx_device(self.config.get("device"))
        self._weights_path = self._weights_path or self.resolve_weight_file()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        options.intra_op_num_threads = int(self.settings.get("threads", 0))
        try:
            self.session = ort.InferenceSession(
                str(self._weights_path), options, providers=self.device.onnx_providers()
            )
        except Exception as err:  # not an ONNX file, or an operator this onnxruntime lacks
            raise WeightsError(f"detection: onnxruntime cannot load {self._weights_path}: {err}") from err
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.input = self._input_spec(metadata)
        self.names = self._class_names(metadata)
        self._check_named_outputs()
        self.end2end = _metadata_value(metadata, "end2end", False) or _metadata_value(
            metadata, "args", {}
        ).get("nms")

    def _input_spec(self, metadata: Mapping[str, str]) -> InputSpec:
        """Input settings: explicit config, else (ultralytics format) what ultralytics' export implies."""
        given = self.settings["input"]
        graph_input = self.session.get_inputs()[0]
        name = str(given.get("name", graph_input.name))
        layout = str(given.get("layout", "nchw"))
        if "size" in given:
            height, width = _size(given["size"])
        elif "imgsz" in metadata:
            height, width = _size(_metadata_value(metadata, "imgsz", None))
        else:
            dims = graph_input.shape[2:4] if layout == "nchw" else graph_input.shape[1:3]
            if not all(isinstance(d, int) for d in dims):
                raise UserError(
                    f"detection: {self._weights_path.name} has a dynamic input size; set input.size."
                )
            height, width = dims
        ultralytics_default = self.format == "ultralytics"
        return InputSpec(
            name=name,
            height=height,
            width=width,
            layout=layout,
            channels=str(given.get("channels", "rgb")),
            mean=_triple(given.get("mean", 0.0), "mean"),
            std=_triple(given.get("std", 255.0 if ultralytics_default else 1.0), "std"),
            resize=str(given.get("resize", "letterbox" if ultralytics_default else "stretch")),
            pad_value=int(given.get("pad_value", 114)),
        )

    def _class_names(self, metadata: Mapping[str, str]) -> list[str]:
        if "labels" in self.config:
            return read_class_names(str(self.config["labels"]))
        if "names" in metadata:  # ultralytics writes str({0: 'person', ...})
            names = _metadata_value(metadata, "names", None)
            return [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
        raise UserError(
            f"detection: {self._weights_path.name} carries no class names; set `labels` to a text "
            'file with one name per line (or "coco80").'
        )

    def predict(self, batch: Sequence[ImageInput]) -> list[list[Detection]]:
        if self.session is None:
            raise RuntimeError("call load() before predict()")
        return [self._predict_one(item) for item in batch]

    def _predict_one(self, item: ImageInput) -> list[Detection]:
        tensor, placement = self.input.tensor(item.rgb())
        outputs = self.session.run(None, {self.input.name: tensor})
        candidates = self._decode(outputs)
        boxes = placement.to_original(candidates.boxes)
        return self.to_records(boxes, candidates.scores, candidates.classes, item.width, item.height)

    def _decode(self, outputs: list[np.ndarray]) -> Candidates:
        if self.format == "ultralytics":
            return decode_ultralytics(
                outputs[0],
                self.score_threshold,
                self.nms_iou,
                self.max_detections,
                self.agnostic_nms,
                self.end2end,
            )
        if self.format == "nanodet":
            return decode_nanodet(
                outputs,
                (self.input.height, self.input.width),
                [int(s) for s in self.settings.get("strides", (8, 16, 32))],
                int(self.settings.get("reg_max", 10)),
                self.score_threshold,
                self.nms_iou,
                self.max_detections,
                self.agnostic_nms,
            )
        candidates = decode_boxes(
            self._box_rows(outputs),
            str(self.settings.get("box_order", "xyxy")),
            str(self.settings.get("box_units", "pixels")),
            (self.input.height, self.input.width),
            int(self.settings.get("class_offset", 0)),
        )
        if self.nms_iou is None:
            return candidates
        kept = batched_nms(
            candidates.boxes, candidates.scores, candidates.classes, self.nms_iou, self.agnostic_nms
        )
        return Candidates(candidates.boxes[kept], candidates.scores[kept], candidates.classes[kept])

    def _check_named_outputs(self) -> None:
        named = self.settings.get("outputs")
        if not named:
            return
        graph_outputs = [o.name for o in self.session.get_outputs()]
        wrong = {k: named.get(k) for k in ("boxes", "scores", "classes") if named.get(k) not in graph_outputs}
        if wrong:
            raise UserError(
                f"detection: `outputs` {wrong} do not name outputs of {self._weights_path.name}; it "
                f"has {graph_outputs}."
            )

    def _box_rows(self, outputs: list[np.ndarray]) -> np.ndarray:
        """[N, 6] rows from one output, or from the three outputs named in `outputs`."""
        named = self.settings.get("outputs")
        if not named:
            return outputs[0].reshape(-1, outputs[0].shape[-1])
        by_name = dict(zip((o.name for o in self.session.get_outputs()), outputs, strict=True))
        boxes = by_name[named["boxes"]].reshape(-1, 4)
        return np.concatenate(
            [boxes, by_name[named["scores"]].reshape(-1, 1), by_name[named["classes"]].reshape(-1, 1)], axis=1
        )


# ----------------------------------------------------------------------------- registry facts
# (annotators/registry.py reads these: the config keys each backend reads, and the warehouse table)
DEFAULT_BACKEND = "ultralytics"
BACKEND_KEYS: dict[str, frozenset[str] | None] = {
    "ultralytics": frozenset(ULTRALYTICS_KEYS),
    "onnx": frozenset(ONNX_KEYS),
}
# Peak RSS of one worker on the sample at batch 2 (measured: onnx CenterNet 0.88 GiB, ultralytics
# YOLO11n 0.99 GiB), plus a margin: Ray reserves it per actor so a node is not over-packed.
MEMORY_MB = {"onnx": 1100, "ultralytics": 1250}
# Model time per image with one thread (measured on the sample in Ray actors, 2-core machine): how the
# job shares cores between experts when this warehouse has no history of them yet.
COST_MS = {"onnx": 90, "ultralytics": 300}
TABLE = "detections"
COLUMNS = [
    ("det_index", pa.int32()),
    ("label", pa.string()),
    ("class_id", pa.int32()),
    ("score", pa.float32()),
    ("x1", pa.float32()),
    ("y1", pa.float32()),
    ("x2", pa.float32()),
    ("y2", pa.float32()),
]


def to_columns(index: int, r: Mapping[str, Any]) -> dict[str, Any]:
    x1, y1, x2, y2 = r["box"]
    return {"det_index": index, "label": r["label"], "class_id": r["class_id"], "score": r["score"],
            "x1": x1, "y1": y1, "x2": x2, "y2": y2}  # fmt: skip


def from_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"label": row["label"], "class_id": row["class_id"], "score": row["score"],
            "box": [row["x1"], row["y1"], row["x2"], row["y2"]]}  # fmt: skip
