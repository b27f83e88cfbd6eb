"""OCR expert: the text lines in every image, each with its recognition score and polygon.

MoAI ran PaddleOCR (angle classifier on, Chinese+English model) on a 490x490 squash of the image and
handed it RGB arrays although PaddleOCR reads BGR. Here OCR runs on the image at its native
resolution (small text survives; only images whose longer side exceeds `max_side` are scaled down)
and every backend receives the channel order it expects (BGR for all three). The same PP-OCR
detection + recognition (+ 0/180 degree text-line classifier) models run through one of:

  rapidocr               rapidocr 3.x with the PP-OCRv6 small det/rec ONNX models shipped inside the
                         package (the default: best accuracy on our rendered test set, see tests/test_ocr.py)
  rapidocr-onnxruntime   rapidocr-onnxruntime 1.4 with its shipped PP-OCRv4 (mobile) ONNX models
  paddleocr              PaddleOCR 3.x itself (an extra: `pip install moai-forge[paddle]`), given local
                         model folders; it pins numpy<2.4, so it is not part of the default install

Records: `TextLine(text, score, polygon)`, polygon = 4 [x, y] points clockwise from the top-left corner,
in pixels of the original image, lines in reading order (rows top to bottom, left to right within a
row). Every line scoring at least `score_threshold` (a low floor) is stored; the verbalizer applies
MoAI's 0.85 later, so the threshold can change without re-running OCR.

Nothing is ever downloaded: the rapidocr backends are given explicit model paths (rapidocr 3.x would
otherwise fetch any model it does not find), and a missing file is a WeightsError naming it.

Config keys (one `ocr:` block of a profile; unknown keys are refused, so typos cannot pass):

    backend           "rapidocr" (default) | "rapidocr-onnxruntime" | "paddleocr"
    device            "auto" (default) | "cpu" | "cuda": onnxruntime's CUDA provider when there is one
                      (paddleocr: "gpu:0"), the CPU otherwise
    score_threshold   0.5: lines scoring below it are not stored
    max_side          4000 (PaddleOCR 3's limit): longer image sides are scaled down to this before
                      detection (boxes are still mapped back to original pixels); 0 = never scale down
    det_min_side      736 (rapidocr's default): the detector's input is scaled *up* until its short side
                      reaches this, so the small text of small images (COCO's 640x480) reaches the size
                      the detector was trained on. 64 (PaddleOCR 3's value) feeds native pixels and is up
                      to 3x faster on small images, but reads fewer lines of small text
    angle_classifier  true: rotate text lines the classifier finds upside down (MoAI had it on)
    threads           0: onnxruntime intra-op threads per model; 0 = $OMP_NUM_THREADS when set (Ray sets
                      it to an actor's CPU share), else onnxruntime's default (all cores)
    det_model         another PP-OCR text-detection model: an .onnx file (rapidocr backends) or an
                      inference-model folder (paddleocr, where det/rec/cls_model are required)
    rec_model         the recognition model, likewise (its ONNX metadata must carry the character list)
    cls_model         the text-line orientation model, likewise (used when angle_classifier is on)
    enabled           read by the pipeline (profiles), ignored here
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from annotators.base import Expert, ImageInput, TextLine, field_of
from annotators.device import Device, onnx_device, pick_device
from annotators.weights import sha256_file
from core.errors import UserError, WeightsError

DEFAULT_BACKEND = "rapidocr"
BACKENDS = ("rapidocr", "rapidocr-onnxruntime", "paddleocr")
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_MAX_SIDE = 4000
DEFAULT_DET_MIN_SIDE = 736
MODEL_ROLES = ("det", "cls", "rec")  # the order they run in; also the order they are hashed in

COMMON_KEYS = {
    "backend",
    "device",
    "score_threshold",
    "max_side",
    "det_min_side",
    "angle_classifier",
    "threads",
    "det_model",
    "rec_model",
    "cls_model",
    "enabled",
}
PADDLE_EXTRA = "pip install moai-forge[paddle]"

# The models each rapidocr package ships in its own `models/` folder, and their display names.
SHIPPED_MODELS: dict[str, dict[str, str]] = {
    "rapidocr": {
        "det": "PP-OCRv6_det_small.onnx",
        "rec": "PP-OCRv6_rec_small.onnx",
        "cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    },
    "rapidocr-onnxruntime": {
        "det": "ch_PP-OCRv4_det_infer.onnx",
        "rec": "ch_PP-OCRv4_rec_infer.onnx",
        "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    },
}
SHIPPED_MODEL_NAMES = {"rapidocr": "PP-OCRv6-small", "rapidocr-onnxruntime": "PP-OCRv4-mobile"}
PACKAGES = {"rapidocr": "rapidocr", "rapidocr-onnxruntime": "rapidocr_onnxruntime"}


def build_ocr(config: Mapping[str, Any]) -> Expert:
    """The OCR expert for a config block (see the module docstring for its keys)."""
    backend = str(config.get("backend", DEFAULT_BACKEND))
    if backend == "rapidocr":
        return RapidOcrExpert(config)
    if backend == "rapidocr-onnxruntime":
        return RapidOcrOnnxruntimeExpert(config)
    if backend == "paddleocr":
        return PaddleOcrExpert(config)
    raise UserError(f"ocr backend {backend!r} is unknown; expected one of {list(BACKENDS)}.")


# ----------------------------------------------------------------------------- records


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Our images are RGB; PP-OCR models are trained on OpenCV (BGR) decodes, and all three libraries
    take an ndarray as BGR, as it is: rapidocr's LoadImage converts only files and PIL images to BGR,
    PaddleX's ReadImage(format="BGR") returns arrays untouched."""
    return np.ascontiguousarray(image[..., ::-1])


def _bounds(polygon: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in polygon]
    ys = [p[1] for p in polygon]
    return min(xs), min(ys), max(xs), max(ys)


def reading_order(lines: Sequence[Any]) -> list[Any]:
    """OCR lines (records or their stored dicts) in reading order: rows top to bottom, left to right
    within a row; lines without a polygon last. A line joins the current row when its vertical centre
    lies within the vertical extent of the row's first (topmost) line, so words of one row whose tops
    differ by a few pixels stay in order at any text size. Ties are broken by text, so the order never
    depends on input order. Decided, not MoAI's: MoAI's text follows PaddleOCR's `sorted_boxes` (a
    fixed 10 px tolerance on the top-left y, tuned for its 490 px squash; too little for large text
    at native resolution). Both orders agree on ordinary layouts; verbalize/moai.py says when, and
    tests/test_verbalize.py checks it against a copy of `sorted_boxes`."""
    placed, unplaced = [], []
    for line in lines:
        points = np.asarray(field_of(line, "polygon") or [], dtype=np.float64).reshape(-1, 2)
        if len(points) == 0:
            unplaced.append(line)
        else:
            (x0, y0), (_, y1) = points.min(axis=0), points.max(axis=0)
            placed.append((float(y0), float(y1), float(x0), line))
    placed.sort(key=lambda p: (p[0], p[2], p[1], str(field_of(p[3], "text", ""))))
    rows: list[list[tuple[float, float, float, Any]]] = []
    for entry in placed:
        center = (entry[0] + entry[1]) / 2
        if rows and rows[-1][0][0] <= center <= rows[-1][0][1]:
            rows[-1].append(entry)
        else:
            rows.append([entry])
    ordered = [e[3] for row in rows for e in sorted(row, key=lambda e: (e[2], e[0]))]
    return ordered + sorted(unplaced, key=lambda line: str(field_of(line, "text", "")))


def to_lines(raw: Sequence[tuple[str, float, Any]], width: int, height: int, floor: float) -> list[TextLine]:
    """Library output (text, score, 4x2 points) -> TextLines at or above the floor, in reading order."""
    lines = []
    for text, score, points in raw:
        text = str(text)
        if not text.strip() or float(score) < floor:
            continue
        quad = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        quad[:, 0] = quad[:, 0].clip(0, width)
        quad[:, 1] = quad[:, 1].clip(0, height)
        lines.append(TextLine(text, float(score), [[float(x), float(y)] for x, y in quad]))
    return reading_order(lines)


# ----------------------------------------------------------------------------- shared by all backends


def intra_op_threads(configured: int) -> int:
    """Threads per onnxruntime session: the config, else the actor's OMP_NUM_THREADS, else -1 (library default)."""
    if configured > 0:
        return min(configured, os.cpu_count() or configured)
    try:
        from_env = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        from_env = 0
    return min(from_env, os.cpu_count() or from_env) if from_env > 0 else -1


class _OcrExpert(Expert):
    name = "ocr"
    version = "1"
    backend = ""
    allowed_keys: frozenset[str] = frozenset(COMMON_KEYS)

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        self.config.setdefault("backend", self.backend)
        unknown = sorted(set(self.config) - self.allowed_keys)
        if unknown:
            raise UserError(
                f"ocr ({self.backend}): unknown config keys {unknown}; known: {sorted(self.allowed_keys)}."
            )
        self.score_threshold = float(self.config.get("score_threshold", DEFAULT_SCORE_THRESHOLD))
        self.max_side = int(self.config.get("max_side", DEFAULT_MAX_SIDE))
        self.det_min_side = int(self.config.get("det_min_side", DEFAULT_DET_MIN_SIDE))
        self.angle_classifier = self.config.get("angle_classifier", True)
        self.threads = int(self.config.get("threads", 0))
        if not 0.0 <= self.score_threshold < 1.0:
            raise UserError(f"ocr score_threshold must be in [0, 1), not {self.score_threshold}.")
        if self.max_side < 0 or 0 < self.max_side < 32:
            raise UserError(f"ocr max_side must be 0 (never scale down) or at least 32, not {self.max_side}.")
        if self.det_min_side < 32:
            raise UserError(f"ocr det_min_side must be at least 32, not {self.det_min_side}.")
        if self.threads < 0:
            raise UserError(f"ocr threads must be 0 (automatic) or positive, not {self.threads}.")
        if not isinstance(self.angle_classifier, bool):
            raise UserError(f"ocr angle_classifier must be true or false, not {self.angle_classifier!r}.")
        self.device: Device | None = None
        self.engine: Any = None
        self._weights_sha: str | None = None

    # Backends ---------------------------------------------------------------------------------
    def model_files(self) -> dict[str, Path]:
        """The model file (or folder) of each role that runs: det, rec and, with the classifier, cls."""
        raise NotImplementedError

    def build_engine(self) -> Any:
        raise NotImplementedError

    def run_engine(self, bgr: np.ndarray) -> list[tuple[str, float, Any]]:
        """(text, score, 4x2 points in original pixels) for one BGR image, as the library returns them."""
        raise NotImplementedError

    # Shared -----------------------------------------------------------------------------------
    def roles(self) -> tuple[str, ...]:
        return MODEL_ROLES if self.angle_classifier else ("det", "rec")

    def effective_max_side(self) -> int:
        """max_side 0 means never scale down; the libraries want a number, so give them a huge one."""
        return self.max_side or 1 << 30

    def choose_device(self) -> Device:
        return onnx_device(self.config.get("device"))

    def load(self) -> None:
        self.device = self.choose_device()
        self.weights_sha256()  # checks every model file exists before anything is built
        self.engine = self.build_engine()

    def weights_sha256(self) -> str:
        """sha256 over the per-file sha256 of every model that runs, in run order; computed once."""
        if self._weights_sha is None:
            digest = hashlib.sha256()
            for role, path in self.model_files().items():
                digest.update(f"{role}={_sha256_model(path)}\n".encode())
            self._weights_sha = digest.hexdigest()
        return self._weights_sha

    def predict(self, batch: Sequence[ImageInput]) -> list[list[TextLine]]:
        if self.engine is None:
            raise RuntimeError("call load() before predict()")
        results = []
        for item in batch:
            image = item.rgb()
            results.append(
                to_lines(self.run_engine(to_bgr(image)), item.width, item.height, self.score_threshold)
            )
        return results


def _sha256_model(path: Path) -> str:
    """A model file's sha256, or for a model folder the sha256 of its files' names and digests."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}={sha256_file(file)}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- rapidocr backends


class _RapidOcrBase(_OcrExpert):
    """The two rapidocr packages: shipped ONNX models unless det/rec/cls_model name others."""

    def package_dir(self) -> Path:
        package = PACKAGES[self.backend]
        try:
            module = importlib.import_module(package)
        except ImportError as err:
            raise UserError(
                f"ocr backend '{self.backend}' needs the '{package.replace('_', '-')}' package, which "
                f"is not importable ({err}); reinstall moai-forge."
            ) from err
        return Path(module.__file__).resolve().parent

    def model_files(self) -> dict[str, Path]:
        files = {}
        for role in self.roles():
            configured = self.config.get(f"{role}_model")
            path = (
                Path(str(configured)).expanduser()
                if configured
                else self.package_dir() / "models" / SHIPPED_MODELS[self.backend][role]
            )
            if not path.is_file():
                where = (
                    "given as" if configured else f"shipped inside the {PACKAGES[self.backend]} package at"
                )
                raise WeightsError(
                    f"ocr: the {role} model {where} {path} does not exist. This expert never "
                    "downloads models: reinstall the package, or give an existing .onnx file as "
                    f"`{role}_model`."
                )
            files[role] = path
        return files

    def model_name(self) -> str:
        if not any(self.config.get(f"{role}_model") for role in MODEL_ROLES):
            return SHIPPED_MODEL_NAMES[self.backend]
        return "+".join(path.stem for path in self.model_files().values())

    def use_cuda(self) -> bool:
        return "CUDAExecutionProvider" in self.device.onnx_providers()

    def sessions(self) -> dict[str, Any]:
        """The onnxruntime sessions the engine runs, by role (to check providers and threads)."""
        raise NotImplementedError

    def providers(self) -> dict[str, str]:
        """The execution provider each model actually runs on, e.g. {"det": "CPUExecutionProvider", ...}."""
        return {role: session.get_providers()[0] for role, session in self.sessions().items()}


class RapidOcrExpert(_RapidOcrBase):
    """rapidocr 3.x (PP-OCRv6 small by default)."""

    backend = "rapidocr"

    def engine_params(self) -> dict[str, Any]:
        """rapidocr 3.x settings: explicit model paths (so it never looks for, or fetches, its defaults)."""
        files = self.model_files()
        params: dict[str, Any] = {
            "Global.text_score": self.score_threshold,
            "Global.use_cls": self.angle_classifier,
            "Global.max_side_len": self.effective_max_side(),
            "Det.limit_side_len": self.det_min_side,
            "Det.limit_type": "min",
            "Global.log_level": "error",
            "Det.model_path": str(files["det"]),
            "Rec.model_path": str(files["rec"]),
            "EngineConfig.onnxruntime.intra_op_num_threads": intra_op_threads(self.threads),
            "EngineConfig.onnxruntime.use_cuda": self.use_cuda(),
        }
        if "cls" in files:
            params["Cls.model_path"] = str(files["cls"])
        return params

    def build_engine(self) -> Any:
        from rapidocr import RapidOCR

        engine = RapidOCR(params=self.engine_params())
        # rapidocr 3.x builds each model on first use; build them now, once per worker, not mid-batch.
        engine._load_det_model()
        engine._load_rec_model()
        if self.angle_classifier:
            engine._load_cls_model()
        return engine

    def sessions(self) -> dict[str, Any]:
        models = {"det": self.engine.text_det, "cls": self.engine.text_cls, "rec": self.engine.text_rec}
        return {role: models[role].session.session for role in self.roles()}

    def run_engine(self, bgr: np.ndarray) -> list[tuple[str, float, Any]]:
        result = self.engine(bgr)
        if getattr(result, "txts", None) is None or getattr(result, "boxes", None) is None:
            return []  # nothing found (rapidocr returns an empty output object)
        return list(zip(result.txts, result.scores, result.boxes, strict=True))


class RapidOcrOnnxruntimeExpert(_RapidOcrBase):
    """rapidocr-onnxruntime 1.4 (PP-OCRv4 mobile)."""

    backend = "rapidocr-onnxruntime"

    def engine_params(self) -> dict[str, Any]:
        files = self.model_files()
        cuda = self.use_cuda()
        params: dict[str, Any] = {
            "text_score": self.score_threshold,
            "use_cls": self.angle_classifier,
            "max_side_len": self.effective_max_side(),
            "det_limit_side_len": self.det_min_side,
            "det_limit_type": "min",
            "intra_op_num_threads": intra_op_threads(self.threads),
            "det_model_path": str(files["det"]),
            "rec_model_path": str(files["rec"]),
            "det_use_cuda": cuda,
            "rec_use_cuda": cuda,
            "cls_use_cuda": cuda,
        }
        if "cls" in files:
            params["cls_model_path"] = str(files["cls"])
        return params

    def build_engine(self) -> Any:
        from rapidocr_onnxruntime import RapidOCR

        return RapidOCR(**self.engine_params())

    def sessions(self) -> dict[str, Any]:
        wrappers = {
            "det": self.engine.text_det.infer,
            "cls": self.engine.text_cls.infer,
            "rec": self.engine.text_rec.session,
        }
        return {role: wrappers[role].session for role in self.roles()}

    def run_engine(self, bgr: np.ndarray) -> list[tuple[str, float, Any]]:
        result, _ = self.engine(bgr)
        return [(text, score, box) for box, text, score in result or []]


# ----------------------------------------------------------------------------- paddleocr backend


def import_paddleocr():
    """PaddleOCR is an optional extra; say how to get it instead of failing with a bare ImportError."""
    try:
        return importlib.import_module("paddleocr")
    except ImportError as err:
        raise UserError(
            f"ocr backend 'paddleocr' needs the PaddleOCR package, which is not installed ({err}). "
            f"Install the extra with `{PADDLE_EXTRA}` (it pins numpy<2.4), or use the default "
            "backend 'rapidocr', which runs the same PP-OCR models through onnxruntime."
        ) from err


class PaddleOcrExpert(_OcrExpert):
    """PaddleOCR 3.x run on local inference-model folders (it cannot fetch its models offline)."""

    backend = "paddleocr"

    def choose_device(self) -> Device:
        """PaddlePaddle does not use onnxruntime: CUDA whenever one is visible (its GPU build is the user's choice)."""
        return pick_device(self.config.get("device"))

    def model_files(self) -> dict[str, Path]:
        missing = [f"{role}_model" for role in self.roles() if not self.config.get(f"{role}_model")]
        if missing:
            raise WeightsError(
                f"ocr backend 'paddleocr' needs local PaddleOCR inference-model folders: set "
                f"{missing} (PaddleOCR's own download does not work offline)."
            )
        files = {role: Path(str(self.config[f"{role}_model"])).expanduser() for role in self.roles()}
        for role, path in files.items():
            if not path.is_dir():
                raise WeightsError(f"ocr: the paddleocr {role} model folder {path} does not exist.")
        return files

    def model_name(self) -> str:
        return "+".join(path.name for path in self.model_files().values())

    def engine_params(self) -> dict[str, Any]:
        files = self.model_files()
        params: dict[str, Any] = {
            "text_detection_model_dir": str(files["det"]),
            "text_recognition_model_dir": str(files["rec"]),
            "use_doc_orientation_classify": False,
            "use_doc_unwarping": False,
            "use_textline_orientation": self.angle_classifier,
            # the same detector input as the rapidocr backends
            "text_det_limit_type": "min",
            "text_det_limit_side_len": self.det_min_side,
            "text_det_max_side_limit": self.effective_max_side(),
            "text_rec_score_thresh": self.score_threshold,
            "device": "gpu:0" if self.device.kind == "cuda" else "cpu",
        }
        if "cls" in files:
            params["textline_orientation_model_dir"] = str(files["cls"])
        if intra_op_threads(self.threads) > 0:
            params["cpu_threads"] = intra_op_threads(self.threads)
        return params

    def build_engine(self) -> Any:
        paddleocr = import_paddleocr()
        return paddleocr.PaddleOCR(**self.engine_params())

    def run_engine(self, bgr: np.ndarray) -> list[tuple[str, float, Any]]:
        raw = []
        for result in self.engine.predict(bgr):
            raw += list(zip(result["rec_texts"], result["rec_scores"], result["rec_polys"], strict=True))
        return raw


# ----------------------------------------------------------------------------- registry facts
# (annotators/registry.py reads these: the config keys each backend reads, and the warehouse table)
BACKEND_KEYS: dict[str, frozenset[str] | None] = dict.fromkeys(BACKENDS, frozenset(COMMON_KEYS))
MEMORY_MB = {"rapidocr": 850, "rapidocr-onnxruntime": 850}  # measured peak 0.68 GiB in a Ray actor (PP-OCRv6)
COST_MS = {"rapidocr": 900, "rapidocr-onnxruntime": 900}  # one thread per image, measured on the sample
TABLE = "ocr"
COLUMNS = [
    ("line_index", pa.int32()),
    ("text", pa.string()),
    ("score", pa.float32()),
    ("polygon", pa.list_(pa.list_(pa.float64()))),
]


def to_columns(index: int, r: Mapping[str, Any]) -> dict[str, Any]:
    return {"line_index": index, "text": r["text"], "score": r["score"], "polygon": r["polygon"]}


def from_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"text": row["text"], "score": row["score"], "polygon": row["polygon"]}
