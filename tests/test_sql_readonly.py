"""The warehouse's SQL surfaces: right answers on DuckDB's known bugs, one unreadable table does not
take the others down, and nothing typed into `moai sql` can write anything."""

from __future__ import annotations

import builtins
import hashlib
import io
import re

import duckdb
import pyarrow as pa
import pytest

from core.errors import WarehouseError
from warehouse.schema import TABLES
from warehouse.sql import read_only_connection, run_query, shell
from warehouse.store import Warehouse


def row(table: str, **values) -> dict:
    return {f.name: values.get(f.name) for f in TABLES[table]}


def csv_rows(wh: Warehouse, sql: str) -> list[str]:
    out = io.StringIO()
    run_query(wh, sql, "csv", out)
    return out.getvalue().splitlines()


# ---------------------------------------------------------------------------- wrong results

# DuckDB 2.0.0/2.0.1's window_self_join optimizer dropped the dataset filter on one side: 2, not 1.
WINDOW_OVER_ONE_DATASET = (
    "SELECT max(c) FROM (SELECT image_id, count(*) OVER (PARTITION BY image_id) AS c "
    "FROM aux_text WHERE dataset = 'x')"
)


def test_a_window_over_one_dataset_counts_only_its_rows(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    aux = [row("aux_text", dataset=d, image_id=i, text=f"{d}{i}") for d in ("x", "y") for i in (1, 2, 3)]
    wh.commit({"aux_text": aux})
    assert wh.query(WINDOW_OVER_ONE_DATASET).column(0).to_pylist() == [1]
    assert csv_rows(wh, WINDOW_OVER_ONE_DATASET) == ["max(c)", "1"]


def test_a_dataset_named_like_a_number_stays_a_string(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    wh.commit(
        {"aux_text": [row("aux_text", dataset="2017", image_id=1), row("aux_text", dataset="x", image_id=1)]}
    )
    wh.commit({"images": [row("images", dataset="2017", image_id=1)]})  # a table holding only that dataset
    assert wh.query("SELECT typeof(dataset) FROM images").column(0).to_pylist() == ["VARCHAR"]
    assert csv_rows(wh, "SELECT dataset FROM aux_text JOIN images USING (dataset, image_id)") == [
        "dataset",
        "2017",
    ]


# Analyst-style queries over the hive-partitioned views must give what the same rows give as plain
# tables. A DuckDB upgrade that brings the next optimizer bug of this kind fails here.
DIFFERENTIAL_QUERIES = {
    "window-count": WINDOW_OVER_ONE_DATASET.replace("aux_text", "{aux}"),
    "latest-per-image-qualify": "SELECT image_id, run_id, text FROM {aux} WHERE dataset = 'y' "
    "QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY run_id DESC) = 1",
    "group-by-dataset": "SELECT dataset, count(*), count(DISTINCT image_id) FROM {aux} GROUP BY dataset",
    "join-images": "SELECT i.split, count(*), count(DISTINCT a.run_id) FROM {aux} a "
    "JOIN {images} i USING (dataset, image_id) WHERE a.dataset = 'x' GROUP BY i.split",
    "distinct": "SELECT DISTINCT image_id FROM {aux} WHERE dataset = 'z'",
    "lag": "SELECT dataset, image_id, run_id, lag(run_id) OVER (PARTITION BY image_id ORDER BY run_id, dataset) "
    "FROM {aux} WHERE dataset IN ('x', 'z')",
    "self-join-across-datasets": "SELECT a.image_id, count(*) FROM {aux} a JOIN {aux} b ON a.image_id = b.image_id "
    "WHERE a.dataset = 'x' AND b.dataset = 'y' GROUP BY 1",
    "rank-and-count": "SELECT dataset, image_id, run_id, count(*) OVER (PARTITION BY dataset, image_id), "
    "rank() OVER (PARTITION BY dataset ORDER BY image_id) FROM {aux} WHERE dataset <> 'y'",
    "not-in-subquery": "SELECT image_id FROM {images} WHERE dataset = 'y' AND image_id NOT IN "
    "(SELECT image_id FROM {aux} WHERE dataset = 'y' AND run_id = 'r2')",
    "window-frame": "SELECT image_id, count(*) OVER (), sum(width) OVER (PARTITION BY split ORDER BY image_id "
    "ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) FROM {images} WHERE dataset = 'z'",
    "having": "SELECT image_id, count(*) AS n FROM {aux} WHERE dataset = 'x' GROUP BY image_id HAVING n > 1",
    "filtered-aggregates": "SELECT image_id, max(run_id) FILTER (WHERE dataset = 'x'), "
    "count(*) FILTER (WHERE dataset = 'y') FROM {aux} GROUP BY image_id",
}


@pytest.fixture(scope="module")
def hive_and_plain(tmp_path_factory):
    """One connection with the warehouse views and the same rows as plain in-memory tables."""
    ids = {"x": range(1, 31), "y": range(1, 21), "z": range(10, 41)}  # overlapping image ids
    images = [
        row("images", dataset=d, image_id=i, split=("train", "val")[i % 2], width=100 + i, height=50)
        for d, r in ids.items()
        for i in r
    ]
    aux = [
        row("aux_text", dataset=d, image_id=i, run_id=f"r{k}", text=f"{d}-{i}-{k}")
        for n, (d, r) in enumerate(ids.items())
        for i in r
        for k in range(1, (i * 7 + n) % 3 + 2)  # 1-3 runs per image
    ]
    wh = Warehouse(tmp_path_factory.mktemp("wh"))
    wh.commit({"images": images, "aux_text": [a for a in aux if a["run_id"] == "r1"]})
    wh.commit({"aux_text": [a for a in aux if a["run_id"] != "r1"]})  # a second file per partition
    con = wh.connect()
    for name, table, rows in (("plain_images", "images", images), ("plain_aux", "aux_text", aux)):
        con.register(f"{name}_rows", pa.Table.from_pylist(rows, schema=TABLES[table]))
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_rows")
    yield con
    con.close()


@pytest.mark.parametrize("name", DIFFERENTIAL_QUERIES)
def test_views_answer_like_plain_tables(hive_and_plain, name):
    sql = DIFFERENTIAL_QUERIES[name]
    hive = hive_and_plain.sql(sql.format(aux="aux_text", images="images")).fetchall()
    plain = hive_and_plain.sql(sql.format(aux="plain_aux", images="plain_images")).fetchall()
    assert hive, "the query should return rows"
    assert sorted(hive, key=repr) == sorted(plain, key=repr)


# ---------------------------------------------------------------------------- one bad table


def test_one_unreadable_table_leaves_the_others_queryable(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    ident = {"model": "m", "backend": "b", "config_hash": "c"}
    wh.commit(
        {
            "images": [row("images", dataset="x", image_id=i) for i in (1, 2, 3)],
            "ocr": [row("ocr", dataset="x", image_id=1, line_index=0, text="STOP", **ident)],
            "detections": [row("detections", dataset="x", image_id=1, det_index=0, label="car", **ident)],
        }
    )
    (ocr_file,) = wh.files("ocr")
    (det_file,) = wh.files("detections")
    ocr_file.write_bytes(ocr_file.read_bytes()[:100])  # truncated
    det_file.unlink()  # missing

    assert wh.query("SELECT count(*) FROM images").column(0).to_pylist() == [3]
    assert csv_rows(wh, "SELECT count(*) FROM images") == ["count_star()", "3"]
    assert csv_rows(wh, "SELECT count(*) FROM aux_text") == ["count_star()", "0"]
    for table, bad in (("ocr", ocr_file), ("detections", det_file)):
        for query in (
            f"SELECT count(*) FROM {table}",
            f"SELECT image_id FROM {table} WHERE dataset = 'x'",  # a filter the optimizer could fold away
            f"SELECT i.image_id FROM images i JOIN {table} t USING (dataset, image_id)",
        ):
            with pytest.raises(WarehouseError) as raised:  # the project's readers: one clear paragraph
                wh.query(query)
            message = str(raised.value)
            assert f"table {table}" in message and str(bad) in message
            assert "moai warehouse check" in message and "moai warehouse repair" in message
            with pytest.raises(duckdb.Error, match=f"table {table}"):
                run_query(wh, query, "csv", io.StringIO())
    assert csv_rows(wh, "SELECT column_name FROM (DESCRIBE ocr) WHERE column_name = 'text'") == [
        "column_name",
        "text",
    ]


# ---------------------------------------------------------------------------- `moai sql` is read-only


def snapshot(root) -> dict[str, str]:
    """Every path under root: files by content hash, folders as 'dir'."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def small_warehouse(tmp_path, monkeypatch):
    # Extensions and persistent secrets would land under $HOME: keep that inside tmp_path too.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    wh = Warehouse(tmp_path / "wh")
    wh.commit(
        {
            "images": [row("images", dataset=d, image_id=i) for d in ("x", "y") for i in (1, 2, 3)],
            "aux_text": [
                row("aux_text", dataset=d, image_id=i, text="t") for d in ("x", "y") for i in (1, 2)
            ],
        }
    )
    return wh


ATTACKS = {
    "copy-over-part": "COPY (SELECT 1 AS a) TO '{part}' (FORMAT parquet)",
    "copy-over-part-in-place": "COPY (SELECT 1 AS a) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
    "copy-over-manifest": "COPY (SELECT 1 AS a) TO '{root}/_manifest.json' (FORMAT csv, USE_TMP_FILE false)",
    "copy-partitioned": "COPY images TO '{root}/images' (FORMAT parquet, PARTITION_BY (dataset), OVERWRITE)",
    "copy-new-file": "COPY (SELECT 1 AS a) TO '{tmp}/out.csv'",
    "after-a-select": "SELECT 1; COPY (SELECT 1 AS a) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
    "explain-analyze-copy": "EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
    "attach-part-read-write": "ATTACH '{part}' AS p (READ_WRITE); CREATE TABLE p.t AS SELECT 1 AS a",
    "attach-new-file": "ATTACH '{tmp}/new.duckdb' AS n; CREATE TABLE n.t AS SELECT 1 AS a",
    "export-database": "EXPORT DATABASE '{tmp}/export'",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "enable-external-access": "SET enable_external_access = true; COPY (SELECT 1 AS a) TO '{tmp}/out.csv'",
    "reset-external-access": "RESET enable_external_access",
    "allowed-paths": "SET allowed_paths = ['{tmp}/out.csv']; COPY (SELECT 1 AS a) TO '{tmp}/out.csv'",
    "allowed-directories": "SET allowed_directories = ['{tmp}']; COPY (SELECT 1 AS a) TO '{tmp}/out.csv'",
    "unlock": "SET lock_configuration = false",
    "undo-the-wrong-result-guard": "SET disabled_optimizers = ''",
    "profiling-output": "PRAGMA enable_profiling = 'json'; PRAGMA profiling_output = '{tmp}/profile.json'; SELECT 1",
    "query-log": "SET log_query_path = '{tmp}/queries.log'; SELECT 1",
    "logging-to-file": "CALL enable_logging(storage_path := '{tmp}/log')",
    "persistent-secret": "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "read-another-file": "SELECT * FROM read_text('{root}/_manifest.json')",
    "copy-inside-query-function": "SELECT * FROM query('COPY (SELECT 1 AS a) TO ''{part}'' "
    "(FORMAT parquet, USE_TMP_FILE false)')",
    "copy-as-serialized-sql": "SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
    "'COPY (SELECT 1 AS a) TO ''{part}'' (FORMAT parquet, USE_TMP_FILE false)'))",
}
# DuckDB lets a connection write the files `allowed_paths` lets it read: only the statement check
# stops these. Every other attack is also stopped by the connection's lock alone.
WRITES_TO_READABLE_FILES = {
    "copy-over-part-in-place",
    "after-a-select",
    "explain-analyze-copy",
    "attach-part-read-write",
}


@pytest.mark.parametrize("name", ATTACKS)
def test_moai_sql_cannot_write(small_warehouse, tmp_path, name):
    wh = small_warehouse
    part = wh.files("aux_text")[0]
    sql = ATTACKS[name].format(part=part, root=wh.root, tmp=tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(duckdb.Error):
        run_query(wh, sql, "csv", io.StringIO())
    assert snapshot(tmp_path) == before
    assert csv_rows(wh, "SELECT count(*) FROM images") == ["count_star()", "6"]
    assert csv_rows(wh, "SELECT count(*) FROM aux_text WHERE dataset = 'y'") == ["count_star()", "2"]


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - WRITES_TO_READABLE_FILES))
def test_the_lock_holds_without_the_statement_check(small_warehouse, tmp_path, name):
    wh = small_warehouse
    sql = ATTACKS[name].format(part=wh.files("aux_text")[0], root=wh.root, tmp=tmp_path)
    before = snapshot(tmp_path)
    con = read_only_connection(wh)._con  # the DuckDB connection itself, no statement check
    try:
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    finally:
        con.close()
    assert snapshot(tmp_path) == before


def test_the_shell_cannot_write(small_warehouse, tmp_path, monkeypatch, capsys):
    wh = small_warehouse
    part = wh.files("aux_text")[0]
    lines = iter(
        [
            f".schema images;COPY\"images\"TO'{part}'(FORMAT'parquet',USE_TMP_FILE'false')",  # no spaces
            f"COPY (SELECT 1 AS a) TO '{part}'",
            "  (FORMAT parquet, USE_TMP_FILE false);",
            "SELECT count(*) AS n FROM images;",
            ".schema aux_text",
            ".quit",
        ]
    )
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    before = snapshot(tmp_path)
    assert shell(wh) == 0
    assert snapshot(tmp_path) == before
    printed = capsys.readouterr().out
    assert printed.count("error: the warehouse is read-only here: COPY statements are refused") == 2
    assert re.search(r"│\s+6\s+│", printed) and "verbalizer_hash" in printed  # the count; .schema


def test_moai_sql_reads_every_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative warehouse path, as `--warehouse outputs/warehouse` gives
    wh = Warehouse("wh")
    wh.commit({"images": [row("images", dataset="x", image_id=i, file_name=f"{i}.jpg") for i in (1, 2)]})
    before = snapshot(tmp_path)
    for table in TABLES:  # the empty ones too
        assert csv_rows(wh, f"SELECT count(*) AS n FROM {table}") == ["n", "2" if table == "images" else "0"]
        assert len(csv_rows(wh, f"DESCRIBE {table}")) == len(TABLES[table]) + 1
    assert csv_rows(wh, "SELECT image_id, file_name FROM images ORDER BY 1") == [
        "image_id,file_name",
        "1,1.jpg",
        "2,2.jpg",
    ]
    assert len(csv_rows(wh, "SUMMARIZE images")) == len(TABLES["images"]) + 1
    out = io.StringIO()
    run_query(wh, "SELECT dataset, count(*) AS n FROM images GROUP BY ALL", "table", out)
    assert "dataset" in out.getvalue() and "2" in out.getvalue()
    con = read_only_connection(wh, str(tmp_path))  # the connection tests/test_sql_docs.py queries
    try:
        assert con.sql("SELECT count(*) FROM images").fetchall() == [(2,)]
        with pytest.raises(duckdb.Error):
            con.sql(f"COPY (SELECT 1 AS a) TO '{wh.files('images')[0]}' (FORMAT parquet, USE_TMP_FILE false)")
    finally:
        con.close()
    assert snapshot(tmp_path) == before
