"""The warehouse tables: names and columns are a contract with analysts and the trainer.

Every annotation row carries `dataset`, `image_id`, `run_id`, the expert's model identity
(`model`, `backend`, `weights_sha256`) and its `config_hash`.
"""

from __future__ import annotations

import pyarrow as pa

from annotators.registry import EXPERTS

IDENTITY = [
    ("dataset", pa.string()),
    ("image_id", pa.int64()),
    ("run_id", pa.string()),
    ("model", pa.string()),
    ("backend", pa.string()),
    ("weights_sha256", pa.string()),  # sha256 of the weights, or 'random-init'
    ("config_hash", pa.string()),  # exactly-once key part; includes upstream experts' hashes
]

TABLES: dict[str, pa.Schema] = {
    "images": pa.schema(
        [
            ("dataset", pa.string()),
            ("split", pa.string()),
            ("image_id", pa.int64()),
            ("file_name", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("source_mode", pa.string()),
            ("exif_rotated", pa.bool_()),
            ("frames", pa.int32()),
            ("run_id", pa.string()),
        ]
    ),
    **{spec.table: pa.schema(IDENTITY + spec.columns) for spec in EXPERTS.values()},
    "aux_text": pa.schema(
        [
            ("dataset", pa.string()),
            ("image_id", pa.int64()),
            ("run_id", pa.string()),
            ("text", pa.string()),
            ("segmentation_text", pa.string()),
            ("detection_text", pa.string()),
            ("sgg_text", pa.string()),
            ("ocr_text", pa.string()),
            ("verbalizer_hash", pa.string()),  # thresholds etc.
            ("config_hash", pa.string()),  # verbalizer hash + the four experts' config hashes
            ("random_init", pa.bool_()),  # true when any contributing expert ran with random weights
        ]
    ),
    "errors": pa.schema(
        [
            ("dataset", pa.string()),
            ("split", pa.string()),
            ("image_id", pa.int64()),
            ("file_name", pa.string()),
            ("stage", pa.string()),
            ("reason", pa.string()),
            ("message", pa.string()),
            ("config_hash", pa.string()),
            ("run_id", pa.string()),
        ]
    ),
    # Instruction / QA pairs for training and evaluation (imported from QA files, LLaVA JSON, COCO captions).
    "instructions": pa.schema(
        [
            ("dataset", pa.string()),
            ("split", pa.string()),
            ("image_id", pa.int64()),
            ("source", pa.string()),
            ("sample_id", pa.string()),
            ("turn", pa.int32()),
            ("type", pa.string()),
            ("question", pa.string()),
            ("answer", pa.string()),
        ]
    ),
    # Trainer caches (trainer/cache.py): work the frozen parts would otherwise redo every epoch.
    # One row per (dataset, image_id, aux_config_hash, tokenizer): the aux text's token ids, untruncated.
    "aux_tokens": pa.schema(
        [
            ("dataset", pa.string()),
            ("image_id", pa.int64()),
            ("aux_config_hash", pa.string()),  # aux_text.config_hash of the tokenized text
            ("tokenizer", pa.string()),  # "byte", or "hf:<name>[:<gguf file>]:<hash of the tokenizer>"
            ("text_sha256", pa.string()),  # of the tokenized text: a changed text is caught, not mixed
            ("token_ids", pa.list_(pa.int32())),
        ]
    ),
    # One row per (dataset, image_id, encoder, image_size): the frozen vision tower's patch features.
    "vision_features": pa.schema(
        [
            ("dataset", pa.string()),
            ("image_id", pa.int64()),
            ("encoder", pa.string()),  # "<vision>:<hash of weights or config, layer, dtype, normalisation>"
            ("image_size", pa.int32()),
            ("n_patches", pa.int32()),
            ("dim", pa.int32()),
            ("dtype", pa.string()),  # torch dtype of `features`: the encoder's own output dtype
            ("features", pa.binary()),  # n_patches × dim, row-major
        ]
    ),
    # The exactly-once ledger: one row per (dataset, image_id, expert, config_hash) ever committed.
    "done": pa.schema(
        [
            ("dataset", pa.string()),
            ("image_id", pa.int64()),
            ("expert", pa.string()),
            ("config_hash", pa.string()),
            ("status", pa.string()),
            ("n_records", pa.int32()),
            ("seconds", pa.float32()),
            ("run_id", pa.string()),
        ]
    ),
    "runs": pa.schema(
        [
            ("run_id", pa.string()),
            ("dataset", pa.string()),
            ("profile", pa.string()),
            ("started_at", pa.timestamp("us", tz="UTC")),
            ("finished_at", pa.timestamp("us", tz="UTC")),
            ("images_listed", pa.int64()),
            ("images_processed", pa.int64()),
            ("errors", pa.int64()),
            ("images_per_s", pa.float64()),
            ("counts_json", pa.string()),
            ("config_json", pa.string()),
            ("versions_json", pa.string()),
            ("random_init_experts", pa.string()),
        ]
    ),
}

EXPERT_TABLES = {name: spec.table for name, spec in EXPERTS.items()}

DECODE_KEY = "decode-v1"  # the decode step's entry in the `done` ledger

# Which `done` ledger key each annotation row belongs to, as (expert, config hash): a column name, or a
# quoted constant. A commit drops rows whose key another commit already finished (nothing doubled).
LEDGER_KEYS: dict[str, tuple[str, str]] = {
    "images": ("'decode'", f"'{DECODE_KEY}'"),
    **{table: (f"'{expert}'", "config_hash") for expert, table in EXPERT_TABLES.items()},
    "aux_text": ("'aux'", "config_hash"),
    "errors": ("stage", "config_hash"),
}
# Tables outside the ledger with a natural key of their own: a commit adds a key at most once.
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "instructions": ("dataset", "sample_id"),
    "aux_tokens": ("dataset", "image_id", "aux_config_hash", "tokenizer"),
    "vision_features": ("dataset", "image_id", "encoder", "image_size"),
}
