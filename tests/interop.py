"""Interop check: tables Parley writes are real Iceberg tables that other engines read.

Creates a fresh demo lakehouse with `parley init`, then
  1. asks Parley (through the Python MCP SDK client, over stdio) for the row count and sum(total_amount) of
     sales.orders and the count of its first snapshot's rows;
  2. reads the same table through pyiceberg's SqlCatalog, current snapshot and first snapshot;
  3. reads it through DuckDB's Iceberg extension (offline, from the PyPI extension packages) on the table's
     current metadata file;
and fails unless all three agree.

Usage: python tests/interop.py path/to/parley
"""

import asyncio
import decimal
import glob
import json
import os
import subprocess
import sys
import tempfile

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from pyiceberg.catalog.sql import SqlCatalog


async def parley_query(binary: str, data_dir: str, sql: str) -> dict:
    params = StdioServerParameters(
        command=binary,
        args=["serve", "--data-dir", data_dir, "--principal", "analyst"],
        env={**os.environ, "PARLEY_LOG": "warn"},
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("query", {"sql": sql})
            if result.is_error:
                raise SystemExit(f"parley query failed: {result.content}")
            return result.structured_content


def main() -> None:
    binary = os.path.abspath(sys.argv[1])
    data_dir = tempfile.mkdtemp(prefix="parley-interop-")
    subprocess.run([binary, "init", "--data-dir", data_dir], check=True)

    # 1. Parley, through the Python MCP SDK.
    r = asyncio.run(
        parley_query(binary, data_dir, "SELECT count(*) AS n, sum(total_amount) AS s FROM sales.orders")
    )
    parley_count = r["rows"][0][0]
    parley_sum = decimal.Decimal(r["rows"][0][1])
    snapshot_id = r["snapshots"][0]["snapshot_id"]
    print(f"parley:    count={parley_count} sum={parley_sum} snapshot={snapshot_id}")

    # 2. pyiceberg, through the same SQL catalog.
    catalog = SqlCatalog(
        "parley",
        uri=f"sqlite:///{data_dir}/catalog.db",
        warehouse=f"file://{data_dir}/warehouse",
    )
    table = catalog.load_table("sales.orders")
    assert str(table.current_snapshot().snapshot_id) == snapshot_id, "same current snapshot (ids are strings)"
    arrow = table.scan(selected_fields=("order_id", "total_amount")).to_arrow()
    py_count = arrow.num_rows
    py_sum = sum((v for v in arrow.column("total_amount").to_pylist()), decimal.Decimal(0))
    print(f"pyiceberg: count={py_count} sum={py_sum}")
    assert py_count == parley_count, (py_count, parley_count)
    assert py_sum == parley_sum, (py_sum, parley_sum)
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    assert len(snapshots) == 2, snapshots
    first = table.scan(snapshot_id=snapshots[0].snapshot_id).to_arrow().num_rows
    assert first == 100_000, first
    partitions = [f.transform for f in table.spec().fields]
    print(f"pyiceberg: first snapshot rows={first}, partition transforms={partitions}")
    for name, rows in [("sales.customers", 20_000), ("sales.products", 500), ("ops.shipments", 60_000)]:
        n = catalog.load_table(name).scan().to_arrow().num_rows
        assert n == rows, (name, n)

    # 3. DuckDB's Iceberg extension on the current metadata file.
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    con = duckdb.connect()
    for module, name in [(duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")]:
        root = os.path.dirname(module.__file__)
        ext = glob.glob(os.path.join(root, "extensions", "*", f"{name}.duckdb_extension"))
        assert ext, f"no {name} extension under {root}"
        con.execute(f"LOAD '{ext[0]}'")
    metadata = table.metadata_location.removeprefix("file://")
    n, s = con.execute(
        f"SELECT count(*), sum(total_amount) FROM iceberg_scan('{metadata}')"
    ).fetchone()
    print(f"duckdb:    count={n} sum={s}")
    assert n == parley_count, (n, parley_count)
    assert decimal.Decimal(str(s)) == parley_sum, (s, parley_sum)
    print(json.dumps({"interop": "ok", "rows": parley_count, "sum": str(parley_sum)}))


if __name__ == "__main__":
    main()
