"""Which rows are current: the one definition that export, `moai viz`, re-verbalizing and the trainer use.

An expert's (or the aux text's) current rows for an image are the rows of the config of its newest
finished (`ok`) work on that image, as the `done` ledger records it. A newer config that found
nothing on an image therefore shows nothing there, never an older config's rows.
"""

from __future__ import annotations

from annotators.registry import expert_spec
from core.duck import sql_literal


def current_configs_sql(expert: str) -> str:
    """(dataset, image_id, config_hash) of every image's current config of `expert` ('aux' included)."""
    return (
        "SELECT dataset, image_id, arg_max(config_hash, run_id) AS config_hash FROM done "
        f"WHERE expert = {sql_literal(expert)} AND status = 'ok' GROUP BY dataset, image_id"
    )


def current_rows_sql(table: str, expert: str) -> str:
    """A SELECT of `table`'s current rows, all datasets (callers filter the result). Should one config's
    rows of an image come from several runs (warehouses written before commits checked their keys),
    only the newest run's count."""
    return (
        f"SELECT t.* FROM {table} t SEMI JOIN ({current_configs_sql(expert)}) c "
        "ON t.dataset = c.dataset AND t.image_id = c.image_id AND t.config_hash = c.config_hash "
        "QUALIFY dense_rank() OVER (PARTITION BY t.dataset, t.image_id ORDER BY t.run_id DESC) = 1"
    )


def current_configs(wh, dataset: str, expert: str) -> dict[int, str]:
    """image_id -> the current config hash of `expert` on `dataset`."""
    rows = wh.query(
        f"SELECT image_id, config_hash FROM ({current_configs_sql(expert)}) WHERE dataset = ?", [dataset]
    )
    return dict(zip(rows.column("image_id").to_pylist(), rows.column("config_hash").to_pylist(), strict=True))


def current_records(wh, dataset: str, expert: str, image_ids=None, config_hash: str | None = None):
    """The current records of an expert by image, in their original order; with `config_hash`, that
    config's records instead. With `image_ids`, only those images (each present, maybe with none)."""
    spec = expert_spec(expert)
    source = current_rows_sql(spec.table, expert) if config_hash is None else f"SELECT * FROM {spec.table}"
    where, params = "WHERE dataset = ?", [dataset]
    if config_hash is not None:
        where, params = where + " AND config_hash = ?", params + [config_hash]
    if image_ids is not None:
        ids = sorted({int(i) for i in image_ids})
        if not ids:
            return {}
        where += f" AND image_id IN ({', '.join('?' for _ in ids)})"
        params += ids
    rows = wh.query(f"SELECT * FROM ({source}) {where}", params).to_pylist()
    key = spec.order_column
    out: dict[int, list[dict]] = {i: [] for i in image_ids} if image_ids is not None else {}
    for row in sorted(rows, key=lambda r: (r["image_id"], r[key] if key else 0)):
        out.setdefault(row["image_id"], []).append(spec.from_columns(row))
    return out
