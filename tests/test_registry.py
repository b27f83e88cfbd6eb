"""A new expert is one file plus one registry row: a toy expert, added that way, is planned, run,
stored in its own table, keyed in the ledger, skipped on a rerun and queryable, with no other edit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from annotators.registry import EXPERTS, expert_spec
from tests.conftest import REPO

TOY = '''
"""A toy expert: one "blob" per image, the image's mean brightness as its score."""
from dataclasses import dataclass

import pyarrow as pa

from annotators.base import Expert, RANDOM_INIT


@dataclass
class Blob:
    label: str
    score: float


class ToyExpert(Expert):
    name = "toy"
    version = "1"

    def load(self):
        pass

    def weights_sha256(self):
        return RANDOM_INIT

    def predict(self, batch):
        return [[Blob("bright" if item.rgb().mean() > self.config.get("threshold", 128) else "dark",
                      float(item.rgb().mean()) / 255)] for item in batch]


def build(config):
    return ToyExpert(config)


DEFAULT_BACKEND = "mean"
BACKEND_KEYS = {"mean": frozenset({"threshold", "weights"})}
TABLE = "blobs"
COLUMNS = [("blob_index", pa.int32()), ("label", pa.string()), ("score", pa.float32())]


def to_columns(index, record):
    return {"blob_index": index, "label": record["label"], "score": record["score"]}


def from_columns(row):
    return {"label": row["label"], "score": row["score"]}
'''

# What a developer adds to EXPERTS in annotators/registry.py; here added before anything reads it.
RUN = """
import json, sys
import annotators.registry as registry
import toy_expert
registry.EXPERTS["toy"] = registry.ExpertSpec("toy", toy_expert, toy_expert.build, toy_expert.Blob, (), "blob_index")
registry.EXPERT_NAMES = tuple(registry.EXPERTS)

from corpora.resolve import resolve_corpus
from pipeline.annotate import run_annotation
from pipeline.profiles import JobSpec, load_profile
from warehouse.current import current_records
from warehouse.store import Warehouse

folder, data, root, profile = sys.argv[1:5]
corpus = resolve_corpus("toys", images=folder, root=data)
wh = Warehouse(root)
job = JobSpec(dataset="toys", profile="toy", allow_random_weights=True, batch_size=2)
out = {}
for attempt in ("first", "rerun"):
    run_annotation(corpus, load_profile(profile), job, wh, executor="local")
    out[attempt] = wh.query("SELECT count(*) AS n FROM blobs").to_pylist()[0]["n"]
out["ledger"] = wh.query("SELECT count(*) AS n FROM done WHERE expert = 'toy' AND status = 'ok'").to_pylist()[0]["n"]
out["labels"] = sorted(r[0]["label"] for r in current_records(wh, "toys", "toy").values())
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_toy_expert_is_one_file_plus_one_registry_row(tmp_path):
    from PIL import Image

    (tmp_path / "toy_expert.py").write_text(textwrap.dedent(TOY))
    folder = tmp_path / "images"
    folder.mkdir()
    for name, value in (("black", 0), ("white", 255), ("grey", 200)):
        Image.new("RGB", (16, 12), (value,) * 3).save(folder / f"{name}.png")
    profile = tmp_path / "toy.yaml"
    profile.write_text("experts:\n  toy:\n    threshold: 100\n")
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(folder), str(tmp_path / "data"), str(tmp_path / "wh"), str(profile)],
        cwd=REPO,
        env={"PYTHONPATH": f"{REPO}:{tmp_path}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"first": 3, "rerun": 3, "ledger": 3, "labels": ["bright", "bright", "dark"]}


def test_unknown_experts_are_refused_not_treated_as_another_kind():
    from warehouse.rows import records_from_table_row

    with pytest.raises(ValueError, match="unknown expert 'depth'"):
        records_from_table_row("depth", {"text": "x", "score": 1.0, "polygon": []})
    assert expert_spec("ocr").table == "ocr" and list(EXPERTS) == ["detection", "segmentation", "sgg", "ocr"]
