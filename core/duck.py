"""Every DuckDB connection the project opens, with the project-wide guards (floor 0: the corpora
floor registers folders with it, the warehouse floor builds its views on it)."""

from __future__ import annotations

import duckdb

# DuckDB 2.0.0/2.0.1: the window_self_join optimizer rewrites a window function into a self-join
# and drops a hive-partition filter on one side, so `count(*) OVER (PARTITION BY image_id)` over
# `WHERE dataset = 'x'` also counts the other datasets' rows: silently wrong answers. Re-enable it
# only on a DuckDB that passes tests/test_sql_readonly.py without this line.
GUARDS = {"disabled_optimizers": "window_self_join"}


def open_connection(database: str = ":memory:", read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """The only place the project opens DuckDB: every connection gets the wrong-result guards."""
    return duckdb.connect(database, read_only=read_only, config=GUARDS)


def sql_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"
