"""`moai verbalize`: write a new `aux_text` version from stored rows, without running any model.

For each expert it uses the config of its most recent committed work for the dataset (the `done` ledger); the new
version's key is (image_id, "aux", hash(verbalizer thresholds + those configs)), so running it twice
with the same thresholds adds nothing.
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timezone

from annotators.verbalize import VerbalizeConfig, verbalize
from pipeline.annotate import aux_hash
from pipeline.errors import UserError
from warehouse.rows import ROW_BUILDERS, latest_committed_config, stored_records
from warehouse.store import Warehouse


def reverbalize(wh: Warehouse, dataset: str, thresholds: dict) -> int:
    config = VerbalizeConfig.from_mapping(thresholds)
    hashes = {}
    records: dict[str, dict[int, list]] = {}
    for name in ROW_BUILDERS:
        chosen = latest_committed_config(wh, dataset, name)
        if chosen is None:
            continue
        hashes[name] = chosen
        records[name] = stored_records(wh, dataset, name, chosen)
    images = wh.query(
        "SELECT DISTINCT image_id, width, height FROM images WHERE dataset = ?", [dataset]
    ).to_pylist()
    if not images:
        raise UserError(
            f"The warehouse at {wh.root} has no images for dataset '{dataset}'; annotate it first."
        )
    key = aux_hash(config.config_hash(), hashes)
    existing = set(
        wh.query(
            "SELECT image_id FROM done WHERE dataset = ? AND expert = 'aux' AND config_hash = ?",
            [dataset, key],
        )
        .column("image_id")
        .to_pylist()
    )
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    random_init = set(
        wh.query(
            "SELECT DISTINCT image_id FROM detections WHERE dataset = ? AND weights_sha256 = "
            "'random-init' UNION SELECT DISTINCT image_id FROM segments WHERE dataset = ? AND "
            "weights_sha256 = 'random-init'",
            [dataset, dataset],
        )
        .column("image_id")
        .to_pylist()
    )
    aux_rows, done_rows = [], []
    for image in images:
        image_id = image["image_id"]
        if image_id in existing:
            continue
        text = verbalize(
            {n: records[n].get(image_id, []) for n in records}, image["width"], image["height"], config
        )
        aux_rows.append(
            {
                "dataset": dataset,
                "image_id": image_id,
                "run_id": run_id,
                **text.columns(),
                "verbalizer_hash": config.config_hash(),
                "config_hash": key,
                "random_init": image_id in random_init,
            }
        )
        done_rows.append(
            {
                "dataset": dataset,
                "image_id": image_id,
                "expert": "aux",
                "config_hash": key,
                "status": "ok",
                "n_records": 1,
                "seconds": 0.0,
                "run_id": run_id,
            }
        )
    wh.commit({"aux_text": aux_rows, "done": done_rows})
    print(
        f"verbalize {dataset}: {len(aux_rows)} new aux_text rows (version {key}), "
        f"{len(existing)} already had it",
        file=sys.stderr,
    )
    return len(aux_rows)
