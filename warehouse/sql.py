"""`moai sql`: one query (table or CSV), or a read-only interactive DuckDB session.

Views are defined over committed files only (see store.py). Nothing typed here can write, in two
layers: the connection is an in-memory database locked to reading exactly the manifest's files
(no other file, extension, secret, ATTACH or setting change), and, since DuckDB's `allowed_paths`
also lets a statement write the files it may read (`COPY ... TO '<part file>'`), only queries run.
"""

from __future__ import annotations

import csv
import sys

import duckdb

from core.duck import open_connection, sql_literal
from warehouse.duck import build_views
from warehouse.schema import TABLES
from warehouse.store import Warehouse


class ReadOnlyConnection:
    """A locked DuckDB connection that runs queries only (SELECT, FROM, WITH, VALUES, DESCRIBE,
    SHOW, SUMMARIZE): COPY, ATTACH, EXPORT, INSTALL, LOAD, SET, PRAGMA, CREATE... are refused."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def sql(self, query: str) -> duckdb.DuckDBPyRelation | None:
        for statement in self._con.extract_statements(query):  # parses only; runs nothing
            if statement.type != duckdb.StatementType.SELECT:
                raise duckdb.PermissionException(
                    f"the warehouse is read-only here: {statement.type.name} statements are refused; "
                    "only queries run (SELECT, FROM, WITH, DESCRIBE, SHOW, SUMMARIZE)"
                )
        return self._con.sql(query)

    def close(self) -> None:
        self._con.close()


def read_only_connection(wh: Warehouse, tmpdir: str | None = None) -> ReadOnlyConnection:
    """The views over the committed files, then the lock. `tmpdir` is unused (older callers pass one)."""
    con = open_connection()  # in memory: there is no database file to write
    files = build_views(con, wh.manifest(), wh.root)
    con.execute(f"SET allowed_paths = [{', '.join(map(sql_literal, files))}]")  # the views' files only
    con.execute("SET enable_external_access = false")  # no other file, COPY, ATTACH, EXPORT, extension
    con.execute("SET lock_configuration = true")  # no SET undoes the above (or open_connection's guards)
    return ReadOnlyConnection(con)


def run_query(wh: Warehouse, sql: str, fmt: str = "table", out=sys.stdout) -> int:
    con = read_only_connection(wh)
    try:
        relation = con.sql(sql)
        if relation is None:
            return 0
        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(relation.columns)
            for row in relation.fetchall():
                writer.writerow(row)
        else:
            out.write(str(relation) + "\n")
    finally:
        con.close()
    return 0


def shell(wh: Warehouse) -> int:
    """A minimal interactive SQL prompt: statements end with ';', `.tables` lists tables, `.quit` exits."""
    try:
        import readline  # noqa: F401  (line editing and history where available)
    except ImportError:  # pragma: no cover
        pass
    con = read_only_connection(wh)
    print(
        f"moai-forge warehouse at {wh.root} (read-only). Tables: {', '.join(TABLES)}.\n"
        "End statements with ';'. .tables lists tables, .schema TABLE shows columns, .quit exits."
    )
    buffer = ""
    while True:
        try:
            line = input("moai> " if not buffer else "  ...> ")
        except EOFError:
            print()
            break
        stripped = line.strip()
        if not buffer and stripped.startswith("."):
            command, *rest = stripped.split()
            if command in (".quit", ".exit"):
                break
            if command == ".tables":
                print("  ".join(TABLES))
            elif command == ".schema" and rest:
                _print_result(con, f"DESCRIBE {rest[0]}")  # checked like any typed statement
            else:
                print("commands: .tables  .schema TABLE  .quit")
            continue
        buffer += line + "\n"
        if stripped.endswith(";"):
            _print_result(con, buffer)
            buffer = ""
    con.close()
    return 0


def _print_result(con: ReadOnlyConnection, sql: str) -> None:
    try:
        relation = con.sql(sql)
        if relation is not None:
            print(relation)
    except duckdb.Error as err:
        print(f"error: {err}")
