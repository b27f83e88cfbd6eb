"""Real models through the whole job, then out as COCO: pycocotools loads every file and COCOeval runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from corpora.resolve import resolve_corpus
from pipeline.annotate import run_annotation
from pipeline.profiles import JobSpec, load_profile
from tests.conftest import REPO
from warehouse.export import export_coco
from warehouse.store import Warehouse

REAL = str(REPO / "tests" / "profiles" / "shared-onnx.yaml")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, shared_models):
    from corpora.sample import build_sample

    tmp = tmp_path_factory.mktemp("real")
    sample = build_sample(tmp / "sample_src")
    folder = tmp / "photos"
    folder.mkdir()
    for stem in ("astronaut", "coffee", "motorcycle_left", "bus"):
        shutil.copy(sample.image_dir("val2017") / f"{stem}.jpg", folder / f"{stem}.jpg")
    corpus = resolve_corpus("real", images=folder, root=tmp / "data")
    wh = Warehouse(tmp / "wh")
    job = JobSpec(dataset="real", profile="shared-onnx", batch_size=2, commit_every=4)
    run_annotation(corpus, load_profile(REAL), job, wh, executor="local")
    return corpus, wh, tmp


def test_real_experts_find_what_is_in_the_photos(real_run):
    _, wh, _ = real_run
    found = wh.query(
        "SELECT i.file_name, d.label, max(d.score) AS s FROM detections d JOIN images i "
        "USING (dataset, image_id) GROUP BY ALL HAVING s >= 0.3"
    ).to_pylist()
    found = {(r["file_name"], r["label"]) for r in found}
    assert {
        ("astronaut.jpg", "person"),
        ("coffee.jpg", "cup"),
        ("motorcycle_left.jpg", "motorcycle"),
    } <= found
    things = wh.query("SELECT count(*) AS n FROM segments WHERE isthing").to_pylist()[0]["n"]
    assert things >= 4
    aux = wh.query(
        "SELECT text FROM aux_text a JOIN images i USING (dataset, image_id) "
        "WHERE i.file_name = 'astronaut.jpg'"
    ).to_pylist()[0]["text"]
    assert (
        aux.startswith("The image includes bounding box coordinates and their objects: ") and "person" in aux
    )
    assert wh.query(
        "SELECT count(*) AS n FROM detections WHERE weights_sha256 = 'random-init'"
    ).to_pylist() == [{"n": 0}]


def test_export_loads_in_pycocotools_and_evaluates(real_run):
    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    corpus, wh, tmp = real_run
    out = tmp / "export"
    counts = export_coco(wh, "real", out)
    assert counts["images"] == 4 and counts["instances"] >= 4 and counts["detections"] > 0

    gt = COCO(str(out / "instances.json"))
    gt.info()  # instances carry `info` and `licenses`
    ann = gt.loadAnns(gt.getAnnIds())[0]
    assert gt.annToMask(ann).sum() == ann["area"] and "score" not in ann
    assert len(gt.loadRes(str(out / "segmentations.json")).getAnnIds()) == counts["instances"]
    dt = gt.loadRes(str(out / "detections.json"))
    evaluation = COCOeval(gt, dt, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    # the things were prompted by these very detections, so detections should match them well
    assert evaluation.stats[1] > 0.5  # AP at IoU 0.5

    panoptic = json.loads((out / "panoptic.json").read_text())
    assert len(panoptic["annotations"]) == 4
    for entry in panoptic["annotations"]:
        png = np.asarray(Image.open(out / "panoptic" / entry["file_name"]).convert("RGB"), dtype=np.int64)
        ids = png[..., 0] + 256 * png[..., 1] + 256 * 256 * png[..., 2]
        listed = {s["id"] for s in entry["segments_info"]}
        assert set(np.unique(ids)) - {0} == listed
        for info in entry["segments_info"]:
            assert (ids == info["id"]).sum() == info["area"]


def test_viz_draws_the_stored_records(real_run, monkeypatch):
    from PIL import Image

    from warehouse.viz import viz

    corpus, wh, tmp = real_run
    monkeypatch.setenv("MOAI_DATA", str(tmp / "data"))
    out = viz("real", "coffee", tmp / "coffee.png", wh.root)
    drawn = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    original = np.asarray(
        Image.open(corpus.image_dir("default") / "coffee.jpg").convert("RGB"), dtype=np.int16
    )
    assert drawn.shape == original.shape
    assert (np.abs(drawn - original).sum(-1) > 60).mean() > 0.05  # masks and boxes visibly drawn


def test_export_follows_the_ledgers_newest_config_even_when_it_found_nothing(real_run, tmp_path):
    """A newer detection config that found no objects is the current one: its (empty) results are
    exported, not the older config's boxes (the newest *rows* would still be the old config's)."""
    from warehouse.current import current_configs
    from warehouse.rows import done_row

    _, wh, tmp = real_run
    shutil.copytree(wh.root, tmp_path / "wh")
    copy = Warehouse(tmp_path / "wh")
    before = set(current_configs(copy, "real", "detection").values())
    ids = [
        r["image_id"]
        for r in copy.query("SELECT DISTINCT image_id FROM images WHERE dataset = 'real'").to_pylist()
    ]
    newest = {"dataset": "real", "run_id": "99991231T000000Z-newcfg"}
    copy.commit({"done": [done_row({**newest, "image_id": i}, "detection", "newcfg", "ok") for i in ids]})
    assert set(current_configs(copy, "real", "detection").values()) == {"newcfg"} != before
    assert export_coco(copy, "real", tmp_path / "export")["detections"] == 0
    assert export_coco(wh, "real", tmp_path / "export-old")["detections"] > 0

    # `moai viz` follows the same current config: no boxes of the older config are drawn
    import warehouse.viz as viz_module

    drawn, original = {}, viz_module.render

    def capture(image, detections, segments, *rest, **kwargs):
        drawn.update(detections=detections, segments=segments)
        return original(image, detections, segments, *rest, **kwargs)

    for root, expect_boxes in ((wh.root, True), (copy.root, False)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MOAI_DATA", str(tmp / "data"))
            mp.setattr(viz_module, "render", capture)
            viz_module.viz("real", "coffee", tmp_path / "coffee.png", root)
        assert bool(drawn["detections"]) is expect_boxes and drawn["segments"]


# ------------------------------------------------------------------------------ a hand-made warehouse
DS = "2024-05-01"  # a name readers would take for a date
H, W = 30, 40


def _box_mask(x0, y0, x1, y1):
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def small_warehouse(root) -> Warehouse:
    """One 40x30 image: a person (segment 1) and two unlabeled regions (segments 2 and 3)."""
    from annotators.masks import encode_rle
    from annotators.registry import expert_spec
    from warehouse.rows import done_row

    wh = Warehouse(root)
    base = {"dataset": DS, "image_id": 7, "run_id": "20260101T000000Z-aaaaaa"}
    ident = {**base, "model": "m", "backend": "b", "weights_sha256": "random-init", "config_hash": "seg"}
    masks = {1: _box_mask(5, 5, 15, 25), 2: _box_mask(20, 0, 40, 10), 3: _box_mask(25, 20, 35, 30)}
    segments = []
    for sid, mask in masks.items():
        thing = sid == 1
        ys, xs = np.nonzero(mask)
        record = {
            "segment_id": sid,
            "label": "person" if thing else "unlabeled",
            "category_id": 1 if thing else 0,
            "isthing": thing,
            "area": int(mask.sum()),
            "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
            "rle": encode_rle(mask),
            "score": 0.75,
            "predicted_iou": 0.9,
            "stability_score": 0.9,
        }
        segments.append({**ident, **expert_spec("segmentation").to_columns(sid - 1, record)})
    image = {"split": "default", "file_name": "x.jpg", "width": W, "height": H, "source_mode": "RGB"}
    wh.commit(
        {
            "images": [{**base, **image, "exif_rotated": False, "frames": 1}],
            "segments": segments,
            "done": [
                done_row(base, "decode", "decode-v1", "ok", 1),
                done_row(base, "segmentation", "seg", "ok", 3),
            ],
        }
    )
    return wh


def _ids(png_path):
    from PIL import Image

    rgb = np.asarray(Image.open(png_path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def test_instances_have_info_and_no_scores_and_segment_scores_are_results(tmp_path):
    wh = small_warehouse(tmp_path / "wh")
    export_coco(wh, DS, tmp_path / "out")
    instances = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert {"info", "licenses", "images", "annotations", "categories"} <= set(instances)
    assert DS in instances["info"]["description"] and instances["licenses"] == []
    assert [a["category_id"] for a in instances["annotations"]] == [1]
    assert "score" not in instances["annotations"][0]
    results = json.loads((tmp_path / "out" / "segmentations.json").read_text())
    assert [(r["image_id"], r["category_id"], r["score"]) for r in results] == [(7, 1, 0.75)]
    assert results[0]["segmentation"] == instances["annotations"][0]["segmentation"]


def test_panoptic_unlabeled_regions_are_void_by_default_or_one_stuff_segment(tmp_path):
    from warehouse.export import UNLABELED_STUFF

    wh = small_warehouse(tmp_path / "wh")
    counts = export_coco(wh, DS, tmp_path / "void")
    doc = json.loads((tmp_path / "void" / "panoptic.json").read_text())
    assert counts["panoptic_stuff_segments"] == 0 and {"info", "licenses"} <= set(doc)
    assert all(c["isthing"] == 1 for c in doc["categories"])
    [entry] = doc["annotations"]
    assert [s["id"] for s in entry["segments_info"]] == [1]
    ids = _ids(tmp_path / "void" / "panoptic" / entry["file_name"])
    assert set(np.unique(ids)) == {0, 1} and (ids == 1).sum() == 200

    counts = export_coco(wh, DS, tmp_path / "stuff", unlabeled="stuff")
    doc = json.loads((tmp_path / "stuff" / "panoptic.json").read_text())
    assert counts["panoptic_stuff_segments"] == 1
    assert doc["categories"][-1] == UNLABELED_STUFF and UNLABELED_STUFF["id"] not in {
        c["id"] for c in doc["categories"][:-1]
    }
    [entry] = doc["annotations"]
    thing, stuff = entry["segments_info"]
    assert thing["id"] == 1 and thing["category_id"] == 1
    # both unlabeled regions are one segment (a stuff class is one segment per image in COCO panoptic)
    assert stuff == {"id": 2, "category_id": 201, "iscrowd": 0, "bbox": [20.0, 0.0, 20.0, 30.0], "area": 300}
    ids = _ids(tmp_path / "stuff" / "panoptic" / entry["file_name"])
    assert set(np.unique(ids)) == {0, 1, 2}
    assert (ids == 2).sum() == 300 and (ids == 1).sum() == 200


def test_export_coco_command_takes_the_unlabeled_choice(tmp_path, capsys):
    from cli.main import main

    wh = small_warehouse(tmp_path / "wh")
    args = ["export-coco", "--dataset", DS, "--warehouse", str(wh.root), "--out", str(tmp_path / "o")]
    assert main([*args, "--unlabeled", "stuff"]) == 0
    assert "panoptic_stuff_segments=1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--unlabeled", "grass"])
    from core.errors import UserError

    with pytest.raises(UserError, match="unlabeled must be one of void, stuff"):
        export_coco(wh, DS, tmp_path / "o", unlabeled="grass")
