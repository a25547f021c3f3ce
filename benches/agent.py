"""Agent queries on a table written by another engine: Parley over MCP against DuckDB in-process on the same files.

pyiceberg writes ROWS orders (ten columns, as the demo's) into a SQL catalog, partitioned by month of order_date,
keys shuffled (not sorted within or across files), one row group per file, no page index — the layout issue 15
measured. Then, per round, each reader answers the same three agent queries, in rotating order, SAMPLES rounds
after WARMUP:

  parley       Parley's `query` tool over MCP stdio (newline-delimited JSON-RPC from this process: the policy
               decision, the audit record's fsync, the JSON reply and the round trip included), release binary,
               keeping no results (`PARLEY_QUERY_RESULT_CACHE_BYTES=0`: DuckDB keeps none, so every repeated query
               runs again in both);
  duckdb       DuckDB in-process, `read_parquet` over exactly the table's current data files (fetching all rows);
  duckdb-ice   DuckDB in-process, `iceberg_scan` of the table's current metadata file.

The point lookup asks for a different key each round (the same key for every reader in the round); every reader
must return the same rows. `SELECT 1` is the round trip with no table: Parley's fixed cost per call against
DuckDB's in-process call. Reports p50 and p90 per query and reader and Parley's ratio to each DuckDB reading.

Usage: python benches/agent.py path/to/parley OUT_DIR [--rows N] [--samples N]
"""

import argparse
import glob
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import MonthTransform
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from rest_catalog import classify  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from catalogs import pct  # noqa: E402
from pyiceberg.types import (BooleanType, DateType, DecimalType, IntegerType, LongType, NestedField, StringType,
                             TimestamptzType)

SCHEMA = Schema(
    NestedField(1, "order_id", LongType(), required=True),
    NestedField(2, "customer_id", LongType(), required=True),
    NestedField(3, "order_date", DateType(), required=True),
    NestedField(4, "status", StringType(), required=True),
    NestedField(5, "channel", StringType(), required=True),
    NestedField(6, "total_amount", DecimalType(12, 2), required=True),
    NestedField(7, "currency", StringType(), required=True),
    NestedField(8, "item_count", IntegerType(), required=True),
    NestedField(9, "created_at", TimestamptzType(), required=True),
    NestedField(10, "is_gift", BooleanType(), required=False),
)

QUERIES = {
    "SELECT 1": "SELECT 1",
    "point lookup": "SELECT * FROM {t} WHERE order_id = {key}",
    "filtered top-10": "SELECT order_id, customer_id, total_amount, order_date FROM {t} "
                       "WHERE order_date >= DATE '2025-01-01' AND status = 'placed' ORDER BY total_amount DESC, order_id LIMIT 10",
    "small group-by": "SELECT channel, status, count(*) AS n, sum(total_amount) AS revenue FROM {t} "
                      "GROUP BY channel, status ORDER BY channel, status",
}


def orders(rows: int, seed: int = 7) -> pa.Table:
    """`rows` orders over 2023-01 .. 2025-12, ids shuffled."""
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.permutation(rows).astype("int64") + 1
    start = date(2023, 1, 1)
    days = rng.integers(0, 1095, rows)
    order_date = pa.array([start + timedelta(days=int(d)) for d in days], pa.date32())
    created = pa.array([datetime(2023, 1, 1, tzinfo=timezone.utc) + timedelta(days=int(d), seconds=int(s))
                        for d, s in zip(days, rng.integers(0, 86400, rows))], pa.timestamp("us", tz="UTC"))
    statuses = np.array(["placed", "shipped", "delivered", "returned", "cancelled"])
    channels = np.array(["web", "store", "partner"])
    cents = rng.integers(100, 100000, rows)
    return pa.table({
        "order_id": pa.array(ids, pa.int64()),
        "customer_id": pa.array(rng.integers(1, 200000, rows), pa.int64()),
        "order_date": order_date,
        "status": pa.array(statuses[rng.integers(0, 5, rows)]),
        "channel": pa.array(channels[rng.integers(0, 3, rows)]),
        "total_amount": pa.array(cents / 100.0).cast(pa.decimal128(12, 2)),
        "currency": pa.array(np.array(["EUR", "USD", "GBP"])[rng.integers(0, 3, rows)]),
        "item_count": pa.array(rng.integers(1, 20, rows), pa.int32()),
        "created_at": created,
        "is_gift": pa.array(rng.integers(0, 2, rows) == 1),
    })


def build(data_dir: str, rows: int) -> tuple:
    """A data dir `parley init` adopted, holding bench.orders; returns (its metadata file, its data files)."""
    warehouse = os.path.join(data_dir, "warehouse")
    os.makedirs(warehouse, exist_ok=True)
    catalog = SqlCatalog("parley", uri=f"sqlite:///{data_dir}/catalog.db", warehouse=f"file://{warehouse}")
    catalog.create_namespace("bench")
    spec = PartitionSpec(PartitionField(source_id=3, field_id=1000, transform=MonthTransform(), name="order_month"))
    table = catalog.create_table("bench.orders", schema=SCHEMA, partition_spec=spec, properties={
        # One row group per file, as many writers leave them.
        "write.parquet.row-group-limit": str(rows + 1),
    })
    data = orders(rows)
    arrow_schema = SCHEMA.as_arrow()
    table.append(data.cast(arrow_schema))
    table = catalog.load_table("bench.orders")
    files = [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]
    return table.metadata_location.removeprefix("file://"), files


class Parley:
    """Parley over MCP stdio, newline-delimited JSON-RPC."""

    def __init__(self, binary: str, data_dir: str):
        self.p = subprocess.Popen([binary, "serve", "--data-dir", data_dir, "--principal", "analyst"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "PARLEY_LOG": "error", "PARLEY_QUERY_RESULT_CACHE_BYTES": "0"})
        self.n = 0
        self.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "bench", "version": "1"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict) -> None:
        self.p.stdin.write((json.dumps(message) + "\n").encode())
        self.p.stdin.flush()

    def call(self, method: str, params: dict) -> dict:
        self.n += 1
        self.send({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params})
        while True:
            m = json.loads(self.p.stdout.readline())
            if m.get("id") == self.n:
                if "error" in m:
                    raise RuntimeError(m["error"])
                return m["result"]

    def query(self, sql: str) -> list:
        r = self.call("tools/call", {"name": "query", "arguments": {"sql": sql, "max_bytes": 1 << 20}})
        if r.get("isError"):
            raise RuntimeError(r["content"][0]["text"])
        return r["structuredContent"]["rows"]

    def close(self) -> None:
        self.p.terminate()
        self.p.wait()


def duckdb_connection():
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    con = duckdb.connect()
    for module, ext in [(duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")]:
        root = os.path.dirname(module.__file__)
        con.execute(f"LOAD '{glob.glob(os.path.join(root, 'extensions', '*', f'{ext}.duckdb_extension'))[0]}'")
    return con


def rows_of(table) -> list:
    """An Arrow result (DuckDB hands its whole result over as Arrow) as rows."""
    if not isinstance(table, pa.Table):  # a RecordBatchReader
        table = table.read_all()
    columns = [c.to_pylist() for c in table.columns]
    return [list(r) for r in zip(*columns)]


def canonical(rows) -> list:
    def cell(v):
        if v is None:
            return None
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)):
            return round(float(v), 2)
        s = str(v)
        try:
            return round(float(s), 2)
        except ValueError:
            pass
        for f in ("%Y-%m-%d %H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z"):
            try:
                return datetime.strptime(s.replace("Z", "+00:00"), f).timestamp()
            except ValueError:
                pass
        return s
    return [[cell(v) for v in row] for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    binary = os.path.abspath(a.binary)
    data_dir = tempfile.mkdtemp(prefix="parley-agent-bench-")
    started = time.time()
    metadata, files = build(data_dir, a.rows)
    print(f"wrote {a.rows} orders in {len(files)} files ({time.time() - started:.0f} s)", file=sys.stderr)
    subprocess.run([binary, "init", "--data-dir", data_dir], check=True, capture_output=True)
    classify(data_dir)  # the owner's step after `parley init`: columns classified, so analysts may query
    parley = Parley(binary, data_dir)
    con = duckdb_connection()
    file_list = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    readers = {
        "parley": lambda sql: parley.query(sql.format(t="bench.orders", key=key)),
        "duckdb": lambda sql: rows_of(con.execute(sql.format(t=f"read_parquet({file_list}, hive_partitioning = false)", key=key)).arrow()),
        "duckdb-ice": lambda sql: rows_of(con.execute(sql.format(t=f"iceberg_scan('{metadata}')", key=key)).arrow()),
    }
    times = {(q, r): [] for q in QUERIES for r in readers}
    rng = random.Random(42)
    order = list(readers)
    for round_no in range(a.warmup + a.samples):
        key = rng.randint(1, a.rows)
        order = order[1:] + order[:1]
        for q, sql in QUERIES.items():
            answers = {}
            for r in order:
                t = time.perf_counter()
                answers[r] = readers[r](sql)
                elapsed = time.perf_counter() - t
                if round_no >= a.warmup:
                    times[(q, r)].append(elapsed * 1000)
            first = canonical(answers["parley"])
            for r, rows in answers.items():
                if canonical(rows) != first:
                    raise SystemExit(f"{q}: {r} answered {rows[:2]}, parley {answers['parley'][:2]}")
    parley.close()
    result = {q: {r: {"p50": pct(times[(q, r)], 0.5), "p90": pct(times[(q, r)], 0.9),
                      "mean": statistics.mean(times[(q, r)])} for r in readers} for q in QUERIES}
    stamp = time.strftime("%Y-%m-%d")
    with open(os.path.join(a.out, f"agent-{stamp}.json"), "w") as f:
        json.dump({"rows": a.rows, "files": len(files), "samples": a.samples, "result": result}, f, indent=1)
    lines = [f"{a.rows:,} orders, {len(files)} files (one row group each), {a.samples} interleaved samples, p50 (p90) ms",
             "", "| query | Parley over MCP | DuckDB read_parquet | DuckDB iceberg_scan | Parley / read_parquet | "
             "Parley / iceberg_scan |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for q in QUERIES:
        p, d, i = (result[q][r] for r in readers)
        lines.append(f"| {q} | {p['p50']:.1f} ({p['p90']:.1f}) | {d['p50']:.1f} ({d['p90']:.1f}) | "
                     f"{i['p50']:.1f} ({i['p90']:.1f}) | {p['p50'] / d['p50']:.2f}× | {p['p50'] / i['p50']:.2f}× |")
    report = "\n".join(lines)
    with open(os.path.join(a.out, f"agent-{stamp}.md"), "w") as f:
        f.write(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
