"""The `signs` benchmark's fairness and report (benchmarks/signs.py); the full run is `make signs-benchmark`."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import __main__ as bench_main
from benchmarks import signs


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_two_arms_differ_only_in_the_aux_switch_and_their_run_names(tmp_path):
    from trainer.config import resolve_config

    base = resolve_config(signs.CONFIG)
    a = _flatten(signs.arm_config(base, "with_aux", True, tmp_path / "wh", tmp_path))
    b = _flatten(signs.arm_config(base, "without_aux", False, tmp_path / "wh", tmp_path))
    assert {k for k in a if a[k] != b.get(k)} == {"model.use_aux", "run.name"}
    assert a["model.use_aux"] is True and b["model.use_aux"] is False
    assert a["data.warehouse"] == str(tmp_path / "wh") and a["data.dataset"] == "signs"
    assert base["model"].get("use_aux", True) is True, "arm_config must not edit the shared config"


def _report(accuracy: dict[str, tuple[int, int]]) -> dict:
    correct, total = sum(c for c, _ in accuracy.values()), sum(n for _, n in accuracy.values())
    return {
        "examples": total,
        "accuracy": round(correct / total, 4),
        "by_type": {
            t: {"accuracy": round(c / n, 4), "correct": c, "total": n} for t, (c, n) in accuracy.items()
        },
    }


def test_results_table_and_plot(tmp_path):
    reports = {
        "with_aux": _report({"count": (60, 60), "read": (6, 24)}),
        "without_aux": _report({"count": (24, 60), "read": (0, 24)}),
    }
    for arm, losses in (("with_aux", [3.0, 1.0, 0.5]), ("without_aux", [3.0, 1.5, 1.2])):
        run = tmp_path / "train" / arm
        run.mkdir(parents=True)
        rows = "".join(f"{10 * i + 9},{loss}\n" for i, loss in enumerate(losses))
        (run / "metrics.csv").write_text("step,train_loss\n" + rows)
    cfg = {"seed_everything": 0, "model": {}, "data": {}, "run": {}}
    results = signs.summarize(reports, {"with_aux": cfg, "without_aux": cfg}, {"total_s": 1.0}, {}, tmp_path)
    assert results["with_aux"] == 0.7857 and results["without_aux"] == 0.2857
    assert results["difference_points"] == 50.0
    assert results["by_type"]["count"] == {"with_aux": 1.0, "without_aux": 0.4}
    assert results["steps"] == {"with_aux": 30, "without_aux": 30}
    table = signs.results_table(results)
    assert "| count | 60 | 100.0% | 40.0% | +60.0 pts |" in table
    assert "**+50.0 pts**" in table
    json.dumps(results)  # results.json is plain JSON
    signs.plot(results, tmp_path)
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_plain_make_bench_skips_the_minutes_long_signs_run(monkeypatch):
    ran = []
    monkeypatch.setattr(signs, "main", lambda argv: ran.append("signs") or 0)
    defaults = [n for n in bench_main.benchmark_names() if n != "signs"]
    assert "signs" in bench_main.benchmark_names() and defaults
    for name in defaults:
        monkeypatch.setattr(f"benchmarks.{name}.main", lambda argv, n=name: ran.append(n) or 0)
    assert bench_main.main([]) == 0
    assert ran == defaults
    assert bench_main.main(["signs"]) == 0 and ran[-1] == "signs"


def test_ocr_coverage_counts_sign_texts_found_verbatim(tmp_path, monkeypatch):
    class Corpus:
        splits = ["test"]

        def annotations_file(self, split):
            path = Path(tmp_path) / "instances.json"
            texts = [
                {"image_id": 1, "text": "BAKOLU"},
                {"image_id": 1, "text": "42"},
                {"image_id": 2, "text": "ZE"},
            ]
            path.write_text(json.dumps({"annotations": texts}))
            return path

    import pyarrow as pa

    import trainer.data

    table = pa.Table.from_pylist(
        [
            {"image_id": 1, "aux_text": "The image includes text descriptions: BAKOLU, and 47."},
            {"image_id": 2, "aux_text": "The image includes text descriptions: ZE."},
        ]
    )
    monkeypatch.setattr(trainer.data, "load_examples", lambda wh, dataset, splits=None: table)
    assert signs.ocr_coverage(tmp_path, Corpus()) == {"sign_texts": 3, "read_exactly": 2, "fraction": 0.6667}
