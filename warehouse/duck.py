"""The views over the committed files.

`build_views` defines one view per warehouse table over the files the manifest names (never anything
else), on connections opened by `core.duck.open_connection` with the project-wide guards.
"""

from __future__ import annotations

import duckdb

from core.duck import sql_literal
from warehouse.schema import TABLES


def build_views(con, manifest: dict, root, tables=None) -> list[str]:
    """One view per table (all, or those named in `tables`) over the manifest's files; returns the
    files the views read.

    Each table stands alone: a table whose files cannot be read (missing, truncated) gets a view
    with its columns that raises when queried, so the other tables stay usable.
    """
    readable: list[str] = []
    for table, schema in TABLES.items():
        if tables is not None and table not in tables:
            continue
        files = [str(root / r) for r in manifest["tables"].get(table, [])]
        if not files:
            _typed_view(con, table, schema, "NULL", "WHERE false")
            continue
        source = (
            f"read_parquet([{', '.join(map(sql_literal, files))}], hive_partitioning = true, "
            "union_by_name = true, hive_types = {'dataset': VARCHAR})"
        )
        try:
            # Binding reads every file's footer (union_by_name), so a bad file fails here. `dataset` is
            # a column of the files and the partition folder's name; the folder's value is the one read
            # (it is also the one files written before the column existed have), always as a string,
            # even where a name looks like a number or a date (`2017`, `2024-05-01`, `inf`).
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT {dataset_in_place(schema)} FROM {source}")
            readable += files
        except duckdb.Error as err:
            bad = _first_unreadable(con, files)
            message = (
                f"warehouse table {table} cannot be read: "
                + (f"file {bad} is missing or damaged" if bad else str(err).splitlines()[0])
                + f" (warehouse {root}). Run `moai warehouse check` to see what is wrong and "
                "`moai warehouse repair` to fix it; the other tables can still be queried."
            )
            # error() runs at query time, not at CREATE VIEW. Every column and the filter derive from
            # it, so no query can be answered without it: with constant NULL columns the optimizer
            # folds `WHERE dataset = 'x'` to false and returns no rows instead of the error.
            _typed_view(
                con, table, schema, "e", f"FROM (SELECT error({sql_literal(message)}) AS e) WHERE e IS NULL"
            )
    return readable


def dataset_in_place(schema) -> str:
    """A select list putting `dataset` at its place in the table schema, the other columns in the files'
    order: DuckDB puts a hive column that files lack (older warehouses) last, and the union's order
    follows the first file, so a plain `*` would order columns differently in old, new and mixed
    warehouses. The columns before `dataset` in the schema (`runs.run_id`) are in every file."""
    head = ", ".join(f'"{c}"' for c in schema.names[: schema.get_field_index("dataset") + 1])
    return f"{head}, * EXCLUDE ({head})"


def _typed_view(con, table: str, schema, value: str, rest: str) -> None:
    """A view with the table's exact columns and types, each `CAST(value AS type)`, then `rest`."""
    typed = con.from_arrow(schema.empty_table())  # DuckDB's own names for the Arrow types
    columns = ", ".join(
        f'CAST({value} AS {t}) AS "{c}"' for c, t in zip(typed.columns, typed.types, strict=True)
    )
    con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT {columns} {rest}")


def _first_unreadable(con, files: list[str]) -> str | None:
    for f in files:
        try:
            con.execute(f"SELECT 1 FROM parquet_schema({sql_literal(f)}) LIMIT 1")
        except duckdb.Error:
            return f
    return None
