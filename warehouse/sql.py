"""`moai sql`: one query (table or CSV), or a read-only interactive DuckDB session.

Views are defined over committed files only (see store.py). The interactive session opens a
throw-away database file holding just those views, read-only, so nothing typed there can write.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

from warehouse.schema import TABLES
from warehouse.store import Warehouse


def read_only_connection(wh: Warehouse, tmpdir: str):
    import duckdb

    path = str(Path(tmpdir) / "views.duckdb")
    con = wh.connect(path)
    for table, schema in TABLES.items():  # empty tables were registered in memory: make them real
        if not wh.files(table):
            con.execute(f"DROP VIEW {table}")
            cols = ", ".join(f"CAST(NULL AS {_duck_type(f.type)}) AS {f.name}" for f in schema)
            con.execute(f"CREATE VIEW {table} AS SELECT {cols} WHERE false")
    con.close()
    return duckdb.connect(path, read_only=True)


def _duck_type(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_string(arrow_type):
        return "VARCHAR"
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_integer(arrow_type):
        return "BIGINT"
    if pa.types.is_floating(arrow_type):
        return "DOUBLE"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ"
    if pa.types.is_binary(arrow_type):
        return "BLOB"
    if pa.types.is_list(arrow_type):  # polygons, token ids
        return _duck_type(arrow_type.value_type) + "[]"
    raise TypeError(f"no DuckDB type for {arrow_type}")


def run_query(wh: Warehouse, sql: str, fmt: str = "table", out=sys.stdout) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        con = read_only_connection(wh, tmp)
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
    import duckdb

    try:
        import readline  # noqa: F401  (line editing and history where available)
    except ImportError:  # pragma: no cover
        pass
    with tempfile.TemporaryDirectory() as tmp:
        con = read_only_connection(wh, tmp)
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
                    print(con.sql(f"DESCRIBE {rest[0]}"))
                else:
                    print("commands: .tables  .schema TABLE  .quit")
                continue
            buffer += line + "\n"
            if stripped.endswith(";"):
                try:
                    relation = con.sql(buffer)
                    if relation is not None:
                        print(relation)
                except duckdb.Error as err:
                    print(f"error: {err}")
                buffer = ""
        con.close()
    return 0
