"""The warehouse's promises under attack: nothing doubled, nothing lost, clear errors, readers keep working.

Each test reproduces an attack that once broke a promise (see issue 11)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main as moai
from core.errors import WarehouseError
from corpora.resolve import resolve_corpus
from pipeline.annotate import run_annotation
from pipeline.profiles import JobSpec, load_profile
from tests.conftest import REPO
from warehouse.store import Warehouse

FAST = str(REPO / "tests" / "profiles" / "fast.yaml")
KEY = ["dataset", "image_id", "expert", "config_hash"]


def _done(dataset, image_id, expert="detection", status="ok", chash="h1", n=1):
    return {
        "dataset": dataset, "image_id": image_id, "expert": expert, "config_hash": chash, "status": status,
        "n_records": n, "seconds": 0.1, "run_id": "r1",
    }  # fmt: skip


def _det(dataset, image_id, chash="h1"):
    return {
        "dataset": dataset, "image_id": image_id, "run_id": "r1", "model": "m", "backend": "b",
        "weights_sha256": "w", "config_hash": chash, "det_index": 0, "label": "cat", "class_id": 15,
        "score": 0.9, "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0,
    }  # fmt: skip


def _err(dataset, image_id, stage="detection", chash="h1"):
    return {
        "dataset": dataset, "split": "default", "image_id": image_id, "file_name": f"{image_id}.jpg",
        "stage": stage, "reason": "expert-failed", "message": "boom", "config_hash": chash, "run_id": "r1",
    }  # fmt: skip


def _n(wh: Warehouse, sql: str) -> int:
    return wh.query(sql).to_pylist()[0]["n"]


def _data_files(root: Path) -> dict[str, bytes]:
    """Every data file (and the manifest) under root, by path: a moved, changed or deleted file shows."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and (p.suffix == ".parquet" or p.name == "_manifest.json")
    }


# ---------------------------------------------------------------------------------------- nothing doubled
def test_a_commit_never_adds_a_key_that_is_already_committed(tmp_path):
    wh = Warehouse(tmp_path)
    batch = {"done": [_done("a", 1), _done("a", 2)], "detections": [_det("a", 1), _det("a", 2)]}
    wh.commit(batch)
    # a second run that planned before the first committed: the same results arrive again
    wh.commit({"done": [_done("a", 1), _done("a", 3)], "detections": [_det("a", 1), _det("a", 3)]})
    assert _n(wh, "SELECT count(*) AS n FROM detections") == 3
    assert _n(wh, "SELECT count(*) AS n FROM (SELECT DISTINCT * FROM done)") == 3
    assert _n(wh, "SELECT count(*) AS n FROM done") == 3
    assert wh.skipped_keys == 1
    # the same image id in another dataset or under another config is not a duplicate
    wh.commit(
        {"done": [_done("b", 1), _done("a", 1, chash="h2")], "detections": [_det("b", 1), _det("a", 1, "h2")]}
    )
    assert _n(wh, "SELECT count(*) AS n FROM detections") == 5


def test_a_failed_key_can_be_finished_by_a_retry_but_never_twice(tmp_path):
    wh = Warehouse(tmp_path)
    wh.commit({"done": [_done("a", 1, status="error", n=0)], "errors": [_err("a", 1)]})
    wh.commit({"done": [_done("a", 1, status="error", n=0)], "errors": [_err("a", 1)]})  # the same failure
    assert _n(wh, "SELECT count(*) AS n FROM errors") == 1
    wh.commit({"done": [_done("a", 1)], "detections": [_det("a", 1)]})  # the retry succeeded
    wh.commit({"done": [_done("a", 1)], "detections": [_det("a", 1)]})  # and a racing retry adds nothing
    assert _n(wh, "SELECT count(*) AS n FROM detections") == 1
    assert _n(wh, "SELECT count(*) AS n FROM done WHERE status = 'ok'") == 1


def test_keyed_tables_outside_the_ledger_are_not_doubled(tmp_path):
    wh = Warehouse(tmp_path)
    row = {
        "dataset": "a", "split": "train", "image_id": 1, "source": "qa", "sample_id": "qa:1", "turn": 0,
        "type": "count", "question": "How many?", "answer": "2",
    }  # fmt: skip
    wh.commit({"instructions": [row, row]})
    wh.commit({"instructions": [row, {**row, "sample_id": "qa:2"}]})
    assert _n(wh, "SELECT count(*) AS n FROM instructions") == 2


# ------------------------------------------------------------- rows the workers wrote, the driver commits
RUN = "20261130T000000Z-abcdef"


def test_files_a_worker_staged_are_published_as_written_and_each_key_only_once(tmp_path):
    wh = Warehouse(tmp_path)
    rels = wh.stage({"done": [_done("a", 1), _done("a", 2)], "detections": [_det("a", 1), _det("a", 2)]},
                    f"a--{RUN}")  # fmt: skip
    written = {rel.split("/")[2]: (tmp_path / rel).read_bytes() for rel in rels}
    assert _n(wh, "SELECT count(*) AS n FROM detections") == 0  # staged is not committed
    wh.commit_staged(rels)
    assert _n(wh, "SELECT count(*) AS n FROM detections") == 2
    # the driver only moved the files into place: the published files are the worker's bytes
    assert {t: wh.files(t)[0].read_bytes() for t in written} == written
    assert not any((tmp_path / rel).exists() for rel in rels)
    # a re-run task (or a racing run) stages the same keys again with a new image: only that one is added
    again = wh.stage({"done": [_done("a", 2), _done("a", 3)], "detections": [_det("a", 2), _det("a", 3)]},
                     f"a--{RUN}")  # fmt: skip
    wh.commit_staged(again)
    assert _n(wh, "SELECT count(*) AS n FROM detections") == 3 and wh.skipped_keys == 1
    assert _n(wh, "SELECT count(*) AS n FROM done") == 3


def test_rows_staged_but_never_committed_stay_invisible_and_the_next_run_removes_them(tmp_path, photos):
    wh = Warehouse(tmp_path / "wh")
    corpus = resolve_corpus("race", images=photos, root=tmp_path / "data")
    stale = wh.stage({"detections": [_det("race", 1)], "done": [_done("race", 1)]}, f"race--{RUN}")
    other = wh.stage({"detections": [_det("race--b", 1)]}, f"race--b--{RUN}")  # another dataset's run
    job = JobSpec(dataset="race", profile="fast", allow_random_weights=True, batch_size=4, commit_every=4)
    run_annotation(corpus, load_profile(FAST), job, wh, executor="local")
    assert not (tmp_path / "wh" / stale[0]).exists() and (tmp_path / "wh" / other[0]).exists()
    # the images were annotated by the run itself; the staged rows never reached a table
    assert _n(wh, "SELECT count(*) AS n FROM done WHERE run_id = 'r1'") == 0
    assert _n(wh, "SELECT count(*) AS n FROM images") == 8
    assert _n(wh, "SELECT count(*) AS n FROM detections WHERE run_id = 'r1'") == 0


@pytest.fixture()
def photos(tmp_path, sample_image):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, stem in enumerate(["coffee", "bus", "page", "chelsea"] * 2):
        shutil.copy(sample_image(stem), folder / f"{i}-{stem}.jpg")
    return folder


def _annotate_cli(folder: Path, warehouse: Path, data: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "MOAI_DATA": str(data), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "cli.main", "annotate", "--dataset", "race", "--images", str(folder)]
    cmd += ["--profile", FAST, "--warehouse", str(warehouse), "--executor", "local", "--allow-random-weights"]
    return subprocess.Popen(
        [*cmd, *extra], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_two_concurrent_runs_on_one_dataset_never_duplicate(tmp_path, photos):
    wh = tmp_path / "wh"
    first = _annotate_cli(photos, wh, tmp_path / "data", "--commit-every", "1")
    second = _annotate_cli(photos, wh, tmp_path / "data", "--commit-every", "1")
    results = [p.communicate(timeout=600) for p in (first, second)]
    codes = [first.returncode, second.returncode]
    assert 0 in codes and set(codes) <= {0, 2}, results
    for (_, err), code in zip(results, codes, strict=True):
        if code == 2:  # refused: one paragraph, no traceback
            assert "already running on dataset 'race'" in err and "Traceback" not in err
    w = Warehouse(wh)
    assert _n(w, "SELECT count(*) AS n FROM images") == 8
    assert _n(w, "SELECT count(*) AS n FROM aux_text") == 8
    dup = f"SELECT count(*) AS n FROM (SELECT {', '.join(KEY)} FROM done GROUP BY ALL HAVING count(*) > 1)"
    assert _n(w, dup) == 0
    # and a rerun after both adds nothing
    rerun = _annotate_cli(photos, wh, tmp_path / "data")
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert _n(w, "SELECT count(*) AS n FROM images") == 8


def test_the_run_lock_refuses_a_second_run_in_one_line(tmp_path, sample_corpus):
    wh = Warehouse(tmp_path / "wh")
    profile = load_profile(FAST)
    job = JobSpec(dataset="sample", profile="fast", allow_random_weights=True)
    with wh.run_lock("sample"):
        with pytest.raises(WarehouseError, match="already running on dataset 'sample'") as info:
            run_annotation(sample_corpus, profile, job, wh, executor="local", limit=1)
    assert "\n" not in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    with wh.run_lock("other"):  # other datasets are not blocked
        pass


# ---------------------------------------------------------------------------------------- nothing lost
def _two_datasets(root: Path) -> Warehouse:
    wh = Warehouse(root)
    for ds in ("a", "b"):
        wh.commit({"done": [_done(ds, i) for i in range(3)], "detections": [_det(ds, i) for i in range(3)]})
    return wh


def test_a_lost_manifest_deletes_nothing_and_every_command_says_so(tmp_path, sample_corpus, capsys):
    wh = _two_datasets(tmp_path / "wh")
    (wh.root / "_manifest.json").unlink()
    before = _data_files(wh.root)
    for attempt in (
        wh.recover,
        lambda: wh.commit({"done": [_done("c", 1)]}),
        lambda: wh.compact(min_files=1),
    ):
        with pytest.raises(WarehouseError, match="no _manifest.json but holds 4 Parquet files"):
            attempt()
    # readers refuse too instead of answering 0 rows
    assert moai(["sql", "--warehouse", str(wh.root), "SELECT count(*) FROM detections"]) == 2
    # and so does an annotation run of another dataset, before any model runs
    job = JobSpec(dataset="sample", profile="fast", allow_random_weights=True)
    with pytest.raises(WarehouseError, match="Restore _manifest.json"):
        run_annotation(sample_corpus, load_profile(FAST), job, wh, executor="local", limit=1)
    assert _data_files(wh.root) == before
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Restore _manifest.json" in err


@pytest.mark.parametrize(
    "garbage", ["", "not json {", "{}", "[]", '{"tables": []}', '{"tables": {"done": [1]}}']
)
def test_a_garbled_manifest_is_a_clear_error(tmp_path, garbage, capsys):
    wh = _two_datasets(tmp_path / "wh")
    (wh.root / "_manifest.json").write_text(garbage)
    before = _data_files(wh.root)
    with pytest.raises(WarehouseError, match="manifest .* is unreadable") as info:
        wh.commit({"done": [_done("c", 1)]})
    assert "\n" not in str(info.value)
    assert moai(["sql", "--warehouse", str(wh.root), "SELECT 1"]) == 2
    assert "is unreadable" in capsys.readouterr().err
    assert _data_files(wh.root) == before


def test_a_full_disk_during_a_commit_rolls_it_back_with_one_paragraph(tmp_path, monkeypatch):
    wh = _two_datasets(tmp_path / "wh")
    before = wh.manifest()
    import warehouse.store as store

    real_replace = os.replace
    calls = {"n": 0}

    def replace_then_fill_the_disk(src, dst):  # the second file of the commit finds the disk full
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", replace_then_fill_the_disk)
    with pytest.raises(WarehouseError, match="is full .* rolled back") as info:
        wh.commit({"done": [_done("c", 1)], "detections": [_det("c", 1)]})
    monkeypatch.undo()
    assert "\n" not in str(info.value)
    assert wh.manifest() == before
    named = {r for files in before["tables"].values() for r in files}
    assert {p.relative_to(wh.root).as_posix() for p in wh._table_files()} == named  # nothing left behind
    wh.commit({"done": [_done("c", 1)], "detections": [_det("c", 1)]})  # space is back: the rerun works
    assert _n(wh, "SELECT count(*) AS n FROM detections WHERE dataset = 'c'") == 1


# ---------------------------------------------------------------------------------------- readers
def test_a_commit_after_a_crashed_commit_removes_what_that_one_placed(tmp_path):
    wh = Warehouse(tmp_path)
    wh.commit({"done": [_done("a", 1)], "detections": [_det("a", 1)]})
    # a writer killed between placing its file and publishing: its journal names the file
    rel = "detections/dataset=a/part-crashed.parquet"
    shutil.copy(wh.files("detections")[0], tmp_path / rel)
    wh._journal("crashed", [rel])
    wh.commit({"done": [_done("a", 2)], "detections": [_det("a", 2)]})  # no explicit recover() first
    assert not (tmp_path / rel).exists()
    assert _n(wh, "SELECT count(*) AS n FROM detections") == 2


def test_compaction_during_a_run_does_not_rewrite_the_big_file_each_time(tmp_path):
    wh = Warehouse(tmp_path)
    wh.commit({"done": [_done("a", i) for i in range(1, 20001)]})  # an earlier run's compacted ledger
    big = wh.files("done")
    for i in range(8):  # eight small commits since
        wh.commit({"done": [_done("a", 30000 + i)]})
    assert wh.compact(min_files=8, tiered=True) == 8  # the eight small ones merged, the big one kept
    assert big[0] in wh.files("done") and len(wh.files("done")) == 2
    assert _n(wh, "SELECT count(*) AS n FROM done") == 20008
    assert wh.compact(min_files=2) == 2  # the end-of-run compaction merges every small file


def test_a_reader_that_listed_files_before_compaction_keeps_reading(tmp_path):
    wh = Warehouse(tmp_path)
    for i in range(8):
        wh.commit({"done": [_done("a", i)], "detections": [_det("a", i)]})
    reader = wh.connect()  # e.g. an open `moai sql --shell`
    assert wh.compact(min_files=8) == 16
    assert reader.sql("SELECT count(*) FROM detections").fetchall()[0][0] == 8
    reader.close()
    assert _n(wh, "SELECT count(*) AS n FROM detections") == 8


# ---------------------------------------------------------------------------------------- errors retried
@pytest.mark.slow
def test_an_error_is_retried_when_asked_or_when_the_file_changed(tmp_path, sample_image):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_image("coffee"), folder / "coffee.jpg")
    good = sample_image("bus").read_bytes()
    victim = folder / "bus.jpg"
    victim.write_bytes(b"\0" * len(good))  # still being copied: right size, no image yet
    stamp = victim.stat().st_mtime_ns
    corpus = resolve_corpus("retry", images=folder, root=tmp_path / "data")
    wh = Warehouse(tmp_path / "wh")
    job = JobSpec(dataset="retry", profile="fast", allow_random_weights=True, batch_size=2)
    profile = load_profile(FAST)
    profile.experts.pop("ocr")

    def run(**kw):
        run_annotation(resolve_corpus("retry", images=folder, root=tmp_path / "data"), profile, job, wh,
                       executor="local", **kw)  # fmt: skip

    run()
    assert _n(wh, "SELECT count(*) AS n FROM errors WHERE stage = 'decode'") == 1
    victim.write_bytes(good)  # the copy finished; the same size, and (say) the same mtime
    os.utime(victim, ns=(stamp, stamp))
    run()
    assert _n(wh, "SELECT count(*) AS n FROM images") == 1  # not retried unasked: same file stamp
    run(retry_errors=True)
    assert sorted(wh.query("SELECT file_name FROM images").column("file_name").to_pylist()) == [
        "bus.jpg", "coffee.jpg"
    ]  # fmt: skip
    run(retry_errors=True)  # nothing left to retry: nothing doubled
    assert _n(wh, "SELECT count(*) AS n FROM images") == 2
    assert _n(wh, "SELECT count(*) AS n FROM aux_text") == 2
    # a file that changes is a new image, annotated without being asked
    shutil.copy(sample_image("chelsea"), folder / "coffee.jpg")
    run()
    assert _n(wh, "SELECT count(*) AS n FROM images WHERE file_name = 'coffee.jpg'") == 2
    assert corpus.name == "retry"


# ---------------------------------------------------------------------------------------- check and repair
def _image(dataset, image_id):
    return {
        "dataset": dataset, "split": "default", "image_id": image_id, "file_name": f"{image_id}.jpg",
        "width": 4, "height": 4, "source_mode": "RGB", "exif_rotated": False, "frames": 1, "run_id": "r1",
    }  # fmt: skip


def _three_commits(root: Path) -> Warehouse:
    wh = Warehouse(root)
    for i in (1, 2, 3):
        decode = _done("a", i, expert="decode", chash="decode-v1", n=0)
        wh.commit(
            {"images": [_image("a", i)], "detections": [_det("a", i)], "done": [decode, _done("a", i)]},
            commit_id=f"c{i}",
        )
    return wh


def test_check_finds_a_damaged_file_and_repair_makes_the_image_redoable(tmp_path, capsys):
    from warehouse.check import check

    wh = _three_commits(tmp_path)
    damaged = wh.root / "detections" / "dataset=a" / "part-c2.parquet"
    damaged.write_bytes(damaged.read_bytes()[:40])
    assert moai(["warehouse", "check", "--warehouse", str(wh.root)]) == 1
    assert "unreadable: detections/dataset=a/part-c2.parquet" in capsys.readouterr().out
    assert moai(["warehouse", "repair", "--yes", "--warehouse", str(wh.root)]) == 0
    assert check(wh).ok
    assert list((wh.root / "_quarantine").rglob("part-c2.parquet"))  # kept, not deleted
    assert _n(wh, "SELECT count(*) AS n FROM images") == 3
    assert wh.query("SELECT image_id FROM detections ORDER BY 1").column("image_id").to_pylist() == [1, 3]
    # the ledger forgot image 2's detection, so a rerun redoes it, once
    wh.commit({"done": [_done("a", 2)], "detections": [_det("a", 2)]})
    wh.commit({"done": [_done("a", 2)], "detections": [_det("a", 2)]})
    assert wh.query("SELECT image_id FROM detections ORDER BY 1").column("image_id").to_pylist() == [1, 2, 3]


def test_repair_drops_rows_whose_ledger_was_lost_so_a_redo_cannot_double_them(tmp_path):
    from warehouse.check import check

    wh = _three_commits(tmp_path)
    (wh.root / "done" / "dataset=a" / "part-c3.parquet").unlink()
    report = check(wh)
    assert list(report.unreadable) == ["done/dataset=a/part-c3.parquet"]
    from warehouse.check import repair

    repair(wh)
    after = check(wh)
    assert after.ok, after.lines()
    assert wh.query("SELECT image_id FROM images ORDER BY 1").column("image_id").to_pylist() == [1, 2]
    decode = _done("a", 3, expert="decode", chash="decode-v1", n=0)
    wh.commit({"images": [_image("a", 3)], "detections": [_det("a", 3)], "done": [decode, _done("a", 3)]})
    assert (
        _n(wh, "SELECT count(*) AS n FROM images") == 3
        and _n(wh, "SELECT count(*) AS n FROM detections") == 3
    )


def test_repair_asks_first_and_changes_nothing_when_refused(tmp_path, monkeypatch):
    wh = _three_commits(tmp_path)
    (wh.root / "detections" / "dataset=a" / "part-c1.parquet").write_bytes(b"garbage")
    before = _data_files(wh.root)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert moai(["warehouse", "repair", "--warehouse", str(wh.root)]) == 1
    assert _data_files(wh.root) == before


def test_annotate_on_a_damaged_ledger_stops_with_one_paragraph(tmp_path, sample_corpus):
    wh = _three_commits(tmp_path)
    damaged = wh.root / "done" / "dataset=a" / "part-c1.parquet"
    damaged.write_bytes(damaged.read_bytes()[:30])
    job = JobSpec(dataset="sample", profile="fast", allow_random_weights=True)
    with pytest.raises(
        WarehouseError, match="warehouse table done cannot be read: file .*part-c1.parquet"
    ) as info:
        run_annotation(sample_corpus, load_profile(FAST), job, wh, executor="local", limit=1)
    assert "\n" not in str(info.value) and "moai warehouse repair" in str(info.value)
