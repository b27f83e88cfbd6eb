"""MoAI verbalizer: golden strings for hand-built records, thresholds, rounding, stored rows."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, asdict

import numpy as np
import pytest

from annotators.base import Detection, ImageInput, Relation, Segment, TextLine
from annotators.ocr import reading_order
from core.errors import UserError
from verbalize.moai import (
    OBJECTS_PREFIX,
    AuxText,
    VerbalizeConfig,
    format_box,
    split_sentences,
    verbalize,
    verbalize_detections,
    verbalize_ocr,
    verbalize_relations,
    verbalize_segments,
)

W, H = 200, 100  # image size used by the golden strings


def segment(label: str, bbox, score: float = 0.9, segment_id: int = 1) -> Segment:
    return Segment(
        segment_id=segment_id,
        label=label,
        category_id=0,
        isthing=label != "unlabeled",
        area=1,
        bbox=[float(v) for v in bbox],
        rle={"size": [H, W], "counts": ""},
        score=score,
        predicted_iou=score,
        stability_score=0.95,
    )


def detection(label: str, box, score: float = 0.9) -> Detection:
    return Detection(label=label, class_id=0, score=score, box=[float(v) for v in box])


def relation(subject: str, predicate: str, obj: str, score: float, sid: int = 1, oid: int = 2) -> Relation:
    return Relation(
        subject_id=sid, subject=subject, predicate=predicate, object_id=oid, object=obj, score=score
    )


def line(
    text: str, score: float = 0.95, x: float = 0, y: float = 0, w: float = 40, h: float = 10
) -> TextLine:
    return TextLine(text=text, score=score, polygon=[[x, y], [x + w, y], [x + w, y + h], [x, y + h]])


SEGMENTS = [
    segment("sky-other-merged", [0, 0, 200, 41], 0.95, 2),
    segment("person", [24, 30, 86, 68], 0.99, 1),
]
DETECTIONS = [
    detection("park bench", [20, 70, 70, 95], 0.6),
    detection("golden retriever", [122, 52, 160, 77], 0.8),
]
RELATIONS = [
    relation("person (#2)", "beside", "person (#1)", 0.85, 2, 1),
    relation("person (#1)", "sitting on", "bench", 0.93, 1, 3),
]
OCR = [line("Main St", 0.9, y=50), line("STOP", 0.97, y=10)]

SEGMENTATION_TEXT = (
    "The image includes bounding box coordinates and their objects: "
    "[0.12, 0.30, 0.55, 0.98] person, and [0.00, 0.00, 1.00, 0.41] sky."
)
DETECTION_TEXT = (
    "The image includes bounding box coordinates and their objects: "
    "[0.61, 0.52, 0.80, 0.77] golden retriever, and [0.10, 0.70, 0.35, 0.95] park bench."
)
SGG_TEXT = (
    "The image includes relationships between objects: "
    "person (#1) is sitting on bench, and person (#2) is beside person (#1)."
)
OCR_TEXT = "The image includes text descriptions: STOP, and Main St."


# ----------------------------------------------------------------------------- golden sentences


def test_each_sentence_matches_moai_template():
    assert verbalize_segments(SEGMENTS, W, H) == SEGMENTATION_TEXT
    assert verbalize_detections(DETECTIONS, W, H) == DETECTION_TEXT
    assert verbalize_relations(RELATIONS) == SGG_TEXT
    assert verbalize_ocr(OCR) == OCR_TEXT


def test_aux_text_joins_the_four_sentences_in_moai_order():
    aux = verbalize({"ocr": OCR, "sgg": RELATIONS, "detection": DETECTIONS, "segmentation": SEGMENTS}, W, H)
    assert aux.text == " ".join([SEGMENTATION_TEXT, DETECTION_TEXT, SGG_TEXT, OCR_TEXT])
    assert aux.columns() == {
        "text": aux.text,
        "segmentation_text": SEGMENTATION_TEXT,
        "detection_text": DETECTION_TEXT,
        "sgg_text": SGG_TEXT,
        "ocr_text": OCR_TEXT,
    }


def test_final_period_is_always_appended_as_in_moai():
    # MoAI's template adds "." unconditionally; a string ending in "." gives "..", kept for fidelity.
    assert verbalize_ocr([line("Main St.")]) == "The image includes text descriptions: Main St.."


def test_single_item_has_no_joiner():
    assert (
        verbalize_detections([detection("dog", [0, 0, 100, 50])], W, H)
        == "The image includes bounding box coordinates and their objects: [0.00, 0.00, 0.50, 0.50] dog."
    )


# ----------------------------------------------------------------------------- empty and partial inputs


def test_empty_inputs_give_empty_strings():
    aux = verbalize({}, W, H)
    assert aux == AuxText("", "", "", "")
    assert aux.text == ""
    assert verbalize({"segmentation": [], "detection": [], "sgg": [], "ocr": []}, W, H).text == ""


def test_only_ocr_has_no_stray_spaces():
    aux = verbalize({"ocr": OCR, "detection": [detection("dog", [0, 0, 10, 10], 0.2)]}, W, H)
    assert aux.text == OCR_TEXT
    assert aux.detection == ""


def test_missing_middle_sentences_leave_single_spaces():
    aux = verbalize({"segmentation": SEGMENTS, "ocr": OCR}, W, H)
    assert aux.text == SEGMENTATION_TEXT + " " + OCR_TEXT


def test_image_size_is_required():
    with pytest.raises(ValueError):
        verbalize({}, 0, H)


# ----------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("score, kept", [(0.5, True), (0.49999, False), (float(np.float32(0.5)), True)])
def test_detection_and_segmentation_thresholds_are_inclusive_at_half(score, kept):
    assert (verbalize_detections([detection("dog", [0, 0, 10, 10], score)], W, H) != "") is kept
    assert (verbalize_segments([segment("dog", [0, 0, 10, 10], score)], W, H) != "") is kept


@pytest.mark.parametrize("score, kept", [(0.8, True), (float(np.float32(0.8)), True), (0.7999, False)])
def test_sgg_threshold_is_inclusive_at_point_eight(score, kept):
    assert (verbalize_relations([relation("cup", "on", "table", score)]) != "") is kept


@pytest.mark.parametrize("score, kept", [(0.85, True), (float(np.float32(0.85)), True), (0.8499, False)])
def test_ocr_threshold_is_inclusive_at_point_eight_five(score, kept):
    assert (verbalize_ocr([line("EXIT", score)]) != "") is kept


def test_thresholds_compare_at_storage_precision():
    # 0.7 stored as float32 is 0.69999998...; it still passes a 0.7 threshold.
    config = VerbalizeConfig(detection_threshold=0.7)
    stored = float(np.float32(0.7))
    assert verbalize_detections([detection("dog", [0, 0, 10, 10], stored)], W, H, config) != ""


def test_sgg_keeps_top_ten_then_threshold():
    many = [relation(f"thing{i}", "near", "wall", 0.99 - 0.01 * i, sid=i) for i in range(12)]
    text = verbalize_relations(many)
    assert text.count(" is near ") == 10
    assert "thing9 " in text and "thing10 " not in text
    assert verbalize_relations(many, VerbalizeConfig(sgg_top_k=3)).count(" is near ") == 3
    # Of the 3 best, two are below 0.8: one relation is left.
    mixed = [
        relation("a", "on", "b", 0.9),
        relation("c", "on", "d", 0.7),
        relation("e", "on", "f", 0.6),
        relation("g", "on", "h", 0.5),
    ]
    assert verbalize_relations(mixed, VerbalizeConfig(sgg_top_k=3)).endswith(": a is on b.")


def test_segment_labels_unlabeled_excluded_by_default():
    segments = [segment("unlabeled", [0, 0, 200, 20], 0.99), segment("dog", [0, 50, 100, 100], 0.9)]
    assert verbalize_segments(segments, W, H).endswith(": [0.00, 0.50, 0.50, 1.00] dog.")
    # labelled objects first, however high SAM's predicted IoU of an unlabeled region (decided, see moai.py)
    assert verbalize_segments(segments, W, H, VerbalizeConfig(include_unlabeled=True)).endswith(
        ": [0.00, 0.50, 0.50, 1.00] dog, and [0.00, 0.00, 1.00, 0.20] unlabeled."
    )


def test_unlabeled_regions_follow_labelled_objects_each_by_its_own_score():
    segments = [
        segment("unlabeled", [0, 0, 10, 10], 0.99, segment_id=1),
        segment("cat", [0, 20, 10, 10], 0.6, segment_id=2),
        segment("unlabeled", [0, 40, 10, 10], 0.7, segment_id=3),
        segment("dog", [0, 60, 10, 10], 0.9, segment_id=4),
    ]
    text = verbalize_segments(segments, W, H, VerbalizeConfig(include_unlabeled=True))
    labels = [
        item.rsplit(" ", 1)[1].rstrip(".") for item in text.removeprefix(OBJECTS_PREFIX).split(", and ")
    ]
    assert labels == ["dog", "cat", "unlabeled", "unlabeled"]
    assert "[0.00, 0.00, 0.05, 0.10] unlabeled, and [0.00, 0.40" in text  # 0.99 before 0.7
    only = [segments[0], segments[2]]
    assert verbalize_segments(only, W, H, VerbalizeConfig(include_unlabeled=True)).startswith(OBJECTS_PREFIX)


def test_sgg_keeps_the_top_min_k_and_objects_relations_as_moai():
    # 3 objects, 3 relations all >= 0.8: min(10, 3) = 3 kept
    three = [
        relation("a", "near", "b", 0.95, sid=1, oid=2),
        relation("b", "near", "c", 0.9, sid=2, oid=3),
        relation("a", "near", "c", 0.85, sid=1, oid=3),
    ]
    assert verbalize_relations(three).count(" is near ") == 3
    # 3 objects but 5 candidate relations: only the best 3 are considered (MoAI's min(10, objects))
    five = three + [
        relation("c", "on", "a", 0.84, sid=3, oid=1),
        relation("b", "on", "a", 0.83, sid=2, oid=1),
    ]
    text = verbalize_relations(five)
    assert text.count(" is ") == 3 and " is on " not in text
    # 2 objects, 1 relation: MoAI's argpartition(…, -2) fails and its bare except drops the sentence;
    # ours keeps the one relation (decided)
    assert verbalize_relations([relation("a", "on", "b", 0.9, sid=1, oid=2)]).endswith(": a is on b.")


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "box, size, expected",
    [
        ([1, 3, 199, 8], (8, 8), "[0.12, 0.38, 1.00, 1.00]"),  # 0.125 -> 0.12, 0.375 -> 0.38 (half to even)
        (
            [1, 0, 199, 100],
            (200, 100),
            "[0.01, 0.00, 0.99, 1.00]",
        ),  # 0.005 -> 0.01, 0.995 -> 0.99 (binary value)
        ([61.25, 0, 490, 490], (490, 490), "[0.12, 0.00, 1.00, 1.00]"),  # MoAI's 490 px frame
        ([-5, -3, 250, 120], (200, 100), "[0.00, 0.00, 1.00, 1.00]"),  # clamped to the image
        ([-0.0, -0.0, 0, 0], (200, 100), "[0.00, 0.00, 0.00, 0.00]"),  # never "-0.00"
    ],
)
def test_box_formatting(box, size, expected):
    assert format_box(box, *size) == expected


def test_segment_bbox_is_coco_xywh():
    assert verbalize_segments([segment("cat", [50, 25, 100, 50])], W, H).endswith(
        ": [0.25, 0.25, 0.75, 0.75] cat."
    )


# ----------------------------------------------------------------------------- order


def test_objects_ordered_by_score_then_position():
    dets = [
        detection("b", [100, 0, 110, 10], 0.7),
        detection("a", [50, 0, 60, 10], 0.7),
        detection("c", [0, 0, 10, 10], 0.9),
    ]
    assert verbalize_detections(dets, W, H).endswith(
        ": [0.00, 0.00, 0.05, 0.10] c, and [0.25, 0.00, 0.30, 0.10] a, and [0.50, 0.00, 0.55, 0.10] b."
    )
    assert verbalize_detections(dets[::-1], W, H) == verbalize_detections(dets, W, H)


def test_relations_ties_are_ordered_by_ids():
    rels = [relation("b", "on", "x", 0.9, sid=2), relation("a", "on", "x", 0.9, sid=1)]
    assert verbalize_relations(rels).endswith(": a is on x, and b is on x.")


def test_ocr_reading_order_rows_then_left_to_right():
    lines = [
        line("world", x=60, y=12),
        line("second row", y=40),
        line("hello", x=0, y=10),
        TextLine("no box", 0.9, []),
        line("   ", y=70),
        line("two\n words", y=80),
    ]
    assert verbalize_ocr(lines) == (
        "The image includes text descriptions: hello, and world, and second row, and two words, and no box."
    )


def paddle_sorted_boxes(lines):
    """PaddleOCR's `sorted_boxes` (what MoAI's OCR text followed): by top-left (y, x), then neighbours whose
    top-left y differ by < 10 px are swapped into x order."""
    boxes = sorted(lines, key=lambda ln: (ln.polygon[0][1], ln.polygon[0][0]))
    for i in range(len(boxes) - 1):
        for j in range(i, -1, -1):
            a, b = boxes[j].polygon[0], boxes[j + 1].polygon[0]
            if abs(b[1] - a[1]) < 10 and b[0] < a[0]:
                boxes[j], boxes[j + 1] = boxes[j + 1], boxes[j]
            else:
                break
    return boxes


def test_ocr_order_is_paddleocrs_on_ordinary_layouts_and_keeps_rows_of_large_text():
    rng = np.random.default_rng(0)
    for _ in range(
        200
    ):  # rows 40 px apart, 12 px text, tops within a row < min(10 px, half its height) apart
        lines = [
            line(f"w{r}{c}", x=c * 60 + rng.uniform(0, 20), y=r * 40 + rng.uniform(0, 5.9), h=12)
            for r in range(3)
            for c in range(3)
        ]
        rng.shuffle(lines)
        assert [ln.text for ln in reading_order(lines)] == [ln.text for ln in paddle_sorted_boxes(lines)]
    # large text (40 px), the right word 14 px higher: one row for us; PaddleOCR's 10 px reads it first
    big = [line("left", x=0, y=20, h=40), line("right", x=200, y=6, h=40)]
    assert [ln.text for ln in reading_order(big)] == ["left", "right"]
    assert [ln.text for ln in paddle_sorted_boxes(big)] == ["right", "left"]
    assert verbalize_ocr(big).endswith(": left, and right.")  # the verbalizer follows the expert's order


def test_split_sentences_inverts_joining_the_four_sentences():
    aux = verbalize(
        {"segmentation": SEGMENTS, "detection": [detection("dog", [0, 0, 10, 10])], "ocr": [line("EXIT")]},
        W,
        H,
    )
    parts = [aux.segmentation, aux.detection, aux.sgg, aux.ocr]
    assert split_sentences(aux.text) == [p for p in parts if p]
    assert split_sentences("") == [] and split_sentences("free text") == ["free text"]


# ----------------------------------------------------------------------------- stored records


def parquet_like(records) -> list[dict]:
    """What comes back from the warehouse: dicts, with float32 scores and coordinates."""
    out = []
    for r in records:
        d = asdict(r)
        for key in ("score", "predicted_iou", "stability_score"):
            if key in d:
                d[key] = float(np.float32(d[key]))
        for key in ("box", "bbox"):
            if key in d:
                d[key] = [float(np.float32(v)) for v in d[key]]
        out.append(d)
    return out


def test_stored_rows_regenerate_the_same_text():
    fresh = {"segmentation": SEGMENTS, "detection": DETECTIONS, "sgg": RELATIONS, "ocr": OCR}
    stored = {name: parquet_like(records) for name, records in fresh.items()}
    assert verbalize(stored, W, H) == verbalize(fresh, W, H)


def test_relations_from_the_scene_graph_expert_verbalize():
    from annotators.sgg import build_scene_graph

    dets = [detection("dining table", [100, 200, 500, 400]), detection("cup", [250, 140, 310, 200])]
    expert = build_scene_graph({})
    (out,) = expert([ImageInput(1, np.zeros((480, 640, 3), np.uint8), {"detection": dets})])
    assert (
        verbalize_relations(out.records)
        == "The image includes relationships between objects: cup is on dining table."
    )


# ----------------------------------------------------------------------------- config


def test_config_defaults_are_moai_thresholds_and_hash_versions_the_text():
    config = VerbalizeConfig()
    assert config.to_dict() == {
        "segmentation_threshold": 0.5,
        "detection_threshold": 0.5,
        "sgg_top_k": 10,
        "sgg_threshold": 0.8,
        "ocr_threshold": 0.85,
        "include_unlabeled": False,
    }
    assert VerbalizeConfig.from_mapping(config.to_dict()) == config
    assert VerbalizeConfig.from_mapping(None) == config
    assert config.config_hash() == VerbalizeConfig().config_hash()
    assert config.config_hash() != VerbalizeConfig(ocr_threshold=0.9).config_hash()
    assert config.config_hash() != VerbalizeConfig(include_unlabeled=True).config_hash()
    with pytest.raises(FrozenInstanceError):
        config.ocr_threshold = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "mapping", [{"ocr_treshold": 0.9}, {"sgg_threshold": 1.5}, {"sgg_top_k": -1}, {"include_unlabeled": "no"}]
)
def test_bad_config_is_a_user_error(mapping):
    with pytest.raises(UserError):
        VerbalizeConfig.from_mapping(mapping)


def test_yaml_number_spellings_hash_alike():
    assert VerbalizeConfig.from_mapping({"detection_threshold": 1, "sgg_top_k": "10"}) == VerbalizeConfig(
        detection_threshold=1.0
    )
    assert (
        VerbalizeConfig(detection_threshold=1).config_hash()
        == VerbalizeConfig(detection_threshold=1.0).config_hash()
    )


def test_columns_match_the_warehouse_aux_text_table():
    schema = pytest.importorskip("warehouse.schema")
    names = set(schema.TABLES["aux_text"].names)
    assert set(AuxText().columns()) <= names
