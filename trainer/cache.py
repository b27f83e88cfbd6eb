"""Warehouse caches of what the frozen parts compute the same way every epoch.

    aux_tokens        the aux text's token ids, per (dataset, image, aux config, tokenizer)
    vision_features   the frozen vision tower's patch features, per (dataset, image, encoder, size)

`cache_aux_tokens` / `cache_vision_features` add only the missing rows (a second call computes and
writes nothing); `AuxTokenCache` / `VisionFeatureCache` are what the data path reads when
`data.aux_token_cache` / `data.vision_feature_cache` are on. `moai train` fills the caches it is
told to use before training; `moai cache` fills both for a training config.

Keys make mixing impossible rather than unlikely: a tokenizer's id hashes the whole tokenizer, an
encoder's id hashes its weights (tiny random towers, via trainer.export's fingerprints) or its config
(hub/local towers) together with the feature layer, dtype and pixel normalisation. A row the data
path needs but cannot find is an error, never a silent fallback. Writes are ordinary warehouse
commits (atomic); two fillers racing on one key may both append a row, which readers tolerate since
such rows are equal.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import UserError
from corpora.resolve import resolve_corpus
from trainer.inputs import DataConfig, image_tensor, load_image
from trainer.model import MoAI, backbone_fingerprints
from warehouse.store import Warehouse

COMMIT_BYTES = 64 * 1024 * 1024  # features per commit: bounds memory, and a crash keeps what was done
HOW_TO_FILL = "`moai cache --config <training config>` fills it (`moai train` does too when the option is on)"


@dataclass
class CacheFill:
    """What one fill did: rows added, rows it found already there, and the time it took."""

    table: str
    key: str
    added: int
    present: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.table}: {self.added} added, {self.present} already present "
            f"({self.key}) in {self.seconds:.1f} s"
        )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------
# aux_tokens
# ---------------------------------------------------------------------------------------------------


def cache_aux_tokens(wh: Warehouse, dataset: str, tokenizer) -> CacheFill:
    """Tokenize every (image, aux config) text of `dataset` not yet cached for `tokenizer`; one commit.
    The ids are stored untruncated, so one cache serves any `max_aux_tokens`."""
    start, key = time.perf_counter(), tokenizer.cache_id
    texts = wh.query(
        """
        WITH texts AS (  -- the newest run's text per (image, config), as load_examples reads it
            SELECT image_id, config_hash, arg_max(text, run_id) AS text
            FROM aux_text WHERE dataset = ? GROUP BY image_id, config_hash
        ), cached AS (
            SELECT DISTINCT image_id, aux_config_hash FROM aux_tokens WHERE dataset = ? AND tokenizer = ?
        )
        SELECT t.image_id, t.config_hash, t.text, c.image_id IS NOT NULL AS cached
        FROM texts t LEFT JOIN cached c ON c.image_id = t.image_id AND c.aux_config_hash = t.config_hash
        ORDER BY t.image_id, t.config_hash
        """,
        [dataset, dataset, key],
    ).to_pylist()
    rows = [
        {
            "dataset": dataset,
            "image_id": t["image_id"],
            "aux_config_hash": t["config_hash"],
            "tokenizer": key,
            "text_sha256": _sha256(t["text"]),
            "token_ids": tokenizer.encode(t["text"]),
        }
        for t in texts
        if not t["cached"]
    ]
    if rows:
        wh.commit({"aux_tokens": rows})
    return CacheFill("aux_tokens", key, len(rows), len(texts) - len(rows), time.perf_counter() - start)


class AuxTokenCache:
    """The cached aux token ids of one dataset and tokenizer, by (image_id, aux_config_hash). All ids sit
    in one flat array (one allocation, shared copy-on-write by DataLoader workers)."""

    def __init__(self, key: str, table, others: list[str]):
        self.key, self.others = key, others
        ids = table.column("token_ids").combine_chunks()
        self._flat = ids.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        offsets = ids.offsets.to_numpy()
        self._spans: dict[tuple[int, str], tuple[int, int, str]] = {
            (image_id, config): (int(offsets[i]), int(offsets[i + 1]), sha)
            for i, (image_id, config, sha) in enumerate(
                zip(
                    table.column("image_id").to_pylist(),
                    table.column("aux_config_hash").to_pylist(),
                    table.column("text_sha256").to_pylist(),
                    strict=True,
                )
            )
        }

    @classmethod
    def load(cls, wh: Warehouse, dataset: str, tokenizer) -> AuxTokenCache:
        key = tokenizer.cache_id
        table = wh.query(
            "SELECT image_id, aux_config_hash, text_sha256, token_ids FROM aux_tokens "
            "WHERE dataset = ? AND tokenizer = ?",
            [dataset, key],
        )
        others = wh.query(
            "SELECT DISTINCT tokenizer FROM aux_tokens WHERE dataset = ? AND tokenizer <> ? ORDER BY 1",
            [dataset, key],
        )
        return cls(key, table, others.column("tokenizer").to_pylist())

    def check(self, rows: list[dict]) -> None:
        """Every example with aux text has cached ids, made from exactly that text."""
        needed = {(r["image_id"], r["aux_config_hash"]): r["aux_text"] for r in rows if r["aux_text"]}
        missing = [k for k in needed if k not in self._spans]
        if missing:
            elsewhere = f"; it holds ids of other tokenizers: {', '.join(self.others)}" if self.others else ""
            raise UserError(
                f"aux_tokens has no ids for {len(missing)} of {len(needed)} aux texts with tokenizer "
                f"{self.key}{elsewhere}. {HOW_TO_FILL}."
            )
        changed = [k for k, text in needed.items() if self._spans[k][2] != _sha256(text)]
        if changed:
            raise UserError(
                f"aux_tokens holds ids of a different text for {len(changed)} (image, aux config) pairs, "
                f"e.g. image {changed[0][0]}: aux_text was rewritten under the same config_hash"
            )

    def get(self, row: dict) -> list[int]:
        start, end, _ = self._spans[(row["image_id"], row["aux_config_hash"])]
        return self._flat[start:end].tolist()


# ---------------------------------------------------------------------------------------------------
# vision_features
# ---------------------------------------------------------------------------------------------------


def vision_encoder_id(model: MoAI, cfg: DataConfig) -> str:
    """The cache key of the frozen tower's features: everything but the image and its size that decides
    them. Tiny random towers: their weights' SHA-256 (trainer.export); hub/local towers: name + config."""
    weights = backbone_fingerprints(model).get("vision")
    if weights is None:
        config = {
            k: v
            for k, v in model.vision.config.to_dict().items()
            if k not in ("_name_or_path", "transformers_version")
        }
        weights = _sha256(json.dumps(config, sort_keys=True, default=str))
    recipe = {
        "weights": weights,
        "layer": model.config.vision_feature_layer,
        "dtype": str(model.vision.dtype),
        "mean": list(cfg.image_mean),
        "std": list(cfg.image_std),
    }
    return f"{model.config.vision}:{_sha256(json.dumps(recipe, sort_keys=True))[:16]}"


def _example_images(wh: Warehouse, cfg: DataConfig, dataset: str, encoder: str) -> list[dict]:
    """The images the config's examples read (train and val splits), each with whether it is cached."""
    splits = None if cfg.train_splits is None else sorted(set(cfg.train_splits) | set(cfg.val_splits or []))
    split_filter = f"AND i.split IN ({', '.join('?' for _ in splits)})" if splits else ""
    return wh.query(
        f"""
        WITH cached AS (
            SELECT DISTINCT image_id FROM vision_features
            WHERE dataset = ? AND encoder = ? AND image_size = ?
        ), used AS (
            SELECT DISTINCT img.image_id, img.split, img.file_name
            FROM instructions i
            JOIN images img ON img.dataset = i.dataset AND img.image_id = i.image_id
            WHERE i.dataset = ? {split_filter}
        )
        SELECT u.*, c.image_id IS NOT NULL AS cached
        FROM used u LEFT JOIN cached c ON c.image_id = u.image_id
        ORDER BY u.image_id
        """,
        [dataset, encoder, cfg.image_size, dataset, *(splits or [])],
    ).to_pylist()


def cache_vision_features(
    wh: Warehouse,
    dataset: str,
    model: MoAI,
    cfg: DataConfig,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> CacheFill:
    """Run the frozen tower once over every image the config's examples use that is not cached yet.
    Images are prepared exactly as the data path prepares them (`cfg`'s size and normalisation);
    features are stored in the tower's own output dtype, so the cached batch is the uncached one.
    `device`: where to run the tower (default: where it is); commits every ~COMMIT_BYTES."""
    start, encoder = time.perf_counter(), vision_encoder_id(model, cfg)
    images = _example_images(wh, cfg, dataset, encoder)
    todo = [im for im in images if not im["cached"]]
    if todo:
        corpus = resolve_corpus(dataset)
        dirs = {split: corpus.image_dir(split) for split in corpus.splits}
        home = next(model.vision.parameters()).device
        model.vision.to(device or home)
        try:
            _encode_images(wh, dataset, model, cfg, encoder, todo, dirs, batch_size or cfg.batch_size)
        finally:
            model.vision.to(home)
    seconds = time.perf_counter() - start
    key = f"{encoder}, {cfg.image_size} px"
    return CacheFill("vision_features", key, len(todo), len(images) - len(todo), seconds)


def _encode_images(wh, dataset, model, cfg, encoder, todo, dirs, batch_size) -> None:
    device = next(model.vision.parameters()).device
    rows, pending = [], 0
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        pixels = torch.stack(
            [
                image_tensor(
                    load_image(dirs[im["split"]] / im["file_name"], cfg.image_size),
                    cfg.image_mean,
                    cfg.image_std,
                )
                for im in chunk
            ]
        )
        features = model.vision_features(pixels.to(device)).cpu().contiguous()  # B×P×D
        _, P, D = features.shape
        for im, f in zip(chunk, features, strict=True):
            data = f.view(torch.uint8).numpy().tobytes()
            rows.append(
                {
                    "dataset": dataset,
                    "image_id": im["image_id"],
                    "encoder": encoder,
                    "image_size": cfg.image_size,
                    "n_patches": P,
                    "dim": D,
                    "dtype": str(f.dtype).removeprefix("torch."),
                    "features": data,
                }
            )
            pending += len(data)
        if pending >= COMMIT_BYTES:
            wh.commit({"vision_features": rows})
            rows, pending = [], 0
    if rows:
        wh.commit({"vision_features": rows})


class VisionFeatureCache:
    """The cached features of one dataset, encoder and image size: one N×P×D tensor plus a row index."""

    def __init__(self, encoder: str, image_size: int, table, others: list[str]):
        self.encoder, self.image_size, self.others = encoder, image_size, others
        self._row = {image_id: i for i, image_id in enumerate(table.column("image_id").to_pylist())}
        self.features = torch.zeros(0)
        if table.num_rows:
            shapes = set(
                zip(*(table.column(c).to_pylist() for c in ("n_patches", "dim", "dtype")), strict=True)
            )
            if len(shapes) != 1:
                raise UserError(
                    f"vision_features rows of encoder {encoder} disagree on shape/dtype: {shapes}"
                )
            ((P, D, dtype),) = shapes
            raw = np.frombuffer(b"".join(table.column("features").to_pylist()), dtype=np.uint8).copy()
            self.features = torch.from_numpy(raw).view(getattr(torch, dtype)).view(table.num_rows, P, D)

    @classmethod
    def load(cls, wh: Warehouse, dataset: str, encoder: str, image_size: int) -> VisionFeatureCache:
        table = wh.query(
            "SELECT image_id, n_patches, dim, dtype, features FROM vision_features "
            "WHERE dataset = ? AND encoder = ? AND image_size = ?",
            [dataset, encoder, image_size],
        )
        others = wh.query(
            "SELECT DISTINCT encoder || ' at ' || image_size || ' px' AS k FROM vision_features "
            "WHERE dataset = ? AND NOT (encoder = ? AND image_size = ?) ORDER BY 1",
            [dataset, encoder, image_size],
        )
        return cls(encoder, image_size, table, others.column("k").to_pylist())

    def check(self, rows: list[dict]) -> None:
        """Every example's image has cached features of this encoder at this size."""
        missing = {r["image_id"] for r in rows} - set(self._row)
        if missing:
            elsewhere = f"; it holds features of: {', '.join(self.others)}" if self.others else ""
            raise UserError(
                f"vision_features has no features for {len(missing)} images (e.g. image {min(missing)}) "
                f"of encoder {self.encoder} at {self.image_size} px{elsewhere}. {HOW_TO_FILL}."
            )

    def get(self, row: dict) -> torch.Tensor:
        return self.features[self._row[row["image_id"]]]


def fill_caches(
    model: MoAI, tokenizer, cfg: DataConfig, device=None, only_enabled: bool = True
) -> list[CacheFill]:
    """Fill the caches `cfg` reads (all of them with only_enabled=False) for its dataset and warehouse."""
    wh, fills = Warehouse(cfg.warehouse), []
    if cfg.aux_token_cache or not only_enabled:
        fills.append(cache_aux_tokens(wh, cfg.dataset, tokenizer))
    if cfg.vision_feature_cache or not only_enabled:
        fills.append(cache_vision_features(wh, cfg.dataset, model, cfg, device=device))
    return fills
