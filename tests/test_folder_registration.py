"""Folder registration: ids are never reused, a changed file is a new image, unreadable folders are reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from corpora.folder import SPLIT, register_folder


def _write(path: Path, size: tuple[int, int], color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _register(folder: Path, root: Path) -> dict[str, tuple[int, int | None, int | None]]:
    corpus = register_folder("mine", folder, root)
    return {r.file_name: (r.image_id, r.width, r.height) for r in corpus.images()}


def _ids(listing: dict) -> dict[str, int]:
    return {name: image_id for name, (image_id, _, _) in listing.items()}


def _listing(root: Path) -> dict:
    """The listing as plain pyarrow reads it: {"images": [entries], "next_id": int}."""
    import pyarrow.parquet as pq

    table = pq.read_table(root / "mine" / "annotations" / f"images_{SPLIT}.parquet")
    return {"images": table.to_pylist(), "next_id": int(table.schema.metadata[b"next_id"])}


def _bump_mtime(path: Path, before_ns: int) -> None:
    # set explicitly: a filesystem with coarse timestamps could otherwise keep the old mtime
    os.utime(path, ns=(before_ns + 5 * 10**9, before_ns + 5 * 10**9))


_REGISTER = (
    "import sys, time; from pathlib import Path; from corpora.folder import register_folder\n"
    "while len(sys.argv) > 3 and not Path(sys.argv[3]).exists(): time.sleep(0.001)\n"  # a starting gun
    "register_folder('mine', Path(sys.argv[1]), Path(sys.argv[2]))"
)


def test_registrations_started_together_all_succeed_and_agree(tmp_path):
    # two `moai annotate` runs started together both register their folder: one used to crash on
    # the symlink the other had just made (FileExistsError), seen in test_warehouse_attacks
    folder = tmp_path / "imgs"
    for i in range(6):
        _write(folder / f"{i}.png", (8 + i, 8))
    repo = Path(__file__).resolve().parents[1]
    for attempt in range(3):
        root, gun = tmp_path / f"data{attempt}", tmp_path / f"go{attempt}"
        procs = [
            subprocess.Popen([sys.executable, "-c", _REGISTER, str(folder), str(root), str(gun)], cwd=repo,
                             stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]  # fmt: skip
        time.sleep(3)  # all four imported and waiting
        gun.touch()
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
        assert _ids(_register(folder, root)) == {f"{i}.png": i + 1 for i in range(6)}
        assert _listing(root)["next_id"] == 7


def test_a_registration_waits_for_one_in_progress(tmp_path):
    import fcntl

    folder, root = tmp_path / "imgs", tmp_path / "data"
    _write(folder / "a.png", (8, 8))
    (root / "mine").mkdir(parents=True)
    with open(root / "mine" / ".register.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-c", _REGISTER, str(folder), str(root)],
                                cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=5)  # it does not touch the listing while another registration holds it
        assert not (root / "mine" / "annotations" / f"images_{SPLIT}.parquet").exists()
    assert proc.wait(timeout=120) == 0
    assert _ids(_register(folder, root)) == {"a.png": 1}


def test_removed_id_is_never_reused(tmp_path):
    folder, root = tmp_path / "imgs", tmp_path / "data"
    for stem in ("a", "b", "c"):
        _write(folder / f"{stem}.png", (8, 8))
    first = _ids(_register(folder, root))
    assert first == {"a.png": 1, "b.png": 2, "c.png": 3}

    (folder / "c.png").unlink()  # the newest file goes away...
    assert _ids(_register(folder, root)) == {"a.png": 1, "b.png": 2}
    _write(folder / "d.png", (8, 8))  # ...and a new one must not inherit its id (nor its annotations)
    third = _ids(_register(folder, root))
    assert third == {"a.png": 1, "b.png": 2, "d.png": 4}
    assert _listing(root)["next_id"] == 5

    (folder / "d.png").unlink()
    _write(folder / "c.png", (8, 8))  # the old name coming back is a new image too
    assert _ids(_register(folder, root))["c.png"] == 5


def test_rewritten_file_gets_a_new_id_and_size(tmp_path):
    folder, root = tmp_path / "imgs", tmp_path / "data"
    path = _write(folder / "a.png", (10, 20))
    _write(folder / "b.png", (8, 8))
    first = _register(folder, root)
    assert first["a.png"] == (1, 10, 20)

    before = path.stat()
    _write(path, (30, 40), "blue")
    _bump_mtime(path, before.st_mtime_ns)
    assert path.stat().st_size != before.st_size
    second = _register(folder, root)
    assert second["a.png"] == (3, 30, 40)
    assert second["b.png"] == first["b.png"]


def test_same_size_new_mtime_gets_a_new_id(tmp_path):
    folder, root = tmp_path / "imgs", tmp_path / "data"
    # uncompressed 24-bit BMP rows are padded to 4 bytes: 4x8 and 8x4 files have the same size
    path = _write(folder / "a.bmp", (4, 8))
    assert _register(folder, root)["a.bmp"] == (1, 4, 8)

    before = path.stat()
    _write(path, (8, 4))
    _bump_mtime(path, before.st_mtime_ns)
    assert path.stat().st_size == before.st_size
    assert _register(folder, root)["a.bmp"] == (2, 8, 4)


def test_unchanged_files_keep_their_ids(tmp_path):
    folder, root = tmp_path / "imgs", tmp_path / "data"
    _write(folder / "a.png", (8, 8))
    _write(folder / "sub" / "b.jpg", (16, 12))
    _write(folder / ".hidden" / "c.png", (8, 8))  # hidden files and folders stay out
    _write(folder / ".d.png", (8, 8))
    (folder / "notes.txt").write_text("not an image")
    first = _register(folder, root)
    assert first == {"a.png": (1, 8, 8), "sub/b.jpg": (2, 16, 12)}
    for _ in range(2):
        assert _register(folder, root) == first
    entry = next(e for e in _listing(root)["images"] if e["file_name"] == "sub/b.jpg")
    stat = (folder / "sub" / "b.jpg").stat()
    assert (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)


def test_old_listing_adopts_stamps_and_keeps_ids(tmp_path):
    """A listing written before size/mtime_ns/next_id existed keeps its ids; later changes are detected."""
    folder, root = tmp_path / "imgs", tmp_path / "data"
    path = _write(folder / "a.png", (10, 20))
    _write(folder / "b.png", (8, 8))
    register_folder("mine", folder, root)
    (root / "mine" / "annotations" / f"images_{SPLIT}.parquet").unlink()  # as an earlier version left it:
    listing_path = root / "mine" / "annotations" / f"instances_{SPLIT}.json"  # a COCO JSON listing
    old = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 10, "height": 20},
            {"id": 9, "file_name": "b.png", "width": 8, "height": 8},
        ],
        "annotations": [],
        "categories": [],
    }
    listing_path.write_text(json.dumps(old))

    assert _ids(_register(folder, root)) == {"a.png": 7, "b.png": 9}
    assert _listing(root)["next_id"] == 10
    assert not listing_path.exists()  # replaced by the Parquet listing, which has every field
    before = path.stat()
    _write(path, (30, 40), "blue")
    _bump_mtime(path, before.st_mtime_ns)
    assert _register(folder, root)["a.png"] == (10, 30, 40)


def test_listing_is_a_plain_parquet_table(tmp_path):
    """Readable without our code (DuckDB here), one row per file, in path order."""
    import duckdb

    folder, root = tmp_path / "imgs", tmp_path / "data"
    _write(folder / "a.png", (10, 20))
    _write(folder / "sub" / "b.png", (8, 8))
    (folder / "notes.txt").write_text("not an image")
    register_folder("mine", folder, root)
    rows = duckdb.sql(
        f"SELECT id, file_name, width, height FROM '{root}/mine/annotations/images_{SPLIT}.parquet'"
    ).fetchall()
    assert rows == [(1, "a.png", 10, 20), (2, "sub/b.png", 8, 8)]


def test_many_new_files_are_read_in_parallel_with_the_same_result(tmp_path, monkeypatch):
    import corpora.folder as folder_mod

    folder, root = tmp_path / "imgs", tmp_path / "data"
    for i in range(40):
        _write(folder / f"d{i % 3}" / f"{i:03d}.png", (5 + i, 7))
    (folder / "d0" / "bad.png").write_bytes(b"not a png")
    serial = _register(folder, root / "serial")
    monkeypatch.setattr(folder_mod, "PARALLEL_FROM", 1)  # every header through the process pool
    parallel = _register(folder, root / "parallel")
    assert parallel == serial and len(serial) == 41
    assert serial["d0/bad.png"][1:] == (None, None) and serial["d1/001.png"][1:] == (6, 7)


def _deep_folder(parent: Path, levels: int = 22) -> None:
    """A chain of folders whose full path outgrows PATH_MAX (4096 on Linux), made relative to open
    folders. Listing its deep end fails with ENAMETOOLONG, as root too (unlike chmod 000)."""
    fd = os.open(parent, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def test_folder_that_cannot_be_listed_is_reported(tmp_path, capsys):
    folder, root = tmp_path / "imgs", tmp_path / "data"
    _write(folder / "a.png", (8, 8))
    _write(folder / "deep" / "b.png", (8, 8))
    _deep_folder(folder / "deep")
    try:
        assert _ids(_register(folder, root)) == {"a.png": 1, "deep/b.png": 2}  # the rest is still listed
    finally:
        shutil.rmtree(folder / "deep")  # fd-based on Linux, so the long paths are no problem
    err = capsys.readouterr().err
    assert "warning: 1 path(s) under" in err and "dataset 'mine'" in err
    assert "File name too long" in err and str(folder / "deep" / ("d" * 200)) in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a chmod 000 folder anyway")
def test_unreadable_folder_is_reported(tmp_path, capsys):
    folder, root = tmp_path / "imgs", tmp_path / "data"
    _write(folder / "a.png", (8, 8))
    _write(folder / "locked" / "b.png", (8, 8))
    (folder / "locked").chmod(0)
    try:
        assert _ids(_register(folder, root)) == {"a.png": 1}
    finally:
        (folder / "locked").chmod(0o755)
    err = capsys.readouterr().err
    assert "warning: 1 path(s)" in err and "Permission denied" in err and str(folder / "locked") in err


def test_warning_names_the_first_few_and_counts_the_rest(capsys):
    from corpora.folder import _warn

    problems = [PermissionError(13, "Permission denied", f"/x/{i}") for i in range(8)]
    _warn(Path("/x"), "mine", problems)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: 8 path(s) under /x" in err
    assert "/x/4 (Permission denied)" in err and "/x/5" not in err and "and 3 more" in err
