"""DuckDB peer for the TPC-H benchmark: a long-lived query server over stdin/stdout.

Spawned by `benches/tpch.rs` as

    python benches/duckdb_runner.py --data-dir D [--namespace tpch ...] [--threads N] [--mode auto]

It reads the Iceberg SQL catalog `D/catalog.db` (pyiceberg's SQLite layout) and registers every table of the
chosen namespaces (all of them if none is given) as a view `<namespace>.<table>` in an in-memory DuckDB:

- `iceberg_scan` mode (preferred): `SELECT * FROM iceberg_scan('<current metadata file>')`, with DuckDB's
  Iceberg extension loaded offline from the `duckdb-extension-iceberg`/`-avro` PyPI packages;
- `read_parquet` mode (fallback when the extension cannot load, or forced with `--mode read_parquet`):
  `SELECT * FROM read_parquet([...])` over the exact data files of the current snapshot, listed by pyiceberg.
  It does not apply Iceberg delete files (tables that have any are refused) nor schema evolution.

Protocol (one JSON object per line; stdout carries nothing else, logs go to stderr):

    out: {"ready": true, "mode": "iceberg_scan"|"read_parquet", "duckdb": "1.5.5", "threads": 2,
          "tables": ["tpch.customer", ...]}                  (one line, once the views exist)
    in:  {"id": "q1-run3", "sql": "SELECT ..."}
    out: {"id": "q1-run3", "ms": 123.4, "rows": 4}         on success
    out: {"id": "q1-run3", "error": "BinderException: Binder Error: ..."}   on failure (the runner goes on)

`ms` is wall time around execute + fetching the whole result as an Arrow table. The runner exits on EOF.
"""

import argparse
import glob
import json
import os
import sqlite3
import sys
import time
from urllib.parse import unquote, urlparse

import duckdb


def log(message: str) -> None:
    print(f"duckdb_runner: {message}", file=sys.stderr, flush=True)


def local_path(location: str) -> str:
    """A `file://` URI or plain path, as a local filesystem path."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme:
        raise ValueError(f"only local files are supported, got {location!r}")
    return location


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def catalog_tables(data_dir: str, namespaces: list[str] | None) -> list[tuple[str, str, str]]:
    """(namespace, table, metadata file path) for each table in the SQL catalog, sorted by name."""
    db = os.path.join(data_dir, "catalog.db")
    if not os.path.exists(db):
        raise SystemExit(f"duckdb_runner: no catalog at {db}")
    # Read-only, so the runner can never touch the catalog Parley is using.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT table_namespace, table_name, metadata_location FROM iceberg_tables "
            "WHERE metadata_location IS NOT NULL ORDER BY table_namespace, table_name"
        ).fetchall()
    tables = [(ns, name, local_path(loc)) for ns, name, loc in rows if namespaces is None or ns in namespaces]
    missing = set(namespaces or ()) - {ns for ns, _, _ in tables}
    if missing:
        raise SystemExit(f"duckdb_runner: no tables in namespace(s) {sorted(missing)} of {db}")
    return tables


def load_iceberg_extension(con: duckdb.DuckDBPyConnection) -> None:
    """Load avro then iceberg from the PyPI extension packages (no network)."""
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    for module, name in [(duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")]:
        root = os.path.dirname(module.__file__)
        found = glob.glob(os.path.join(root, "extensions", "*", f"{name}.duckdb_extension"))
        if not found:
            raise RuntimeError(f"no {name}.duckdb_extension under {root}")
        con.execute(f"LOAD {sql_string(found[0])}")


def parquet_files(metadata_path: str) -> list[str]:
    """The data files of the table's current snapshot, as local paths (pyiceberg reads the metadata directly)."""
    from pyiceberg.table import StaticTable

    table = StaticTable.from_metadata(metadata_path)
    files = []
    for task in table.scan().plan_files():
        if task.delete_files:
            raise RuntimeError(f"{metadata_path}: has delete files, which read_parquet would ignore")
        files.append(local_path(task.file.file_path))
    if not files:
        raise RuntimeError(f"{metadata_path}: current snapshot has no data files")
    return files


def register(con: duckdb.DuckDBPyConnection, tables: list[tuple[str, str, str]], mode: str) -> list[str]:
    names = []
    for namespace in sorted({ns for ns, _, _ in tables}):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {sql_ident(namespace)}")
    for namespace, name, metadata in tables:
        if mode == "iceberg_scan":
            source = f"iceberg_scan({sql_string(metadata)})"
        else:
            # Iceberg partition values live in the data, not the path: don't let DuckDB read the
            # `data/<field>=<value>/` directory names as extra hive-partition columns.
            files = ", ".join(sql_string(f) for f in parquet_files(metadata))
            source = f"read_parquet([{files}], hive_partitioning = false)"
        con.execute(f"CREATE VIEW {sql_ident(namespace)}.{sql_ident(name)} AS SELECT * FROM {source}")
        names.append(f"{namespace}.{name}")
    return names


def run(con: duckdb.DuckDBPyConnection, request: dict) -> dict:
    query_id = request.get("id")
    try:
        start = time.perf_counter()
        result = con.execute(request["sql"]).to_arrow_table()
        ms = (time.perf_counter() - start) * 1000.0
        return {"id": query_id, "ms": ms, "rows": result.num_rows}
    except Exception as e:  # a failing query is an answer, not a reason to stop
        return {"id": query_id, "error": f"{type(e).__name__}: {e}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="Parley data dir (holds catalog.db)")
    parser.add_argument("--namespace", action="append", help="namespace to register (repeatable; default all)")
    parser.add_argument("--threads", type=int, help="DuckDB worker threads (default: DuckDB's, one per core)")
    parser.add_argument(
        "--mode",
        choices=["auto", "iceberg_scan", "read_parquet"],
        default="auto",
        help="auto: iceberg_scan, falling back to read_parquet if the extension cannot load",
    )
    args = parser.parse_args()

    # Keep the protocol stream to ourselves: anything else written to stdout (by Python code or native code
    # in DuckDB or its extensions) goes to stderr instead.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    tables = catalog_tables(os.path.abspath(args.data_dir), args.namespace)
    # Never reach for the network to fetch an extension.
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute("SET enable_progress_bar = false")
    if args.threads:
        con.execute(f"SET threads = {args.threads}")

    mode = "read_parquet" if args.mode == "read_parquet" else "iceberg_scan"
    if mode == "iceberg_scan":
        try:
            load_iceberg_extension(con)
        except Exception as e:
            if args.mode == "iceberg_scan":
                raise
            log(f"iceberg extension unavailable ({type(e).__name__}: {e}); falling back to read_parquet")
            mode = "read_parquet"
    names = register(con, tables, mode)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    log(f"ready: mode={mode} threads={threads} tables={len(names)}")
    reply({"ready": True, "mode": mode, "duckdb": duckdb.__version__, "threads": int(threads), "tables": names})

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("sql"), str):
                raise ValueError('expected {"id": ..., "sql": "..."}')
        except ValueError as e:
            reply({"id": None, "error": f"bad request: {e}"})
            continue
        reply(run(con, request))


if __name__ == "__main__":
    main()
