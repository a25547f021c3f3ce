"""Parley's Iceberg REST endpoint (`/iceberg`) through pyiceberg's own REST client: reads, and commits checked
against the table's contract.

On the demo lakehouse, served over HTTP with dev-issuer tokens, pyiceberg pointed at Parley sees exactly what the
principal may discover, reads exactly what the policy lets it query without a grant (answers equal pyiceberg's
direct reading of the SQL catalog), gets a 403 for what it may only discover, a 404 identical to a missing table
for what it may not discover, 401 without a token; every request leaves an audit record.

Commits: `sales.orders`' contract promises a stable schema. Its owner adds an optional column (lands; the holder of
a live grant is told, in `my_notices`); dropping a contracted column the analyst reads and holds a grant on is
refused with 409 naming the clause, the column, the consumer and the grant, and nothing changes; dropping the new
column (which the contract does not promise) lands; non-owners cannot commit. A breaking contract v2 needs a new
major version and the notice period; until its date the drop is still refused, after it (the server's clock moved,
no sleeps) it lands. A change made straight to the catalog is flagged as drift and the grant holder told.
pyiceberg reading the SQL catalog directly sees exactly the landed changes; DuckDB attaches the endpoint with a
token and sees what the principal may see. Last, an owner's append lands and its manifest is then rewritten in place
to name a file outside every table's location: a restarted server refuses the analyst's queries and serves nothing
of that file.

Usage: python tests/iceberg_endpoint.py path/to/parley
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from pyiceberg.catalog import load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, ForbiddenError, NoSuchNamespaceError, NoSuchTableError
from pyiceberg.types import StringType


async def mcp_calls(url: str, token: str, calls: list) -> list:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    out = []
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with client, streamable_http_client(url, http_client=client) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            for tool, args in calls:
                out.append(await session.call_tool(tool, args))
    return out


async def watch(url: str, token: str, uri: str, act) -> tuple:
    """Subscribes to `uri` in a session of its own, runs `act` (blocking) and returns (its result, the resource
    updates the session heard within 10 s)."""
    from mcp import ClientSession, types
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    updates = []

    async def handler(message) -> None:
        # The notification itself, or wrapped in a ServerNotification (older SDKs).
        note = getattr(message, "root", message)
        if isinstance(note, types.ResourceUpdatedNotification):
            updates.append(str(note.params.uri))

    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with client, streamable_http_client(url, http_client=client) as streams:
        async with ClientSession(streams[0], streams[1], message_handler=handler) as session:
            await session.initialize()
            await session.subscribe_resource(uri)
            result = await asyncio.to_thread(act)
            for _ in range(50):
                if updates:
                    break
                await asyncio.sleep(0.2)
    return result, updates


def serve_http(binary: str, data_dir: str) -> tuple:
    """`parley serve` over HTTP with the dev issuer on a free loopback port, once it serves; with the file of the
    server's clock offset (seconds), which a test moves forward instead of waiting. Returns (process, port, clock)."""
    clock = os.path.join(data_dir, "clock-offset")
    with open(clock, "w") as f:
        f.write("0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [binary, "serve", "--data-dir", data_dir, "--http", f"127.0.0.1:{port}", "--dev-issuer"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PARLEY_LOG": "info", "PARLEY_CLOCK_FILE": clock},
    )
    for line in server.stderr:
        if "serving MCP over streamable HTTP" in line:
            break
    return server, port, clock


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


def raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test names the exception it expects
        return e
    return None


def point_manifest_at(table, snapshot, data_file: str) -> str:
    """Rewrites in place the manifest `snapshot` added, so that each of its entries names `data_file` (a local
    Parquet file): what an owner, who may write its table's prefix, can do once Parley has checked the commit.
    Returns the manifest's path."""
    from pyiceberg.manifest import write_manifest

    io = table.io
    manifest = next(m for m in snapshot.manifests(io) if m.added_snapshot_id == snapshot.snapshot_id)
    entries = manifest.fetch_manifest_entry(io, discard_deleted=False)
    staged = manifest.manifest_path + ".tmp"
    with write_manifest(table.format_version, table.spec(), table.schema(), io.new_output(staged),
                        snapshot.snapshot_id, "null") as writer:
        for entry in entries:
            # A DataFile's fields are positional: 1 is file_path, 5 file_size_in_bytes (record_count stays).
            entry.data_file[1] = "file://" + data_file
            entry.data_file[5] = os.path.getsize(data_file)
            writer.add_entry(entry)
    os.replace(staged.removeprefix("file://"), manifest.manifest_path.removeprefix("file://"))
    return manifest.manifest_path


def manifest_rewritten_after_commit(binary: str, data_dir: str, mint) -> None:
    """Parley checks a commit's files when it lands, but manifests are files in the owner's writable prefix: an
    outside test had ops-owner append through `/iceberg` (accepted), then rewrite that snapshot's manifest to name a
    file outside every table's location, and a restarted server (no manifest cached from the commit) served that
    file to the analyst under ops.shipments' policy. Files outside the table's location are now refused when a
    query plans its scan."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    secret = "SECRET-FROM-OUTSIDE-THE-TABLE"
    direct = SqlCatalog("parley", uri=f"sqlite:///{data_dir}/catalog.db", warehouse=f"file://{data_dir}/warehouse")
    analyst = mint("analyst")
    server, port, _ = serve_http(binary, data_dir)
    try:
        ops = load_catalog("as-ops-owner", type="rest", uri=f"http://127.0.0.1:{port}/iceberg",
                           token=mint("ops-owner"))
        table = ops.load_table("ops.shipments")
        rows = direct.load_table("ops.shipments").scan().to_arrow().num_rows
        sample = table.scan(limit=3).to_arrow()
        table.append(sample)
        landed = direct.load_table("ops.shipments")
        inside = landed.location().rstrip("/") + "/"
        paths = [t.file.file_path for t in landed.scan().plan_files()]
        paths += [m.manifest_path for m in landed.current_snapshot().manifests(landed.io)]
        check(landed.scan().to_arrow().num_rows == rows + 3 and all(p.startswith(inside) for p in paths),
              "ops-owner's append through Parley lands, every file inside the table's location")
        # The owner plants a file outside every table's location and points its snapshot's manifest at it.
        planted = os.path.join(data_dir, "planted", "rows.parquet")
        os.makedirs(os.path.dirname(planted))
        i = sample.schema.get_field_index("carrier")
        field = sample.schema.field(i)
        pq.write_table(sample.set_column(i, field, pa.array([secret] * sample.num_rows, field.type)), planted)
        point_manifest_at(landed, landed.current_snapshot(), planted)
    finally:
        server.terminate()
        server.stderr.read()
        server.wait()

    server, port, _ = serve_http(binary, data_dir)  # a fresh process: no manifest cached from the commit's check
    try:
        answers = asyncio.run(mcp_calls(f"http://127.0.0.1:{port}/mcp", analyst, [
            ("query", {"sql": "SELECT carrier, count(*) AS n FROM ops.shipments GROUP BY 1 ORDER BY n LIMIT 3"}),
            ("query", {"sql": "SELECT DISTINCT carrier FROM ops.shipments ORDER BY carrier"}),
        ]))
    finally:
        server.terminate()
        server.stderr.read()
        server.wait()
    texts = [" ".join(getattr(c, "text", "") for c in a.content) + json.dumps(a.structured_content) for a in answers]
    check(not any(secret in t for t in texts), "after a restart the planted file's values appear in no answer")
    check(all(a.is_error and "outside the table's location" in t for a, t in zip(answers, texts)),
          f"the analyst's queries are refused, naming files outside the table's location ({texts[0][:160]})")


def main() -> None:
    binary = os.path.abspath(sys.argv[1])
    data_dir = tempfile.mkdtemp(prefix="parley-iceberg-")
    subprocess.run([binary, "init", "--data-dir", data_dir], check=True, capture_output=True)

    def mint(principal: str) -> str:
        return subprocess.run(
            [binary, "token", "--data-dir", data_dir, "--principal", principal],
            capture_output=True, text=True, check=True,
        ).stdout.strip()

    analyst, marketing, owner = mint("analyst"), mint("marketing-agent"), mint("sales-owner")
    server, port, clock = serve_http(binary, data_dir)
    try:
        uri = f"http://127.0.0.1:{port}/iceberg"
        direct = SqlCatalog("parley", uri=f"sqlite:///{data_dir}/catalog.db", warehouse=f"file://{data_dir}/warehouse")

        cat = load_catalog("as-analyst", type="rest", uri=uri, token=analyst)
        check(sorted(cat.list_namespaces()) == [("ops",), ("sales",)], "analyst lists both namespaces")
        check(sorted(t[1] for t in cat.list_tables("sales")) == ["customers", "orders", "products"],
              "analyst lists the sales tables")
        orders = cat.load_table("sales.orders")
        mine = orders.scan(selected_fields=("order_id", "total_amount")).to_arrow()
        truth = direct.load_table("sales.orders").scan(selected_fields=("order_id", "total_amount")).to_arrow()
        check(mine.num_rows == truth.num_rows == 120_000
              and sum(mine.column("total_amount").to_pylist()) == sum(truth.column("total_amount").to_pylist()),
              f"pyiceberg reads sales.orders through Parley as it reads it directly ({mine.num_rows} rows)")
        check(orders.metadata.current_snapshot_id == direct.load_table("sales.orders").metadata.current_snapshot_id,
              "the same current snapshot")
        e = raised(lambda: cat.load_table("sales.customers"))
        check(isinstance(e, ForbiddenError), f"a table analyst may discover but not query in full is 403 ({e!r})")
        e = raised(lambda: cat.create_namespace("scratch"))
        check(e is not None, f"writes are refused ({type(e).__name__})")

        mk = load_catalog("as-marketing", type="rest", uri=uri, token=marketing)
        check(mk.list_namespaces() == [("sales",)], "marketing lists only the namespace it may discover")
        hidden = raised(lambda: mk.load_table("ops.shipments"))
        missing = raised(lambda: mk.load_table("ops.nonexistent"))
        check(isinstance(hidden, NoSuchTableError) and isinstance(missing, NoSuchTableError)
              and str(hidden).replace("shipments", "X") == str(missing).replace("nonexistent", "X"),
              f"a table marketing may not discover is exactly a missing one ({hidden})")
        hidden = raised(lambda: mk.list_tables("ops"))
        missing = raised(lambda: mk.list_tables("nothing"))
        check(isinstance(hidden, NoSuchNamespaceError) and isinstance(missing, NoSuchNamespaceError)
              and str(hidden).replace("ops", "X") == str(missing).replace("nothing", "X"),
              "a namespace with nothing marketing may discover is exactly a missing one")
        products = mk.load_table("sales.products").scan().to_arrow()
        check(products.num_rows == 500, "marketing reads sales.products, which it may query")

        # DuckDB's iceberg extension attaches Parley's endpoint with a principal's token.
        def duckdb_as(token: str):
            import glob

            import duckdb
            import duckdb_extension_avro
            import duckdb_extension_httpfs
            import duckdb_extension_iceberg

            con = duckdb.connect()
            for module, ext in [(duckdb_extension_httpfs, "httpfs"), (duckdb_extension_avro, "avro"),
                                (duckdb_extension_iceberg, "iceberg")]:
                root = os.path.dirname(module.__file__)
                con.execute(f"LOAD '{glob.glob(os.path.join(root, 'extensions', '*', f'{ext}.duckdb_extension'))[0]}'")
            con.execute(f"CREATE SECRET parley (TYPE ICEBERG, TOKEN '{token}')")
            con.execute(f"ATTACH '' AS parley (TYPE ICEBERG, ENDPOINT '{uri}', SECRET parley)")
            return con

        n, total = duckdb_as(analyst).execute("SELECT count(*), sum(total_amount) FROM parley.sales.orders").fetchone()
        check(n == truth.num_rows and float(total) == float(sum(truth.column("total_amount").to_pylist())),
              f"DuckDB attaches Parley's endpoint as analyst and reads sales.orders as pyiceberg does ({n} rows)")
        duck = duckdb_as(marketing)
        e = raised(lambda: duck.execute("SELECT count(*) FROM parley.ops.shipments").fetchall())
        check(e is not None and "does not exist" in str(e), f"DuckDB as marketing cannot see ops.shipments ({e})")
        check(duck.execute("SELECT count(*) FROM parley.sales.products").fetchone()[0] == 500,
              "DuckDB as marketing reads sales.products, which it may query")

        # Commits, checked against sales.orders' contract (it promises a stable schema).
        mcp_url = f"http://127.0.0.1:{port}/mcp"
        granted = asyncio.run(mcp_calls(mcp_url, analyst, [("request_access", {
            "tables": ["sales.orders"], "columns": ["order_id", "status", "total_amount"],
            "purpose": "revenue_reporting"})]))[0].structured_content
        grant_id = granted.get("grant_id")
        check(granted.get("status") == "granted" and grant_id,
              f"analyst holds a live grant on sales.orders ({json.dumps(granted)[:160]})")
        fields = lambda: [f.name for f in direct.load_table("sales.orders").schema().fields]  # noqa: E731
        own = load_catalog("as-owner", type="rest", uri=uri, token=owner)
        with own.load_table("sales.orders").update_schema() as update:
            update.add_column("gift_note", StringType())
        check("gift_note" in fields(), "the owner adds an optional column: it lands, as pyiceberg reads it directly")
        with own.load_table("sales.orders").update_spec() as spec:
            spec.add_identity("currency")
        check([f.name for f in direct.load_table("sales.orders").spec().fields][-1] == "currency",
              "a partition change is compatible: it lands")
        before = fields()
        e = raised(lambda: own.load_table("sales.orders").update_schema().delete_column("status").commit())
        message = str(e)
        check(isinstance(e, CommitFailedException) and "schemaStability" in message and "status" in message
              and "analyst" in message and grant_id in message,
              f"dropping a contracted column consumers use is refused (409) with clause, column, consumer and grant: "
              f"{message}")
        check(fields() == before, "a refused commit changes nothing")
        e = raised(lambda: cat.load_table("sales.orders").update_schema().add_column("x", StringType()).commit())
        check(isinstance(e, ForbiddenError), f"an analyst cannot commit ({type(e).__name__})")
        e = raised(lambda: mk.load_table("sales.products").update_schema().add_column("x", StringType()).commit())
        check(isinstance(e, ForbiddenError), f"marketing cannot commit to a table it may read ({type(e).__name__})")
        with own.load_table("sales.orders").update_schema() as update:
            update.delete_column("gift_note")
        check("gift_note" not in fields(), "dropping a column the contract does not promise lands")
        # Data through Parley: an append lands; a snapshot that points at another table's files (or climbs out of
        # the table's location with `..`) is refused, so no owner can serve another table's data under its grants.
        products = direct.load_table("sales.products").scan().to_arrow().num_rows
        t = own.load_table("sales.products")
        t.append(t.scan(limit=10).to_arrow())
        check(direct.load_table("sales.products").scan().to_arrow().num_rows == products + 10,
              "an owner's append through Parley lands (its files are the table's own)")
        before_rows = direct.load_table("sales.orders").scan().to_arrow().num_rows
        orders_meta = direct.load_table("sales.orders").metadata
        foreign = direct.load_table("sales.customers").metadata.current_snapshot().manifest_list
        climbing = orders_meta.location.rstrip("/") + "/../customers/" + foreign.split("/customers/", 1)[1]
        for manifest_list in (foreign, climbing):
            body = json.dumps({"requirements": [], "updates": [
                {"action": "add-snapshot", "snapshot": {
                    "snapshot-id": 4242424242, "parent-snapshot-id": orders_meta.current_snapshot_id,
                    "sequence-number": orders_meta.last_sequence_number + 1,
                    "timestamp-ms": orders_meta.last_updated_ms + 1, "manifest-list": manifest_list,
                    "summary": {"operation": "append"}, "schema-id": orders_meta.current_schema_id}},
                {"action": "set-snapshot-ref", "ref-name": "main", "type": "branch", "snapshot-id": 4242424242},
            ]}).encode()
            request = urllib.request.Request(f"{uri}/v1/namespaces/sales/tables/orders", data=body, method="POST",
                                             headers={"Authorization": f"Bearer {owner}",
                                                      "Content-Type": "application/json"})
            try:
                urllib.request.urlopen(request, timeout=30)
                status, answer = 200, ""
            except urllib.error.HTTPError as err:
                status, answer = err.code, err.read().decode()
            check(status == 400 and "outside the table's location" in answer,
                  f"a snapshot of another table's files is refused ({status}: {answer[:140]})")
        check(direct.load_table("sales.orders").scan().to_arrow().num_rows == before_rows,
              "and nothing changed")
        e = raised(lambda: own.load_table("sales.orders").transaction().set_properties(
            {"write.data.path": foreign.split("/metadata/")[0] + "/data"}).commit_transaction())
        check(e is not None and "may not be changed through Parley" in str(e),
              f"nor can an owner move where the table's files may lie ({str(e)[:120]})")

        # A new contract version without `status`: breaking, so it needs a new major version and the notice period.
        import time

        import yaml

        with open(os.path.join(data_dir, "contracts", "sales", "orders.yaml")) as f:
            v2 = yaml.safe_load(f)
        v2["version"] = "2.0.0"
        for obj in v2["schema"]:
            obj["properties"] = [p for p in obj["properties"] if p["name"] != "status"]
        v2_path = os.path.join(data_dir, "orders-v2.yaml")
        with open(v2_path, "w") as f:
            yaml.safe_dump(v2, f, sort_keys=False)
        publish = lambda *extra: subprocess.run(  # noqa: E731
            [binary, "contract", "publish", v2_path, "--data-dir", data_dir, *extra],
            capture_output=True, text=True, env={**os.environ, "PARLEY_CLOCK_FILE": clock})
        r = publish()
        check(r.returncode == 1 and "notice period (30 days)" in r.stderr and "--effective" in r.stderr,
              f"a breaking version without a date is refused, saying when it may take effect ({r.stderr.strip()[:160]})")
        v1 = dict(v2, version="1.9.0")
        with open(v2_path + ".minor", "w") as f:
            yaml.safe_dump(v1, f, sort_keys=False)
        r = subprocess.run([binary, "contract", "publish", v2_path + ".minor", "--data-dir", data_dir],
                           capture_output=True, text=True)
        check(r.returncode == 1 and "new major version" in r.stderr, "a breaking version needs a new major version")
        from datetime import datetime, timedelta, timezone

        effective = (datetime.now(timezone.utc) + timedelta(days=31)).strftime("%Y-%m-%d")
        r, updates = asyncio.run(watch(mcp_url, analyst, "contract://sales/orders",
                                       lambda: publish("--effective", effective)))
        check(r.returncode == 0 and "1 grant holder(s) told" in r.stdout
              and f"made under the old version: {grant_id} (analyst)" in r.stdout,
              f"v2 is published, its grant holders told, the grants under v1 listed: {r.stdout.strip()}")
        check(updates == ["contract://sales/orders"],
              f"a session subscribed to the contract resource hears that it changed ({updates})")
        for _ in range(50):  # the server reloads contract files within seconds
            c = asyncio.run(mcp_calls(mcp_url, analyst, [("get_contract", {"table": "sales.orders"})]))[0]
            if any(v["state"] == "pending" for v in c.structured_content["versions"]):
                break
            time.sleep(0.2)
        versions = {v["version"]: v["state"] for v in c.structured_content["versions"]}
        check(versions == {"1.2.0": "in_force", "2.0.0": "pending"} and "Pending: v2.0.0" in c.content[0].text,
              f"get_contract shows the version in force and the pending one ({versions})")
        e = raised(lambda: own.load_table("sales.orders").update_schema().delete_column("status").commit())
        check(isinstance(e, CommitFailedException) and "v1.2.0" in str(e),
              "until v2's date the old promise holds: the drop is still refused")
        with open(clock, "w") as f:
            f.write(str(32 * 86400))
        c = asyncio.run(mcp_calls(mcp_url, analyst, [("get_contract", {"table": "sales.orders"})]))[0]
        check(c.structured_content["version"] == "2.0.0", "after its date v2 is in force")
        with own.load_table("sales.orders").update_schema() as update:
            update.delete_column("status")
        check("status" not in fields(), "after v2's date the drop lands (pyiceberg reads the table without it)")
        with open(clock, "w") as f:
            f.write("0")

        # A change behind Parley's back (pyiceberg straight to the SQL catalog) drops a column contract v1 (in force
        # again with the clock back) promises: seen as drift on the next load, and the grant holder is told.
        with direct.load_table("sales.orders").update_schema() as update:
            update.delete_column("channel")
        for _ in range(50):  # seen once the table's cached metadata is older than catalog_cache_ttl_ms (2 s)
            d = asyncio.run(mcp_calls(mcp_url, analyst, [("describe_table", {"table": "sales.orders"})]))[0]
            drift = {x["column"] for x in d.structured_content["contract_drift"]}
            if "channel" in drift:
                break
            time.sleep(0.2)
        check({"channel", "status"} <= drift, f"describe_table flags the drift ({sorted(drift)})")
        for _ in range(50):  # told on a task of its own
            notices = asyncio.run(mcp_calls(mcp_url, analyst, [("my_notices", {})]))[0].structured_content["notices"]
            if any("changed outside Parley" in n.get("reason", "") for n in notices):
                break
            time.sleep(0.2)
        check(any("changed outside Parley" in n.get("reason", "") and "channel" in n["reason"] for n in notices),
              "the grant holder is told of the drift")

        notices = asyncio.run(mcp_calls(mcp_url, analyst, [("my_notices", {})]))[0].structured_content["notices"]
        changes = [n for n in notices if n.get("kind") == "contract_change"]
        check(any("gift_note: added" in n["reason"] and "compatible" in n["reason"] for n in changes),
              f"the grant holder is told of the landed changes ({[n['reason'][:80] for n in changes]})")
        check(any("currency: now partitions the table (identity)" in n["reason"] for n in changes),
              "the grant holder is told of the partition change")
        check(any("contract v2.0.0 of sales.orders takes effect" in n["reason"] for n in changes),
              "the grant holder is told of the new contract version and its date")

        request = urllib.request.Request(f"{uri}/v1/config")
        try:
            urllib.request.urlopen(request, timeout=5)
            status = 200
        except urllib.error.HTTPError as err:
            status = err.code
        check(status == 401, "no token: 401")
    finally:
        server.terminate()
        log = server.stderr.read()
        server.wait()
    check(analyst not in log and marketing not in log, "tokens never reach the log")

    with open(os.path.join(data_dir, "audit", "audit.jsonl")) as f:
        records = [json.loads(line) for line in f]
    loads = [r for r in records if r["tool"] == "iceberg:loadTable"]
    decisions = {(r["principal"], r["resource"], r["decision"]) for r in loads}
    check(("analyst", "sales.orders", "allowed") in decisions
          and ("analyst", "sales.customers", "denied") in decisions
          and ("marketing-agent", "ops.shipments", "denied") in decisions,
          f"every load is audited with its decision ({len(loads)} records)")
    commits = [r for r in records if r["tool"] == "iceberg:updateTable"]
    check([r["decision"] for r in commits if r["principal"] == "sales-owner"]
          == ["allowed", "allowed", "denied", "allowed", "allowed", "error", "error", "error", "denied", "allowed"]
          and "schemaStability" in commits[2]["reason"],
          f"every commit is audited with its decision and the contract clause ({len(commits)} records)")
    manifest_rewritten_after_commit(binary, data_dir, mint)
    print("iceberg endpoint: all checks passed")


if __name__ == "__main__":
    main()
