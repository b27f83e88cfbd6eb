"""The scale benchmark end to end at a small size: every step runs, and the rerun finds nothing to do
(so the commit path it measures writes exactly the keys a real `moai annotate` plans against)."""

from __future__ import annotations

import json

from benchmarks import scale


def test_scale_benchmark_small(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "PER_FOLDER", 70)  # several subfolders
    assert scale.main(["--sizes", "150", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")]) == 0
    result = json.loads((tmp_path / "out" / "scale.json").read_text())
    r = result["sizes"]["150"]
    assert "SYNTHETIC" in result["what"]
    assert r["register"]["images"] == 150 and r["plan"]["rc"] == 0
    assert r["commit"]["images"] == 150 and r["commit"]["rows"] >= 150 * 3
    assert r["commit"]["files_after_compaction"] <= r["commit"]["files_before_compaction"]
    assert (r["rerun"]["rc"], r["rerun"]["listed"], r["rerun"]["processed"]) == (0, 150, 0)
    assert all(r[s]["peak_rss_mb"] > 0 for s in scale.STEPS)
