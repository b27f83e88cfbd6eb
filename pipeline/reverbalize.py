"""`moai verbalize`: write a new `aux_text` version from stored rows, without running any model.

Each image is verbalized from its current records (warehouse/current.py: the config of each expert's
newest finished work on that image). The new version's key is (image_id, "aux", aux_hash(thresholds,
those configs)), so running it twice with the same thresholds adds nothing.
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timezone

from annotators.registry import EXPERT_NAMES
from core.errors import UserError
from verbalize.aux import aux_hash, aux_rows
from verbalize.moai import VerbalizeConfig, verbalize
from warehouse.current import current_configs, current_records
from warehouse.store import Warehouse


def reverbalize(wh: Warehouse, dataset: str, thresholds: dict) -> int:
    config = VerbalizeConfig.from_mapping(thresholds)
    configs = {name: current_configs(wh, dataset, name) for name in EXPERT_NAMES}
    records = {name: current_records(wh, dataset, name) for name in EXPERT_NAMES if configs[name]}
    images = wh.query("SELECT image_id, width, height FROM images WHERE dataset = ?", [dataset]).to_pylist()
    if not images:
        raise UserError(
            f"The warehouse at {wh.root} has no images for dataset '{dataset}'; annotate it first."
        )
    done = wh.query("SELECT image_id, config_hash FROM done WHERE dataset = ? AND expert = 'aux'", [dataset])
    existing = set(
        zip(done.column("image_id").to_pylist(), done.column("config_hash").to_pylist(), strict=True)
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
    new_aux, new_done, had, keys = [], [], 0, set()
    for image in images:
        image_id = image["image_id"]
        used = {n: configs[n][image_id] for n in EXPERT_NAMES if image_id in configs[n]}
        key = aux_hash(config.config_hash(), used)
        keys.add(key)
        if (image_id, key) in existing:
            had += 1
            continue
        text = verbalize(
            {n: records[n].get(image_id, []) for n in used}, image["width"], image["height"], config
        )
        aux, done = aux_rows(
            dataset, image_id, run_id, text.columns(), config.config_hash(), key, image_id in random_init
        )
        new_aux.append(aux)
        new_done.append(done)
    wh.commit({"aux_text": new_aux, "done": new_done})
    version = (
        next(iter(keys)) if len(keys) == 1 else f"{len(keys)} versions (images differ in expert configs)"
    )
    print(
        f"verbalize {dataset}: {len(new_aux)} new aux_text rows (version {version}), {had} already had it",
        file=sys.stderr,
    )
    return len(new_aux)
