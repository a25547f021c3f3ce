"""Discovery and query latency of one Parley binary over three lakehouses holding the same table:

  embedded  the SQL catalog on local files (what `parley serve` makes with no configuration);
  rest      an Iceberg REST catalog (tests/iceberg-rest-fixture: Apache Iceberg's own handlers, OAuth2 client
            credentials) with the table's files on local disk;
  rest+s3   the same REST catalog, the table's data files in S3 (moto's S3 API on loopback), read with the
            credentials the catalog vends per table.

pyiceberg writes the same rows into each (ROWS orders, three appends). Each lakehouse gets `parley init` and an
owner's classification, then one MCP session per lakehouse (stdio, the Python MCP SDK) answers the same calls in
turn, interleaved, SAMPLES times: once with the table and listing caches off (`PARLEY_CATALOG_CACHE_TTL_MS=0`,
every call asks the catalog, as the first call after a commit does), once with the default caches. Reports p50/p90
per call and the ratio to the embedded catalog.

Usage: python benches/catalogs.py path/to/parley OUT_DIR [--rows N] [--samples N]
Needs Java 17 (the fixture) and the packages of tests/interop-requirements.txt.
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import pyarrow as pa  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from pyiceberg.catalog import load_catalog  # noqa: E402
from pyiceberg.catalog.sql import SqlCatalog  # noqa: E402
from rest_catalog import S3_PROPS, classify, start_s3  # noqa: E402

FIXTURE = os.path.join(HERE, "..", "tests", "iceberg-rest-fixture", "run.sh")
# Table and listing caches: off (every call asks the catalog, as the first call after a commit does), and the
# default `catalog_cache_ttl_ms` (what a session sees in steady state).
MODES = [("caches off (every call asks the catalog)", "0"), ("default caches", None)]
SECRET = "bench-secret"

CALLS = [
    ("list_tables", "list_tables", {}),
    ("describe_table", "describe_table", {"table": "bench.orders"}),
    ("SELECT 1", "query", {"sql": "SELECT 1"}),
    ("point lookup", "query", {"sql": "SELECT * FROM bench.orders WHERE order_id = 123457"}),
    ("group-by", "query", {"sql": "SELECT status, count(*), sum(amount) FROM bench.orders GROUP BY status"}),
    ("filtered top-10", "query", {"sql": "SELECT order_id, amount FROM bench.orders WHERE status = 'open' "
                                         "ORDER BY amount DESC LIMIT 10"}),
]


def orders(start: int, end: int) -> pa.Table:
    ids = pa.array(range(start, end), pa.int64())
    return pa.table({
        "order_id": ids,
        "customer": pa.array([f"c{i % 9973}" for i in range(start, end)]),
        "status": pa.array([("open", "paid", "shipped", "returned")[i % 4] for i in range(start, end)]),
        "amount": pa.array([float(i % 1013) + 0.5 for i in range(start, end)]),
    })


def write(catalog, name: str, rows: int, properties: dict) -> None:
    catalog.create_namespace("bench")
    table = catalog.create_table(f"bench.{name}", schema=orders(0, 1).schema, properties=properties)
    step = rows // 3 + 1
    for start in range(0, rows, step):
        table.append(orders(start, min(rows, start + step)))


def pct(values: list, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("parley")
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=30)
    a = ap.parse_args()
    binary = os.path.abspath(a.parley)
    tmp = tempfile.mkdtemp(prefix="parley-bench-catalogs-")
    os.makedirs(a.out, exist_ok=True)
    auth = os.path.join(tmp, "auth.json")
    with open(auth, "w") as f:
        json.dump({"principals": [
            {"name": "admin", "client_id": "admin", "client_secret": "admin-secret", "tokens": ["admin-token"],
             "admin": True},
            {"name": "parley", "client_id": "parley", "client_secret": SECRET, "namespaces": ["bench"],
             "tables": ["bench.orders"], "read_only": True},
            {"name": "parley-s3", "client_id": "parley-s3", "client_secret": SECRET, "namespaces": ["bench"],
             "tables": ["bench.orders_s3"], "read_only": True},
        ]}, f)
    s3_server, s3 = start_s3()
    vend = os.path.join(tmp, "vend.json")
    with open(vend, "w") as f:
        json.dump({"s3.endpoint": s3, "s3.path-style-access": "true", **S3_PROPS}, f)
    warehouse = os.path.join(tmp, "rest-wh")
    os.makedirs(warehouse)
    fixture = subprocess.Popen(
        ["bash", FIXTURE, "0", f"file://{warehouse}", "--auth", auth, "--quiet", "--vend", vend],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    url = fixture.stdout.readline().strip()
    try:
        if not url.startswith("http://"):
            raise SystemExit("the REST fixture did not start (needs Java 17)")
        dirs = {lake: os.path.join(tmp, lake.replace("+", "-")) for lake in ("embedded", "rest", "rest+s3")}
        for d in dirs.values():
            os.makedirs(d)
        # embedded: Parley's own SQL catalog file and warehouse in the data dir, written by pyiceberg.
        emb = dirs["embedded"]
        write(SqlCatalog("parley", uri=f"sqlite:///{emb}/catalog.db", warehouse=f"file://{emb}/warehouse"),
              "orders", a.rows, {})
        admin = load_catalog("admin", type="rest", uri=url, token="admin-token", **{"s3.endpoint": s3, **S3_PROPS})
        admin.create_namespace("bench")
        t = admin.create_table("bench.orders", schema=orders(0, 1).schema)
        t2 = admin.create_table("bench.orders_s3", schema=orders(0, 1).schema,
                                properties={"write.data.path": "s3://lake/bench/orders_s3/data"})
        step = a.rows // 3 + 1
        for start in range(0, a.rows, step):
            batch = orders(start, min(a.rows, start + step))
            t.append(batch)
            t2.append(batch)
        # The embedded catalog named as `parley serve` names it with no configuration (same SQL catalog code path).
        with open(os.path.join(emb, "parley.toml"), "w") as f:
            f.write(f'[[catalogs]]\nname = "parley"\ntype = "sql"\nuri = "sqlite:{emb}/catalog.db"\n'
                    f'warehouse = "file://{emb}/warehouse"\n')
        for lake, client in (("rest", "parley"), ("rest+s3", "parley-s3")):
            with open(os.path.join(dirs[lake], "parley.toml"), "w") as f:
                f.write(f'[[catalogs]]\nname = "parley"\ntype = "rest"\nuri = "{url}"\n'
                        f'credential = "{client}:{SECRET}"\n')
        for lake, d in dirs.items():
            r = subprocess.run([binary, "init", "--data-dir", d], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise SystemExit(f"init {lake}: {r.stdout}{r.stderr}")
            classify(d)
        # The S3 copy is `bench.orders_s3` of the same REST catalog, seen by its own client identity.
        runs = {mode: asyncio.run(run_with_names(binary, dirs, a.samples, {"rest+s3"}, ttl))
                for mode, ttl in MODES}
    finally:
        fixture.terminate()
        s3_server.terminate()
        fixture.wait()
        s3_server.wait()
    report(runs, dirs, a)
    shutil.rmtree(tmp, ignore_errors=True)


async def run_with_names(binary: str, dirs: dict, samples: int, s3_lakes: set, ttl_ms) -> dict:
    """The calls, interleaved over one session per lakehouse; `bench.orders` is `bench.orders_s3` in `s3_lakes`."""
    from contextlib import AsyncExitStack

    times = {(lake, label): [] for lake in dirs for label, _, _ in CALLS}

    def args_for(lake: str, args: dict) -> dict:
        if lake not in s3_lakes:
            return args
        return {k: v.replace("bench.orders", "bench.orders_s3") for k, v in args.items()}

    async with AsyncExitStack() as stack:
        sessions = {}
        for lake, data_dir in dirs.items():
            params = StdioServerParameters(
                command=binary, args=["serve", "--data-dir", data_dir, "--principal", "analyst"],
                env={**os.environ, "PARLEY_LOG": "warn",
                     **({} if ttl_ms is None else {"PARLEY_CATALOG_CACHE_TTL_MS": ttl_ms})},
            )
            read, write_ = await stack.enter_async_context(stdio_client(params))
            session = await stack.enter_async_context(ClientSession(read, write_))
            await session.initialize()
            sessions[lake] = session
        for sample in range(samples + 2):  # two warm-up rounds
            for label, tool, args in CALLS:
                for lake, session in sessions.items():
                    t0 = time.perf_counter()
                    result = await session.call_tool(tool, args_for(lake, args))
                    ms = (time.perf_counter() - t0) * 1000
                    if result.is_error:
                        text = "".join(c.text for c in result.content if getattr(c, "text", None))
                        raise SystemExit(f"{lake} {label}: {text}")
                    if sample >= 2:
                        times[(lake, label)].append(ms)
    return times


def report(runs: dict, dirs: dict, a) -> None:
    lines = [
        f"Parley over three catalogs, same table ({a.rows:,} rows, three appends, written by pyiceberg), "
        f"{a.samples} samples per call and catalog, interleaved, over MCP stdio (Python SDK). p50 (p90) in ms; "
        "ratio = p50 / embedded p50.",
    ]
    out = {}
    for mode, _ in MODES:
        times = runs[mode]
        lines += [
            "",
            f"**{mode}**",
            "",
            "| call | embedded (SQL catalog, local files) | REST catalog, local files | ratio | "
            "REST catalog, S3 (vended credentials) | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for label, _, _ in CALLS:
            row = [label]
            base = statistics.median(times[("embedded", label)])
            for lake in dirs:
                v = times[(lake, label)]
                p50, p90 = statistics.median(v), pct(v, 0.9)
                out[f"{mode} / {lake} / {label}"] = {"p50_ms": p50, "p90_ms": p90}
                row.append(f"{p50:.1f} ({p90:.1f})")
                if lake != "embedded":
                    row.append(f"{p50 / base:.2f}×")
            lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(a.out, "catalogs.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "catalogs.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
