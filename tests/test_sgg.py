"""Scene-graph expert: geometric predicates on constructed scenes, numbering, identity, plug-ins."""

from __future__ import annotations

from dataclasses import asdict
from itertools import combinations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from annotators.base import RANDOM_INIT, Detection, ImageInput, Relation, Segment
from annotators.registry import make_expert
from annotators.sgg import GEOMETRIC_ID, build_scene_graph
from core.errors import UserError

H, W = 480, 640


# ----------------------------------------------------------------------------- builders


def det(label: str, box, score: float = 0.9) -> Detection:
    return Detection(label=label, class_id=0, score=score, box=[float(v) for v in box])


def rect(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def disk(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def seg(segment_id: int, label: str, mask: np.ndarray, score: float = 0.9) -> Segment:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle = {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}
    return Segment(
        segment_id=segment_id,
        label=label,
        category_id=0,
        isthing=label != "unlabeled",
        area=int(mask.sum()),
        bbox=[float(v) for v in mask_utils.toBbox(encoded)],
        rle=rle,
        score=score,
        predicted_iou=score,
        stability_score=0.95,
    )


def relations(upstream: dict, **config) -> list[Relation]:
    expert = build_scene_graph(config)
    expert.load()
    (out,) = expert([ImageInput(1, np.zeros((H, W, 3), np.uint8), upstream)])
    assert out.ok, out.error
    return out.records


def between(records: list[Relation], a: int, b: int) -> Relation:
    found = [r for r in records if {r.subject_id, r.object_id} == {a, b}]
    assert len(found) == 1, found
    return found[0]


def triple(r: Relation) -> tuple[str, str, str]:
    return r.subject, r.predicate, r.object


# ----------------------------------------------------------------------------- predicates from boxes


def test_cup_sitting_on_a_table_is_on():
    rels = relations(
        {"detection": [det("dining table", [100, 200, 500, 400]), det("cup", [250, 140, 310, 200])]}
    )
    assert [triple(r) for r in rels] == [("cup", "on", "dining table")]
    assert rels[0].score == 1.0
    assert (rels[0].subject_id, rels[0].object_id) == (2, 1)


def test_cup_on_a_table_seen_in_perspective_is_on():
    # The cup's bottom lies inside the table-top region (below the table box's top edge).
    rels = relations(
        {"detection": [det("dining table", [100, 200, 500, 400]), det("cup", [250, 160, 300, 240])]}
    )
    assert [triple(r) for r in rels] == [("cup", "on", "dining table")]
    assert rels[0].score >= 0.8


def test_cup_hovering_over_an_edge_is_not_on():
    # Only a third of the cup is over the table: no support.
    rels = relations(
        {"detection": [det("dining table", [100, 200, 500, 400]), det("cup", [480, 140, 540, 200])]}
    )
    assert rels[0].predicate != "on"


def test_ball_above_a_box_with_a_gap():
    rels = relations({"detection": [det("ball", [200, 50, 240, 90]), det("box", [150, 150, 350, 300])]})
    assert [triple(r) for r in rels] == [("ball", "above", "box")]
    assert rels[0].score == 1.0


def test_smaller_thing_under_a_bigger_one_is_below():
    rels = relations({"detection": [det("lamp", [100, 20, 400, 120]), det("cat", [200, 300, 260, 360])]})
    assert [triple(r) for r in rels] == [("cat", "below", "lamp")]


def test_person_left_of_a_car():
    rels = relations({"detection": [det("car", [400, 200, 600, 400]), det("person", [50, 100, 150, 400])]})
    assert [triple(r) for r in rels] == [("person", "left of", "car")]
    assert rels[0].score == 1.0


def test_person_right_of_a_car_is_not_also_car_left_of_person():
    rels = relations({"detection": [det("car", [50, 200, 250, 400]), det("person", [500, 100, 600, 400])]})
    assert [triple(r) for r in rels] == [("person", "right of", "car")]


def test_small_square_inside_a_large_one():
    rels = relations({"detection": [det("frame", [0, 0, 200, 200]), det("photo", [80, 80, 120, 120])]})
    assert [triple(r) for r in rels] == [("photo", "inside", "frame")]
    assert rels[0].score == 1.0


def test_small_square_in_the_upper_half_of_a_large_one_is_still_inside():
    rels = relations({"detection": [det("frame", [0, 0, 200, 200]), det("photo", [80, 20, 120, 60])]})
    assert [triple(r) for r in rels] == [("photo", "inside", "frame")]


def test_two_partly_overlapping_squares():
    rels = relations({"detection": [det("a", [0, 0, 100, 100]), det("b", [50, 50, 150, 150])]})
    assert [triple(r) for r in rels] == [("a", "overlapping", "b")]  # equal size: the left-most is subject
    assert rels[0].score == pytest.approx(0.875)  # intersection = 25% of the smaller box


def test_two_nearby_squares_side_by_side_are_beside():
    rels = relations({"detection": [det("a", [100, 100, 140, 140]), det("b", [145, 100, 185, 140])]})
    assert [triple(r) for r in rels] == [("a", "beside", "b")]
    assert rels[0].score == pytest.approx(0.875)  # gap 5 px, reach 20 px


def test_two_nearby_squares_diagonally_are_near():
    rels = relations({"detection": [det("a", [100, 100, 140, 140]), det("b", [145, 145, 185, 185])]})
    assert [triple(r) for r in rels] == [("a", "near", "b")]
    assert 0.8 <= rels[0].score < 0.85


@pytest.mark.parametrize("far_box", [[400, 100, 440, 140], [400, 400, 440, 440], [100, 400, 140, 440]])
def test_far_apart_objects_are_never_near_or_beside(far_box):
    rels = relations({"detection": [det("a", [100, 100, 140, 140]), det("b", far_box)]})
    assert rels[0].predicate in {"left of", "right of", "above", "below"}
    assert rels[0].score == 0.5  # 6+ object sizes apart: true, but says little about the scene


def test_direction_fades_with_distance_measured_in_object_sizes():
    scores = [
        relations({"detection": [det("a", [0, 100, 40, 140]), det("b", [40 + gap, 100, 80 + gap, 140])]})[0]
        for gap in (60, 80, 160, 240)
    ]
    assert [r.predicate for r in scores] == ["left of"] * 4
    assert [r.score for r in scores] == [1.0, 1.0, 0.75, 0.5]  # fades from 2 to 6 sizes (L = 40 px)


def test_far_diagonal_pair_gets_a_weak_direction():
    rels = relations({"detection": [det("a", [0, 0, 40, 40]), det("b", [400, 300, 440, 340])]})
    assert triple(rels[0]) == ("a", "left of", "b")
    assert rels[0].score == 0.5


# ----------------------------------------------------------------------------- predicates from masks


def test_masks_cup_on_table_panoptic():
    cup = rect(250, 160, 300, 240)
    table = rect(100, 200, 500, 400) & ~cup  # one non-overlapping segment map: the table has a hole
    rels = relations({"segmentation": [seg(1, "dining table", table), seg(2, "cup", cup)]})
    assert [triple(r) for r in rels] == [("cup", "on", "dining table")]
    assert rels[0].score == 1.0


def test_masks_round_ball_resting_on_a_box():
    ball = disk(250, 130, 20)  # lowest pixel row 149, the box starts at row 150
    rels = relations({"segmentation": [seg(1, "box", rect(150, 150, 350, 300)), seg(2, "sports ball", ball)]})
    assert [triple(r) for r in rels] == [("sports ball", "on", "box")]
    assert rels[0].score == 1.0


def test_masks_object_whose_box_touches_but_mask_floats_is_not_on():
    # An L-shaped thing: its box bottom touches the table, but only its far-left leg does;
    # the base columns at the lowest row are over empty space left of the table.
    thing = rect(40, 100, 200, 120) | rect(40, 100, 60, 200)
    rels = relations({"segmentation": [seg(1, "table", rect(100, 200, 500, 400)), seg(2, "thing", thing)]})
    assert rels[0].predicate != "on"


def test_masks_small_square_inside_large_panoptic_hole():
    small = rect(80, 80, 120, 120)
    large = rect(0, 0, 200, 200) & ~small
    rels = relations({"segmentation": [seg(1, "frame", large), seg(2, "photo", small)]})
    assert [triple(r) for r in rels] == [("photo", "inside", "frame")]
    assert rels[0].score == 1.0


def test_masks_small_square_inside_large_overlapping_masks():
    rels = relations(
        {"segmentation": [seg(1, "frame", rect(0, 0, 200, 200)), seg(2, "photo", rect(80, 80, 120, 120))]}
    )
    assert [triple(r) for r in rels] == [("photo", "inside", "frame")]


def test_masks_inside_needs_enclosure_not_just_a_box():
    # A ring's box contains the dot, and so does an open "U" shape's box; only the ring encloses it.
    dot = rect(90, 90, 110, 110)
    ring = rect(0, 0, 200, 200) & ~rect(20, 20, 180, 180)
    u_shape = rect(0, 0, 200, 200) & ~rect(20, 0, 180, 180)
    assert triple(relations({"segmentation": [seg(1, "ring", ring), seg(2, "dot", dot)]})[0]) == (
        "dot",
        "inside",
        "ring",
    )
    assert relations({"segmentation": [seg(1, "u", u_shape), seg(2, "dot", dot)]})[0].predicate != "inside"


def test_masks_ball_above_box_and_person_left_of_car():
    segments = [
        seg(1, "sports ball", disk(250, 70, 20)),
        seg(2, "box", rect(150, 150, 350, 300)),
        seg(3, "person", rect(400, 100, 450, 400)),
        seg(4, "car", rect(530, 250, 640, 400)),
    ]
    rels = relations({"segmentation": segments})
    assert triple(between(rels, 1, 2)) == ("sports ball", "above", "box")
    assert triple(between(rels, 3, 4)) == ("person", "left of", "car")


# ----------------------------------------------------------------------------- numbering and objects


def test_repeated_labels_are_numbered_left_to_right_unique_stay_plain():
    dets = [
        det("person", [300, 100, 340, 200]),
        det("dog", [500, 300, 560, 340]),
        det("person", [20, 100, 60, 200]),
        det("person", [160, 100, 200, 200]),
    ]
    names = {}
    for r in relations({"detection": dets}):
        names[r.subject_id], names[r.object_id] = r.subject, r.object
    assert names == {3: "person (#1)", 4: "person (#2)", 1: "person (#3)", 2: "dog"}


def test_numbering_counts_only_kept_objects():
    dets = [
        det("person", [20, 100, 60, 200], score=0.3),
        det("person", [160, 100, 200, 200]),
        det("dog", [300, 100, 360, 160]),
    ]
    rels = relations({"detection": dets})
    assert {r.subject for r in rels} | {r.object for r in rels} == {"person", "dog"}
    # Ids are the index in the stored detection list + 1, whatever was filtered out.
    assert {r.subject_id for r in rels} | {r.object_id for r in rels} == {2, 3}


def test_panoptic_suffixes_are_dropped_from_names():
    rels = relations(
        {"detection": [det("wall-other-merged", [0, 0, 640, 200]), det("clock", [300, 50, 340, 90])]}
    )
    assert triple(rels[0]) == ("clock", "inside", "wall")


def test_unlabeled_segments_are_skipped_by_default_and_configurable():
    segments = [
        seg(1, "unlabeled", rect(0, 0, 640, 100)),
        seg(2, "cup", rect(250, 160, 300, 200)),
        seg(3, "dining table", rect(100, 200, 500, 400)),
    ]
    assert {r.subject for r in relations({"segmentation": segments})} == {"cup"}
    with_stuff = relations({"segmentation": segments}, include_unlabeled=True)
    assert len(with_stuff) == 3
    assert any("unlabeled" in (r.subject, r.object) for r in with_stuff)


def test_segments_win_over_detections_and_ids_are_segment_ids():
    upstream = {
        "detection": [det("cup", [250, 160, 300, 200]), det("dining table", [100, 200, 500, 400])],
        "segmentation": [
            seg(7, "cup", rect(250, 160, 300, 200)),
            seg(9, "dining table", rect(100, 200, 500, 400)),
        ],
    }
    (rel,) = relations(upstream)
    assert (rel.subject_id, rel.predicate, rel.object_id) == (7, "on", 9)


def test_empty_segmentation_falls_back_to_detections_and_nothing_gives_nothing():
    upstream = {
        "segmentation": [],
        "detection": [det("cup", [250, 160, 300, 200]), det("dining table", [100, 200, 500, 400])],
    }
    assert [(r.subject_id, r.object_id) for r in relations(upstream)] == [(1, 2)]
    assert relations({}) == []
    assert relations({"detection": [det("cup", [0, 0, 10, 10])]}) == []


def test_degenerate_boxes_are_ignored():
    assert relations({"detection": [det("a", [10, 10, 10, 50]), det("b", [0, 0, 20, 20])]}) == []


def test_records_from_parquet_as_dicts_give_the_same_relations():
    segments = [
        seg(1, "dining table", rect(100, 200, 500, 400)),
        seg(2, "cup", rect(250, 160, 300, 200)),
        seg(3, "person", rect(20, 50, 80, 400)),
    ]
    dets = [det("person", [20, 50, 80, 400])]
    as_dicts = relations(
        {"segmentation": [asdict(s) for s in segments], "detection": [asdict(d) for d in dets]}
    )
    assert as_dicts == relations({"segmentation": segments, "detection": dets})


# ----------------------------------------------------------------------------- the relation set


def scattered(n: int, seed: int = 0) -> list[Detection]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y = rng.uniform(0, 560), rng.uniform(0, 400)
        w, h = rng.uniform(10, 80), rng.uniform(10, 80)
        out.append(
            det(
                ["person", "car", "dog", "cup"][i % 4], [x, y, x + w, y + h], score=float(rng.uniform(0.5, 1))
            )
        )
    return out


def test_one_relation_per_pair_no_self_relations_no_mirrors():
    rels = relations({"detection": scattered(12)})
    pairs = [frozenset((r.subject_id, r.object_id)) for r in rels]
    assert all(len(p) == 2 for p in pairs)
    assert len(pairs) == len(set(pairs)) == len(list(combinations(range(12), 2)))
    assert all(0.5 <= r.score <= 1.0 for r in rels)


def test_relations_are_sorted_capped_and_independent_of_input_order():
    dets = scattered(12)
    rels = relations({"detection": dets}, max_relations=10)
    assert len(rels) == 10
    assert [r.score for r in rels] == sorted((r.score for r in rels), reverse=True)
    assert rels == relations({"detection": dets}, max_relations=10)
    # Reversing the input changes ids (index + 1), not which objects relate how.
    remap = {len(dets) - i: i + 1 for i in range(len(dets))}
    flipped = {
        (remap[r.subject_id], r.predicate, remap[r.object_id], r.score)
        for r in relations({"detection": dets[::-1]})
    }
    assert flipped == {
        (r.subject_id, r.predicate, r.object_id, r.score) for r in relations({"detection": dets})
    }


def test_max_objects_keeps_the_best_scoring():
    dets = [det("a", [0, 0, 20, 20], 0.6), det("b", [100, 0, 120, 20], 0.9), det("c", [200, 0, 220, 20], 0.8)]
    rels = relations({"detection": dets}, max_objects=2)
    assert [(r.subject, r.object) for r in rels] == [("b", "c")]


# ----------------------------------------------------------------------------- identity and config


def test_geometric_identity_names_the_rule_set_not_random_weights():
    expert = make_expert("sgg", {})
    expert.load()
    assert expert.identity.weights_sha256 == GEOMETRIC_ID
    assert not expert.identity.random_init
    assert (expert.identity.backend, expert.identity.model) == ("geometric", "geometric")
    assert make_expert("sgg", {"backend": "geometric"}).identity == expert.identity
    other = make_expert("sgg", {"near_ratio": 0.3}).identity
    assert other.config_hash != expert.identity.config_hash


@pytest.mark.parametrize(
    "config",
    [
        {"backend": "psgtr"},
        {"nearr_ratio": 0.3},
        {"max_objects": 1},
        {"backend": "plugin"},
        {"backend": "plugin", "entry": "no_such_module:f"},
        {"backend": "plugin", "entry": f"{__name__}:no_such_factory"},
    ],
)
def test_bad_configs_are_user_errors(config):
    with pytest.raises(UserError):
        build_scene_graph(config)


# ----------------------------------------------------------------------------- plug-in


class TinyPlugin:
    """A stand-in learned model: says every detection is 'looking at' the next one."""

    model_name = "tiny-psg"

    def __init__(self, config):
        self.config = config
        self.loaded = False

    def load(self):
        self.loaded = True

    def weights_sha256(self):
        return self.config.get("sha", "ab" * 32)

    def relate(self, image, segments, detections):
        assert self.loaded and image.ndim == 3
        assert all(isinstance(d, Detection) for d in detections)
        out = [
            {
                "subject_id": i + 1,
                "subject": "",
                "predicate": "looking at",
                "object_id": i + 2,
                "object": "",
                "score": self.config.get("score", 0.9) - 0.1 * i,
            }
            for i in range(len(detections) - 1)
        ]
        return out


class NoRelate:
    def __init__(self, config):
        pass

    def load(self):
        pass

    def weights_sha256(self):
        return RANDOM_INIT


def make_tiny_plugin(config):
    return TinyPlugin(config)


def make_no_relate(config):
    return NoRelate(config)


PLUGIN = {"backend": "plugin", "entry": f"{__name__}:make_tiny_plugin"}


def test_plugin_relations_get_numbered_names_and_are_sorted():
    dets = [det("person", [0, 0, 10, 10]), det("person", [100, 0, 110, 10]), det("dog", [50, 50, 60, 60])]
    rels = relations({"detection": dets}, **PLUGIN)
    assert [(r.subject, r.predicate, r.object, r.score) for r in rels] == [
        ("person (#1)", "looking at", "person (#2)", 0.9),
        ("person (#2)", "looking at", "dog", pytest.approx(0.8)),
    ]


def test_plugin_identity_carries_its_weights_sha_or_random_init():
    expert = make_expert("sgg", PLUGIN)
    expert.load()
    assert expert.identity.weights_sha256 == "ab" * 32
    assert (expert.identity.backend, expert.identity.model) == ("plugin", "tiny-psg")
    random_one = make_expert("sgg", {**PLUGIN, "sha": RANDOM_INIT})
    assert random_one.identity.random_init
    assert random_one.identity.config_hash != expert.identity.config_hash


def test_plugin_must_report_a_real_sha_and_the_whole_interface():
    with pytest.raises(UserError, match="sha256"):
        make_expert("sgg", {**PLUGIN, "sha": "not-a-sha"}).load()
    with pytest.raises(UserError, match="relate"):
        make_expert("sgg", {"backend": "plugin", "entry": f"{__name__}:make_no_relate"})


def test_plugin_invalid_output_fails_that_image_only():
    expert = make_expert("sgg", {**PLUGIN, "score": 1.5})
    expert.load()
    (out,) = expert(
        [
            ImageInput(
                1,
                np.zeros((H, W, 3), np.uint8),
                {"detection": [det("a", [0, 0, 9, 9]), det("b", [20, 0, 29, 9])]},
            )
        ]
    )
    assert not out.ok and "invalid relation" in out.error
