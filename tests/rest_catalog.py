"""Parley over a lakehouse it did not create: an Iceberg REST catalog (Apache Iceberg's own handlers, the fixture
in tests/iceberg-rest-fixture), a pyiceberg SQL catalog on local files and one whose warehouse is in S3 (moto's S3
API on loopback), federated as `lake`, `local` and `objects`.

pyiceberg writes the tables (appends, a copy-on-write delete, a renamed and an added column, a nested namespace)
and DuckDB deletes rows through the REST catalog (position delete files); `sales.orders` keeps its data files in
S3, which Parley reads only with the credentials the catalog vends per table; the catalog's tokens expire after
TOKEN_TTL seconds, so Parley must renew its own; the REST catalog hides `hr.*` from Parley's service account. Then, through the Python MCP SDK over stdio:
  1. `parley init` drafts a contract per table Parley's account can see, and a starter policy;
  2. the default principal discovers every visible table and reads its draft contract; queries wait for
     classification; the hidden table answers exactly like a missing one, in every tool;
  3. once an owner classifies the columns, query results equal pyiceberg's own reading, across both catalogs;
  4. with Lakekeeper-style catalog authorization (`[catalogs.authorization]`, a batch-check service on loopback
     speaking Lakekeeper's management API shapes, which checks Parley's service token against the REST
     catalog), both the catalog and Parley's policy must allow: a table the catalog does not list for a
     principal is a missing table, one it lists without read_data is denied by the catalog, the audit record
     names the catalog's decision, and an unreachable permission service fails closed;
  5. with per-agent authorization by OAuth 2.0 Token Exchange (`type = "token-exchange"`), HTTP agents see and
     read what the catalog lets *them* see: Parley exchanges each agent's verified JWT at the catalog's token
     endpoint (the fixture maps it to its own principal) and asks the catalog as that agent; an agent the
     catalog does not know sees nothing of it; a stdio principal (no token) neither;
  6. a wrong client secret is said in the log and in the agent's error, without a response body or secret;
  7. (run before 6) an owner commits through Parley's /iceberg to the REST catalog: a compatible change lands in
     the catalog, a breaking one to a contracted column an analyst reads is refused and never reaches it.

Usage: python tests/rest_catalog.py path/to/parley
"""

import asyncio
import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import urllib.request
from datetime import datetime, timezone

import pyarrow as pa
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from pyiceberg.catalog import load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import EqualTo
from pyiceberg.types import StringType

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "iceberg-rest-fixture", "run.sh")
SECRET = "parley-secret-7f3a"
TOKEN_TTL = 5


def start_fixture(warehouse: str, auth: str, vend: str) -> tuple[subprocess.Popen, str]:
    # Issued tokens live TOKEN_TTL seconds (Parley must renew them); table loads that ask for vended credentials
    # get the storage properties in `vend`; lists come one entry per page (Parley must follow next-page-token).
    proc = subprocess.Popen(
        ["bash", FIXTURE, "0", f"file://{warehouse}", "--auth", auth, "--prefix", "wh1", "--quiet",
         "--token-ttl", str(TOKEN_TTL), "--vend", vend, "--page-size", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"the REST fixture did not start (got {url!r}); needs Java 17")
    return proc, url


class BatchCheck(http.server.BaseHTTPRequestHandler):
    """Lakekeeper's `POST /management/v1/action/batch-check` (request and answer shapes from its OpenAPI)."""

    catalog_url = ""
    grants: dict = {}
    requests: list = []

    def do_POST(self):
        if self.path != "/management/v1/action/batch-check":
            self.send_error(404)
            return
        token = self.headers.get("Authorization", "")
        # Parley's service token must be one the REST catalog accepts.
        probe = urllib.request.Request(f"{self.catalog_url}/v1/config", headers={"Authorization": token})
        try:
            urllib.request.urlopen(probe, timeout=5)
        except Exception:
            self.send_error(401)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        BatchCheck.requests.append(body)
        results = []
        for i, check in enumerate(body["checks"]):
            user = check["identity"]["user"]
            op = check["operation"]["table"]
            table = ".".join(op["namespace"] + [op["table"]])
            allowed = op["action"] in self.grants.get(user, {}).get(table, set())
            results.append({"id": check.get("id", str(i)), "allowed": allowed})
        answer = json.dumps({"results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def start_s3() -> tuple[subprocess.Popen, str]:
    """moto's S3 API on a free loopback port, with an empty bucket `lake`."""
    import socket

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            import time

            time.sleep(0.1)
    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="lake")
    return proc, endpoint


S3_PROPS = {"s3.access-key-id": "testing", "s3.secret-access-key": "testing", "s3.region": "us-east-1"}


def duckdb_with_iceberg():
    """DuckDB with its iceberg extension (offline, from the PyPI extension packages)."""
    import glob

    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_httpfs
    import duckdb_extension_iceberg

    con = duckdb.connect()
    for module, name in [(duckdb_extension_httpfs, "httpfs"), (duckdb_extension_avro, "avro"),
                         (duckdb_extension_iceberg, "iceberg")]:
        root = os.path.dirname(module.__file__)
        ext = glob.glob(os.path.join(root, "extensions", "*", f"{name}.duckdb_extension"))
        assert ext, f"no {name} extension under {root}"
        con.execute(f"LOAD '{ext[0]}'")
    return con


def write_tables(url: str, sql_dir: str, s3: str) -> dict:
    """Writes the tables as other engines would; returns the ground truth Parley must match.

    `sales.orders` keeps its data files in S3 (`write.data.path`): Parley's configuration of the REST catalog
    has no S3 settings, so it reads them only with the credentials the catalog vends per table. DuckDB deletes
    rows through the REST catalog (merge-on-read: position delete files) in `sales.orders` and
    `sales.eu.orders`."""
    admin = load_catalog("admin", type="rest", uri=url, token="admin-token", **{"s3.endpoint": s3, **S3_PROPS})
    for ns in ["sales", "sales.eu", "hr"]:
        admin.create_namespace(tuple(ns.split(".")))
    schema = pa.schema(
        [
            pa.field("order_id", pa.int64(), nullable=False),
            pa.field("customer", pa.string()),
            pa.field("amount", pa.float64()),
            pa.field("placed_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    orders = admin.create_table("sales.orders", schema=schema,
                                properties={"write.data.path": "s3://lake/rest/sales/orders/data"})

    def batch(start: int, end: int) -> pa.Table:
        ids = list(range(start, end))
        return pa.Table.from_pylist(
            [
                {
                    "order_id": i,
                    "customer": f"c{i % 37}",
                    "amount": float(i % 101) + 0.25,
                    "placed_at": datetime(2026, 1 + i % 12, 1 + i % 28, tzinfo=timezone.utc),
                }
                for i in ids
            ],
            schema=schema,
        )

    orders.append(batch(0, 3000))
    orders.append(batch(3000, 5000))
    orders.delete(EqualTo("customer", "c5"))  # copy-on-write: rewritten files
    with orders.update_schema() as update:
        update.rename_column("customer", "customer_id")
        update.add_column("channel", StringType())
    eu = admin.create_table("sales.eu.orders", schema=schema)
    eu.append(batch(0, 100))
    count_before_deletes = admin.load_table("sales.orders").scan().to_arrow().num_rows
    con = duckdb_with_iceberg()
    con.execute("CREATE SECRET rest (TYPE ICEBERG, TOKEN 'admin-token')")
    con.execute(f"ATTACH '' AS rest (TYPE ICEBERG, ENDPOINT '{url}', SECRET rest)")
    con.execute('DELETE FROM rest.sales.orders WHERE order_id % 7 = 0')
    con.execute('DELETE FROM rest."sales.eu".orders WHERE order_id % 10 = 3')
    # DuckDB's own reading of the table (renamed column, position deletes in S3), for the three-way check.
    duck_count, duck_sum = con.execute("SELECT count(*), round(sum(amount), 2) FROM rest.sales.orders").fetchone()
    duck_eu = con.execute('SELECT count(*) FROM rest."sales.eu".orders').fetchone()[0]
    con.close()
    deletes = [t for t in admin.load_table("sales.orders").scan().plan_files() if t.delete_files]
    assert deletes and deletes[0].file.file_path.startswith("s3://lake/rest/"), "DuckDB wrote position deletes"
    hr = admin.create_table("hr.salaries", schema=pa.schema([pa.field("salary", pa.int64())]))
    hr.append(pa.Table.from_pylist([{"salary": 1}]))

    local = SqlCatalog("local", uri=f"sqlite:///{sql_dir}/catalog.db", warehouse=f"file://{sql_dir}/wh")
    local.create_namespace("ops")
    ship_schema = pa.schema([pa.field("order_id", pa.int64()), pa.field("carrier", pa.string())])
    shipments = local.create_table("ops.shipments", schema=ship_schema)
    shipments.append(
        pa.Table.from_pylist(
            [{"order_id": i, "carrier": ["dhl", "ups"][i % 2]} for i in range(0, 5000, 3)], schema=ship_schema
        )
    )

    objects = SqlCatalog(
        "objects", uri=f"sqlite:///{sql_dir}/objects.db", warehouse="s3://lake/wh",
        **{"s3.endpoint": s3, **S3_PROPS},
    )
    objects.create_namespace("web")
    ev_schema = pa.schema([pa.field("id", pa.int64()), pa.field("kind", pa.string())])
    events = objects.create_table("web.events", schema=ev_schema)
    events.append(pa.Table.from_pylist([{"id": i, "kind": ["view", "click"][i % 2]} for i in range(777)],
                                       schema=ev_schema))
    events.append(pa.Table.from_pylist([{"id": i, "kind": "buy"} for i in range(777, 800)], schema=ev_schema))
    assert events.metadata_location.startswith("s3://lake/"), events.metadata_location

    # Ground truth, read back through pyiceberg (Parley's service account sees what admin sees here, minus hr).
    truth = admin.load_table("sales.orders").scan().to_arrow()
    ships = local.load_table("ops.shipments").scan().to_arrow()
    shipped = set(ships.column("order_id").to_pylist())
    rows = truth.to_pylist()
    return {
        "count": len(rows),
        "count_before_deletes": count_before_deletes,
        "sum": round(sum(r["amount"] for r in rows), 2),
        "customers": len({r["customer_id"] for r in rows}),
        "null_channel": sum(1 for r in rows if r["channel"] is None),
        "joined": sum(1 for r in rows if r["order_id"] in shipped),
        "eu": admin.load_table("sales.eu.orders").scan().to_arrow().num_rows,
        "buys": sum(1 for k in objects.load_table("web.events").scan().to_arrow().column("kind").to_pylist()
                    if k == "buy"),
        "events": objects.load_table("web.events").scan().to_arrow().num_rows,
        "duckdb": (duck_count, float(duck_sum), duck_eu),
    }


async def http_calls(url: str, token: str, calls: list) -> list:
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    out = []
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with client, streamable_http_client(url, http_client=client) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            for tool, args in calls:
                out.append(await session.call_tool(tool, args))
    return out


def serve_http(binary: str, data_dir: str) -> tuple[subprocess.Popen, int]:
    """`parley serve --http` with the dev issuer on a free port, once it listens; its stderr stays readable."""
    port = free_port()
    server = subprocess.Popen(
        [binary, "serve", "--data-dir", data_dir, "--http", f"127.0.0.1:{port}", "--dev-issuer"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PARLEY_LOG": "info", "PARLEY_CATALOG_CACHE_TTL_MS": "0"},
    )
    for line in server.stderr:
        if "serving MCP over streamable HTTP" in line:
            break
    return server, port


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def session_calls(binary: str, data_dir: str, calls: list, principal: str = "analyst") -> list:
    params = StdioServerParameters(
        command=binary,
        args=["serve", "--data-dir", data_dir, "--principal", principal],
        env={**os.environ, "PARLEY_LOG": "warn", "PARLEY_CATALOG_CACHE_TTL_MS": "0"},
    )
    out = []
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            for tool, args in calls:
                if tool == "pause":
                    await asyncio.sleep(args)
                    continue
                out.append(await session.call_tool(tool, args))
    return out


def classify(data_dir: str) -> None:
    """The owner's step after `parley init`: every drafted column classified internal, the contracts active."""
    for root, _dirs, files in os.walk(os.path.join(data_dir, "contracts")):
        for name in files:
            path = os.path.join(root, name)
            with open(path) as f:
                yaml = f.read()
            yaml = yaml.replace("required: false\n", "required: false\n    classification: internal\n")
            yaml = yaml.replace("required: true\n", "required: true\n    classification: internal\n")
            with open(path, "w") as f:
                f.write(yaml.replace("status: draft", "status: active"))


def text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "text", None))


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


def main() -> None:
    binary = os.path.abspath(sys.argv[1])
    tmp = tempfile.mkdtemp(prefix="parley-rest-")
    warehouse, sql_dir, data_dir = (os.path.join(tmp, d) for d in ("rest-wh", "sql", "data"))
    for d in (warehouse, sql_dir, data_dir):
        os.makedirs(d)
    # Agents' tokens from Parley's dev issuer (as an IdP would issue them). The catalog knows alice's token (as a
    # catalog behind the same IdP would) and lets her see sales.orders only.
    def mint(principal: str) -> str:
        return subprocess.run(
            [binary, "token", "--data-dir", data_dir, "--principal", principal, "--groups", "analysts"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()

    alice_jwt, bob_jwt = mint("alice"), mint("bob")
    auth = os.path.join(tmp, "auth.json")
    with open(auth, "w") as f:
        json.dump(
            {
                "principals": [
                    {"name": "alice", "client_id": "alice", "client_secret": "alice-secret", "tokens": [alice_jwt],
                     "namespaces": ["sales"], "tables": ["sales.orders"], "read_only": True},
                    {"name": "admin", "client_id": "admin", "client_secret": "admin-secret",
                     "tokens": ["admin-token"], "admin": True},
                    # Parley's service account: it reads, and lands the commits owners make through Parley.
                    {"name": "parley", "client_id": "parley", "client_secret": SECRET,
                     "namespaces": ["sales", "sales.eu"], "tables": ["sales.*"], "read_only": False},
                ]
            },
            f,
        )
    s3_server, s3 = start_s3()
    vend = os.path.join(tmp, "vend.json")
    with open(vend, "w") as f:
        json.dump({"s3.endpoint": s3, "s3.path-style-access": "true", **S3_PROPS}, f)
    fixture, url = start_fixture(warehouse, auth, vend)
    try:
        truth = write_tables(url, sql_dir, s3)
        print(f"pyiceberg truth: {truth}")

        def write_config(secret: str) -> None:
            with open(os.path.join(data_dir, "parley.toml"), "w") as f:
                f.write(
                    f'[[catalogs]]\nname = "lake"\ntype = "rest"\nuri = "{url}"\ncredential = "parley:{secret}"\n'
                    f'scope = "catalog"\n\n'
                    f'[[catalogs]]\nname = "local"\ntype = "sql"\nuri = "sqlite:{sql_dir}/catalog.db"\n'
                    f'warehouse = "file://{sql_dir}/wh"\n\n'
                    f'[[catalogs]]\nname = "objects"\ntype = "sql"\nuri = "sqlite:{sql_dir}/objects.db"\n'
                    f'warehouse = "s3://lake/wh"\n"s3.endpoint" = "{s3}"\n"s3.path-style-access" = "true"\n'
                    + "".join(f'"{k}" = "{v}"\n' for k, v in S3_PROPS.items())
                )

        write_config(SECRET)
        # Serving before init says what to do.
        r = subprocess.run([binary, "serve", "--data-dir", data_dir], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        check(r.returncode != 0 and "parley init" in r.stderr, "serve before init says to run `parley init`")

        # 1. init drafts contracts for the visible tables only, never touching the catalogs.
        r = subprocess.run([binary, "init", "--data-dir", data_dir], capture_output=True, text=True, timeout=120)
        print(r.stdout, r.stderr)
        check(r.returncode == 0, "parley init succeeds")
        drafted = set(re.findall(r"drafted the contract of (\S+):", r.stdout))
        check(drafted == {"lake.sales.orders", "lake.sales.eu.orders", "local.ops.shipments", "objects.web.events"},
              f"init drafts exactly the visible tables ({sorted(drafted)})")
        check(os.path.exists(os.path.join(data_dir, "policy", "policy.cedar")), "init writes a starter policy")
        again = subprocess.run([binary, "init", "--data-dir", data_dir], capture_output=True, text=True, timeout=120)
        check("0 draft contracts written, 4 already had a contract" in again.stdout, "a second init changes nothing")
        validate = subprocess.run([binary, "contract", "validate", os.path.join(data_dir, "contracts")],
                                  capture_output=True, text=True)
        check(validate.returncode == 0, f"the drafts validate: {validate.stdout.strip()[:200]}")

        # 2. Discovery and contracts at once; queries wait for classification; the hidden table is a missing one.
        results = asyncio.run(session_calls(binary, data_dir, [
            ("list_tables", {}),
            ("get_contract", {"table": "lake.sales.orders"}),
            ("query", {"sql": "SELECT count(*) FROM lake.sales.orders"}),
            ("describe_table", {"table": "lake.hr.salaries"}),
            ("describe_table", {"table": "lake.hr.nonexistent"}),
            ("query", {"sql": "SELECT * FROM lake.hr.salaries"}),
            ("query", {"sql": "SELECT * FROM lake.hr.nonexistent"}),
            ("get_contract", {"table": "lake.hr.salaries"}),
            ("get_contract", {"table": "lake.hr.nonexistent"}),
            ("query", {"sql": "SELECT count(*) FROM sales.orders"}),
        ]))
        listed = {t["table"] for t in results[0].structured_content["tables"]}
        check(listed == {"lake.sales.orders", "lake.sales.eu.orders", "local.ops.shipments", "objects.web.events"},
              f"list_tables shows the visible tables of every catalog ({sorted(listed)})")
        contract = text(results[1])
        check(not results[1].is_error and "draft" in contract and "customer_id" in contract,
              "the draft contract is readable, with the evolved schema")
        check(results[2].is_error and "denied" in text(results[2]).lower(), "queries wait for classification")
        for hidden, missing, tool in [(3, 4, "describe_table"), (5, 6, "query"), (7, 8, "get_contract")]:
            a = text(results[hidden]).replace("salaries", "X")
            b = text(results[missing]).replace("nonexistent", "X")
            check(results[hidden].is_error and a == b, f"{tool}: a table the catalog hides answers like a missing one")
        check(results[9].is_error and "names no catalog" in text(results[9]), "a name without its catalog says so")

        # 3. An owner classifies the columns; results equal pyiceberg's.
        classify(data_dir)
        results = asyncio.run(session_calls(binary, data_dir, [
            ("query", {"sql": "SELECT count(*) AS n, round(sum(amount), 2) AS s, count(DISTINCT customer_id) AS c, "
                              "count(*) FILTER (WHERE channel IS NULL) AS nc FROM lake.sales.orders"}),
            ("query", {"sql": "SELECT count(*) FROM lake.sales.orders o JOIN local.ops.shipments s "
                              "ON o.order_id = s.order_id"}),
            ("query", {"sql": 'SELECT count(*) FROM lake."sales.eu".orders'}),
            ("describe_table", {"table": "lake.sales.orders"}),
            ("query", {"sql": "SELECT count(*), count(*) FILTER (WHERE kind = 'buy') FROM objects.web.events"}),
        ]))
        for r in results:
            if r.is_error:
                raise SystemExit(f"FAILED: {text(r)}")
        n, s, c, nc = results[0].structured_content["rows"][0]
        check((n, round(float(s), 2), c, nc) == (truth["count"], truth["sum"], truth["customers"],
                                                  truth["null_channel"]),
              f"count/sum/distinct/nulls equal pyiceberg's ({n}, {s}, {c}, {nc})")
        check(truth["duckdb"] == (n, round(float(s), 2), truth["eu"]),
              f"and DuckDB's own reading of the same tables through the REST catalog ({truth['duckdb']})")
        check(results[1].structured_content["rows"][0][0] == truth["joined"],
              "a join across the REST and the SQL catalog equals pyiceberg's")
        check(results[2].structured_content["rows"][0][0] == truth["eu"], "a nested namespace is queryable")
        check("channel" in text(results[3]), "describe_table shows the evolved schema")
        check(results[4].structured_content["rows"][0] == [truth["events"], truth["buys"]],
              "a table whose files are in S3 (moto) reads as pyiceberg reads it")
        check(results[0].structured_content["rows"][0][0] == truth["count"] and truth["count_before_deletes"]
              > truth["count"], "position deletes written by DuckDB in S3 files, read with vended credentials")

        # The catalog's tokens expire (the fixture issues them for TOKEN_TTL seconds): Parley renews its own.
        results = asyncio.run(session_calls(binary, data_dir, [
            ("query", {"sql": "SELECT count(*) FROM lake.sales.orders"}),
            ("pause", TOKEN_TTL + 1),
            ("query", {"sql": "SELECT count(*) FROM lake.sales.orders"}),
        ]))
        check(not results[1].is_error and results[1].structured_content["rows"][0][0] == truth["count"],
              f"after the catalog's token expired, Parley renews it and reads on ({text(results[1])[:120]})")

        # A change made behind the contract's back (straight to the catalog): the table is flagged, the broken
        # promise named column by column.
        admin = load_catalog("admin2", type="rest", uri=url, credential="admin:admin-secret")
        with admin.load_table("sales.orders").update_schema() as update:
            update.delete_column("channel")
        results = asyncio.run(session_calls(binary, data_dir, [
            ("list_tables", {}),
            ("describe_table", {"table": "lake.sales.orders"}),
        ]))
        flagged = {t["table"] for t in results[0].structured_content["tables"] if t.get("contract_drift")}
        check(flagged == {"lake.sales.orders"}, f"list_tables flags the table that left its contract ({flagged})")
        drift = results[1].structured_content.get("contract_drift", [])
        check([d["column"] for d in drift] == ["channel"] and "no longer has it" in drift[0]["change"],
              f"describe_table names the broken promise: {drift}")

        # 4. The catalog's own authorization in the path (Lakekeeper batch-check), both must allow.
        BatchCheck.catalog_url = url
        BatchCheck.grants = {
            "oidc~a1b2": {
                "sales.orders": {"include_in_list", "get_metadata", "read_data"},
                "sales.eu.orders": {"include_in_list", "get_metadata"},
            },
        }
        checker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BatchCheck)
        threading.Thread(target=checker.serve_forever, daemon=True).start()
        config_path = os.path.join(data_dir, "parley.toml")
        with open(config_path) as f:
            plain_config = f.read()
        lake_end = plain_config.index("[[catalogs]]", 1)
        with open(config_path, "w") as f:
            f.write(
                plain_config[:lake_end]
                + "[catalogs.authorization]\ntype = \"lakekeeper\"\n"
                + f'management-uri = "http://127.0.0.1:{checker.server_port}/management"\n'
                + 'warehouse-id = "9f2a6c1e-0000-4000-8000-000000000001"\ncache-ms = 0\n'
                + '[catalogs.authorization.identities]\nanalyst = "oidc~a1b2"\n\n'
                + plain_config[lake_end:]
            )
        before = len(BatchCheck.requests)
        results = asyncio.run(session_calls(binary, data_dir, [
            ("list_tables", {}),
            ("query", {"sql": "SELECT count(*) FROM lake.sales.orders"}),
            ("query", {"sql": 'SELECT count(*) FROM lake."sales.eu".orders'}),
        ]))
        listed = {t["table"] for t in results[0].structured_content["tables"]}
        check(listed == {"lake.sales.orders", "lake.sales.eu.orders", "local.ops.shipments", "objects.web.events"},
              f"the catalog lists both lake tables for analyst ({sorted(listed)})")
        check(not results[1].is_error and results[1].structured_content["rows"][0][0] == truth["count"],
              "read_data allowed by the catalog and the policy: the query runs")
        check(results[2].is_error and "catalog's own permissions" in text(results[2]),
              f"listed without read_data: denied by the catalog ({text(results[2])[:100]})")
        listing = BatchCheck.requests[before]
        check(len(listing["checks"]) == 2 and {c["identity"]["user"] for c in listing["checks"]} == {"oidc~a1b2"},
              "one batch-check for the whole listing, for the mapped catalog user")
        with open(os.path.join(data_dir, "audit", "audit.jsonl")) as f:
            records = [json.loads(line) for line in f]
        denied = [r for r in records if r.get("tool") == "query" and r["decision"] == "denied"][-1]
        check("(Lakekeeper batch-check) for oidc~a1b2 refuses" in denied["reason"],
              "the audit record names the catalog's decision")

        results = asyncio.run(session_calls(binary, data_dir, [
            ("list_tables", {}),
            ("describe_table", {"table": "lake.sales.orders"}),
            ("describe_table", {"table": "lake.sales.nonexistent"}),
        ], principal="data-owner"))
        listed = {t["table"] for t in results[0].structured_content["tables"]}
        check(listed == {"local.ops.shipments", "objects.web.events"}, f"a principal the catalog grants nothing sees only the other catalog ({sorted(listed)})")
        check(text(results[1]).replace("orders", "X") == text(results[2]).replace("nonexistent", "X"),
              "a table the catalog does not list for the principal answers like a missing one")

        checker.shutdown()
        checker.server_close()
        results = asyncio.run(session_calls(binary, data_dir, [
            ("list_tables", {}),
            ("query", {"sql": "SELECT count(*) FROM lake.sales.orders"}),
        ]))
        check(all(r.is_error and "fails closed" in text(r) for r in results),
              f"an unreachable permission service fails closed, said in the error ({text(results[0])[:120]})")
        with open(config_path, "w") as f:
            f.write(plain_config)

        # 5. Token exchange: each HTTP agent sees what the catalog lets them see.
        lake_end = plain_config.index("[[catalogs]]", 1)
        with open(config_path, "w") as f:
            f.write(
                plain_config[:lake_end]
                + '[catalogs.authorization]\ntype = "token-exchange"\ncache-ms = 0\n\n'
                + plain_config[lake_end:]
            )
        server, port = serve_http(binary, data_dir)
        try:
            mcp_url = f"http://127.0.0.1:{port}/mcp"
            calls = [
                ("list_tables", {}),
                ("describe_table", {"table": "lake.sales.eu.orders"}),
                ("describe_table", {"table": "lake.sales.nonexistent"}),
                ("query", {"sql": "SELECT count(*) FROM lake.sales.orders"}),
            ]
            alice = asyncio.run(http_calls(mcp_url, alice_jwt, calls))
            bob = asyncio.run(http_calls(mcp_url, bob_jwt, calls))
        finally:
            server.terminate()
            server_log = server.stderr.read()
            server.wait()
        check(alice_jwt not in server_log and alice_jwt.split(".")[2] not in server_log,
              "the agent's token never appears in the server's log")
        listed = {t["table"] for t in alice[0].structured_content["tables"]}
        check(listed == {"lake.sales.orders", "local.ops.shipments", "objects.web.events"},
              f"alice sees the lake tables the catalog shows her, by her exchanged token ({sorted(listed)})")
        check(text(alice[1]).replace("eu.orders", "X") == text(alice[2]).replace("nonexistent", "X"),
              "a lake table the catalog hides from alice answers like a missing one")
        check(not alice[3].is_error and alice[3].structured_content["rows"][0][0] == truth["count"],
              "alice queries the table the catalog lets her read")
        listed = {t["table"] for t in bob[0].structured_content["tables"]}
        check(listed == {"local.ops.shipments", "objects.web.events"},
              f"an agent whose token the catalog does not accept sees nothing of it ({sorted(listed)})")
        check(bob[3].is_error and "not found" in text(bob[3]), "and cannot query it")
        results = asyncio.run(session_calls(binary, data_dir, [("list_tables", {})]))
        listed = {t["table"] for t in results[0].structured_content["tables"]}
        check(not any(t.startswith("lake.") for t in listed),
              f"a stdio principal has no token to exchange and sees nothing of that catalog ({sorted(listed)})")
        with open(config_path, "w") as f:
            f.write(plain_config)

        # 7. Commits through Parley's /iceberg to a table of the REST catalog: checked against its contract, then
        # sent on to the catalog with Parley's credentials.
        import yaml

        from pyiceberg.exceptions import CommitFailedException

        write_config(SECRET)
        path = os.path.join(data_dir, "contracts", "lake", "sales", "orders.yaml")
        with open(path) as f:
            doc = yaml.safe_load(f)
        doc["team"] = {"name": "lake-owners"}
        doc.setdefault("slaProperties", []).append({"property": "schemaStability", "value": "stable"})
        with open(path, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        carol = subprocess.run(
            [binary, "token", "--data-dir", data_dir, "--principal", "carol", "--groups", "lake-owners"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        server, port = serve_http(binary, data_dir)
        try:
            own = load_catalog("own", type="rest", uri=f"http://127.0.0.1:{port}/iceberg", token=carol)
            with own.load_table(("lake", "sales", "orders")).update_schema() as update:
                update.add_column("note", StringType())
            straight = load_catalog("admin3", type="rest", uri=url, token="admin-token")
            names = lambda: [f.name for f in straight.load_table("sales.orders").schema().fields]  # noqa: E731
            check("note" in names(), "an owner's compatible commit through Parley lands in the REST catalog")
            try:
                own.load_table(("lake", "sales", "orders")).update_schema().delete_column("amount").commit()
                refused = None
            except CommitFailedException as e:
                refused = str(e)
            check(refused is not None and "schemaStability" in refused and "analyst" in refused
                  and "amount" in names(),
                  f"dropping a contracted column an analyst reads is refused before it reaches the catalog: {refused}")
        finally:
            server.terminate()
            server.stderr.read()
            server.wait()

        # 6. A wrong secret: said at start-up and to the agent, without the secret or a response body.
        write_config("wrong-secret")
        params_log = os.path.join(tmp, "serve.log")

        async def broken() -> str:
            with open(params_log, "w") as log:
                params = StdioServerParameters(
                    command=binary, args=["serve", "--data-dir", data_dir],
                    env={**os.environ, "PARLEY_LOG": "warn", "PARLEY_CATALOG_CACHE_TTL_MS": "0"},
                )
                async with stdio_client(params, errlog=log) as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        listed = await session.call_tool("list_tables", {})
                        r = await session.call_tool("describe_table", {"table": "lake.sales.orders"})
                        return listed, text(r)

        listed, agent_text = asyncio.run(broken())
        names = {t["table"] for t in listed.structured_content["tables"]}
        check(names == {"local.ops.shipments", "objects.web.events"},
              f"a catalog that refuses Parley hides no other catalog ({sorted(names)})")
        with open(params_log) as f:
            log = f.read()
        errors = [line for line in log.splitlines() if " ERROR " in line]
        check(any('catalog "lake"' in line and "credential" in line for line in errors),
              "the start-up error names the catalog and its credential")
        check(SECRET not in log and "wrong-secret" not in log, "the log holds no secret")
        check("credential" in agent_text and "wrong-secret" not in agent_text and "{" not in agent_text,
              f"the agent is told the catalog refused Parley's credentials: {agent_text[:160]}")
    finally:
        fixture.kill()
        fixture.wait()
        s3_server.kill()
        s3_server.wait()
    print("rest catalog: all checks passed")


if __name__ == "__main__":
    main()
