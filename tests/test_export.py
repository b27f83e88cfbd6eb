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
    ann = gt.loadAnns(gt.getAnnIds())[0]
    assert gt.annToMask(ann).sum() == ann["area"]
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
