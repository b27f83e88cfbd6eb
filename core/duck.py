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


# Memory limits for the streamed jobs (folder registration, planning) that sort and join whole corpus
# listings: one DuckDB thread, a small limit, spilling to disk beyond it. The driver's memory then
# stays nearly flat with corpus size; a job that still runs out (a sort's merge of very many runs needs
# some memory of its own) is started again from the beginning at the next limit.
MEMORY_STEPS = ("64MB", "256MB", "1GB")


def bounded(con: duckdb.DuckDBPyConnection, memory: str, temp_directory: str) -> None:
    """Set `con` to one thread and `memory`, spilling to `temp_directory`."""
    con.execute("SET threads = 1")
    con.execute(f"SET memory_limit = {sql_literal(memory)}")
    con.execute(f"SET temp_directory = {sql_literal(temp_directory)}")


def with_memory_steps(run, steps: tuple[str, ...] | None = None):
    """`run(limit)` at each memory limit of `steps` (MEMORY_STEPS) in turn until it does not run out of
    memory; `run` must start from scratch each time (it is re-run whole)."""
    steps = steps or MEMORY_STEPS
    for memory in steps[:-1]:
        try:
            return run(memory)
        except duckdb.OutOfMemoryException:
            continue
    return run(steps[-1])
