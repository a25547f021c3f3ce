"""Quality and freshness computed against the contract, checked against pyiceberg's own reading of the table.

On the demo lakehouse, `sales.orders`' contract gets ODCS quality rules of every kind Parley runs (rowCount,
nullValues, missingValues, invalidValues with valid values and with a pattern, duplicateValues, a custom SQL rule,
a text rule) and a freshness SLA; the policy gets a forbid on one rule's breach. Served over HTTP with dev-issuer
tokens:

- the owner's `describe_table` shows each rule's measured value, equal to what pyarrow computes from pyiceberg's
  direct scan of the SQL catalog, and the verdicts ODCS's operators give; the analyst sees the same verdicts and no
  measured value; `get_contract` shows the same report;
- freshness is judged against the server's clock: fresh now, stale once the clock is moved past the promise (no
  sleeps, no new snapshot), and the grant holder and the owner are told (`my_notices`);
- the owner appends a row with a negative amount through Parley's `/iceberg`: the new snapshot is evaluated, the SQL
  rule fails, the grant holder and the owner are told, and the policy's forbid on that breach refuses the analyst's
  query, which it allowed before;
- a rule that would read another table is reported as an error, never as passing;
- a restart does not tell a breach told before it again.

Usage: python tests/quality.py path/to/parley
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pyiceberg.catalog import load_catalog
from pyiceberg.catalog.sql import SqlCatalog

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iceberg_endpoint import check, mcp_calls, serve_http  # noqa: E402


def main() -> None:
    binary = os.path.abspath(sys.argv[1])
    data_dir = tempfile.mkdtemp(prefix="parley-quality-")
    subprocess.run([binary, "init", "--data-dir", data_dir], check=True, capture_output=True)

    contract_path = os.path.join(data_dir, "contracts", "sales", "orders.yaml")
    with open(contract_path) as f:
        contract = yaml.safe_load(f)
    orders = contract["schema"][0]
    orders["quality"] = [
        {"metric": "rowCount", "mustBeGreaterThan": 100000},
        {"metric": "rowCount", "mustBeLessThan": 1000, "name": "tiny_table"},
        {"metric": "nullValues", "arguments": {"properties": ["is_gift"]}, "name": "gift_nulls",
         "mustBeLessThan": 1000000},
        {"metric": "nullValues", "arguments": {"properties": ["is_gift"]}, "unit": "percent",
         "mustBeLessOrEqualTo": 100, "name": "gift_null_share"},
        {"metric": "duplicateValues", "arguments": {"properties": ["customer_id"]}, "name": "one_order_per_customer",
         "mustBe": 0},
        {"metric": "duplicateValues", "arguments": {"properties": ["order_id"]}, "name": "unique_orders", "mustBe": 0},
        {"metric": "invalidValues", "arguments": {"properties": ["status"],
                                                  "validValues": ["placed", "shipped", "delivered", "returned"]},
         "name": "status_without_cancelled", "mustBe": 0},
        {"metric": "missingValues", "arguments": {"properties": ["currency"], "missingValues": [None, "", "N/A"]},
         "name": "currency_present", "mustBe": 0},
        {"type": "sql", "name": "no_negative_totals",
         "query": "SELECT count(*) FROM ${table} WHERE total_amount < 0", "mustBe": 0},
        {"type": "sql", "name": "reads_elsewhere", "query": "SELECT count(*) FROM sales.customers", "mustBe": 0},
        {"type": "text", "name": "reviewed", "description": "Reviewed by finance each quarter."},
        # Rules are SQL the server runs: they get an agent's read-only checks, whoever wrote the contract.
        {"type": "sql", "name": "drops", "query": "DROP TABLE ${table}", "mustBe": 0},
        {"type": "sql", "name": "two_statements", "query": "SELECT 0; DROP TABLE ${table}", "mustBe": 0},
        {"type": "sql", "name": "reads_a_file", "query": "SELECT count(*) FROM '/etc/passwd'", "mustBe": 0},
        {"type": "sql", "name": "reads_the_audit_log", "query": "SELECT count(*) FROM parley.audit_log", "mustBe": 0},
    ]
    for p in orders["properties"]:
        if p["name"] == "channel":
            p["quality"] = [{"metric": "invalidValues", "arguments": {"pattern": "^(web|store|partner)$"},
                             "name": "channel_known", "mustBe": 0}]
    for s in contract["slaProperties"]:
        if s["property"] == "freshness":
            s.update(value=10, unit="d")
    with open(contract_path, "w") as f:
        yaml.safe_dump(contract, f, sort_keys=False)
    r = subprocess.run([binary, "contract", "validate", contract_path], capture_output=True, text=True)
    check(r.returncode == 0, f"the contract with every kind of rule validates against ODCS ({r.stdout.strip()})")
    with open(os.path.join(data_dir, "policy", "policy.cedar"), "a") as f:
        f.write('\n@id("no-queries-on-negative-totals")\nforbid (principal, action == Parley::Action::"query", '
                'resource is Parley::Table)\nwhen { resource.quality_breaches.contains("no_negative_totals") }\n'
                'unless { principal in resource.owner };\n')

    def mint(principal: str) -> str:
        return subprocess.run([binary, "token", "--data-dir", data_dir, "--principal", principal],
                              capture_output=True, text=True, check=True).stdout.strip()

    analyst, owner = mint("analyst"), mint("sales-owner")
    server, port, clock = serve_http(binary, data_dir)
    try:
        mcp = f"http://127.0.0.1:{port}/mcp"
        call = lambda token, tool, args: asyncio.run(mcp_calls(mcp, token, [(tool, args)]))[0]  # noqa: E731

        direct = SqlCatalog("parley", uri=f"sqlite:///{data_dir}/catalog.db", warehouse=f"file://{data_dir}/warehouse")

        def truth() -> dict:
            t = direct.load_table("sales.orders").scan().to_arrow()
            n = t.num_rows
            nulls = t.column("is_gift").null_count

            def dups(col: str) -> int:
                values = t.column(col).drop_null()
                return len(values) - len(pc.unique(values))

            status = t.column("status")
            valid = pa.array(["placed", "shipped", "delivered", "returned"])
            return {
                "rows": n,
                "gift_nulls": nulls,
                "gift_null_share": 100.0 * nulls / n,
                "one_order_per_customer": dups("customer_id"),
                "unique_orders": dups("order_id"),
                "status_without_cancelled": int(pc.sum(pc.invert(pc.is_in(status, value_set=valid))).as_py() or 0),
                "currency_present": t.column("currency").null_count
                + int(pc.sum(pc.is_in(t.column("currency"), value_set=pa.array(["", "N/A"]))).as_py() or 0),
                "no_negative_totals": int(pc.sum(pc.less(t.column("total_amount"), Decimal("0"))).as_py() or 0),
                "channel_known": int(pc.sum(pc.invert(pc.match_substring_regex(
                    t.column("channel"), "^(web|store|partner)$"))).as_py() or 0),
                "newest": pc.max(t.column("created_at")).as_py(),
            }

        granted = call(analyst, "request_access", {"tables": ["sales.orders"], "columns": ["order_id", "status"],
                                                  "purpose": "revenue_reporting"}).structured_content
        check(granted.get("status") == "granted", "analyst holds a live grant on sales.orders")

        want = truth()
        d = call(owner, "describe_table", {"table": "sales.orders", "full": True})
        q = d.structured_content["quality"]
        checks = {c["name"]: c for c in q["report"]["checks"]}
        measured = {name: checks[name].get("measured") for name in checks}
        print(json.dumps(measured))
        check(measured["rowCount must be > 100000"] == want["rows"] == measured["tiny_table"],
              f"rowCount measured as pyiceberg counts ({want['rows']})")
        for name in ["gift_nulls", "one_order_per_customer", "unique_orders", "status_without_cancelled",
                     "currency_present", "no_negative_totals", "channel_known"]:
            check(measured[name] == want[name], f"{name}: {measured[name]} as pyarrow computes ({want[name]})")
        check(abs(measured["gift_null_share"] - want["gift_null_share"]) < 1e-9,
              f"a percent metric is measured against the row count ({measured['gift_null_share']:.3f} %)")
        verdicts = {name: c["status"] for name, c in checks.items()}
        expected = {
            "rowCount must be > 100000": "pass", "tiny_table": "fail", "gift_nulls": "pass", "gift_null_share": "pass",
            "one_order_per_customer": "fail" if want["one_order_per_customer"] else "pass",
            "unique_orders": "pass" if want["unique_orders"] == 0 else "fail",
            "status_without_cancelled": "fail" if want["status_without_cancelled"] else "pass",
            "currency_present": "pass" if want["currency_present"] == 0 else "fail",
            "no_negative_totals": "pass" if want["no_negative_totals"] == 0 else "fail",
            "reads_elsewhere": "error", "reviewed": "not_run", "channel_known": "pass",
            "drops": "error", "two_statements": "error", "reads_a_file": "error", "reads_the_audit_log": "error",
        }
        check(verdicts == expected, f"the verdicts are ODCS's operators on those values ({verdicts})")
        for name in ["drops", "two_statements", "reads_a_file", "reads_the_audit_log"]:
            print(f"   {name}: {checks[name]['detail'][:100]}")
        check(direct.load_table("sales.orders") is not None, "and the table is still there")
        check("only its own table" in checks["reads_elsewhere"]["detail"],
              f"a rule reading another table is an error, not a pass ({checks['reads_elsewhere']['detail']})")
        fresh = q["report"]["freshness"]
        check(fresh["latest"].startswith(want["newest"].strftime("%Y-%m-%dT%H:%M:%S")) and "freshness" not in q["breaches"],
              f"freshness: the newest created_at as pyiceberg reads it ({fresh['latest']}), within 10 d: fresh")
        check(q["state"] == "breach" and set(q["breaches"]) == {n for n, v in expected.items() if v == "fail"},
              f"the table is in breach of exactly the failing rules ({q['breaches']})")
        check("quality: breach" in d.content[0].text and "tiny_table" not in d.content[0].text.split("quality:")[0],
              "describe_table's text says so")

        a = call(analyst, "describe_table", {"table": "sales.orders", "full": True}).structured_content["quality"]
        check({c["name"]: c["status"] for c in a["report"]["checks"]} == verdicts
              and all("measured" not in c for c in a["report"]["checks"]) and "latest" not in a["report"]["freshness"],
              "the analyst sees the same verdicts and no measured value")
        check({c["name"]: c.get("detail") for c in a["report"]["checks"]}["reads_elsewhere"]
              == "could not be evaluated; the table's owners see why",
              "nor why a rule failed to run (an engine error may quote the data)")
        c = call(analyst, "get_contract", {"table": "sales.orders"}).structured_content["quality"]
        check(c["state"] == "breach" and c["breaches"] == a["breaches"], "get_contract shows the same quality")

        def notices(token: str, kind: str, needle: str) -> list:
            for _ in range(50):  # told on a task of its own
                found = [n for n in call(token, "my_notices", {}).structured_content["notices"]
                         if n.get("kind") == kind and needle in n.get("reason", "")]
                if found:
                    return found
                time.sleep(0.2)
            return []

        check(notices(analyst, "quality", "tiny_table") and notices(owner, "quality", "tiny_table"),
              "the grant holder and the owner are told of the breach")

        # Freshness goes stale with time alone: the clock moves past the 10-day promise.
        age = (time.time() - want["newest"].timestamp())
        with open(clock, "w") as f:
            f.write(str(10 * 86400 - age + 3600))
        a = call(analyst, "describe_table", {"table": "sales.orders", "full": True}).structured_content["quality"]
        check("freshness" in a["breaches"], f"an hour past the promise the table is stale ({a['breaches']})")
        check(notices(owner, "quality", "freshness"), "and the owner is told")

        n = call(analyst, "query", {"sql": "SELECT count(*) AS n FROM sales.orders"})
        check(not n.is_error and n.structured_content["rows"][0][0] == want["rows"],
              "the analyst queries sales.orders while no negative total breaches the contract")
        n = call(mint("marketing-agent"), "query",
                 {"sql": "SELECT o.channel, count(*) AS n FROM sales.orders o GROUP BY 1"})
        check(not n.is_error, "marketing queries sales.orders, naming the channel column")

        # The owner appends a negative amount through Parley: the new snapshot breaks the SQL rule.
        own = load_catalog("as-owner", type="rest", uri=f"http://127.0.0.1:{port}/iceberg", token=owner)
        t = own.load_table("sales.orders")
        row = t.scan(limit=1).to_arrow()
        amount = row.schema.field("total_amount")
        row = row.set_column(row.schema.get_field_index("total_amount"), amount,
                             pa.array([Decimal("-5.00")], type=amount.type))
        t.append(row)
        want = truth()
        check(want["no_negative_totals"] == 1, "pyiceberg reads the appended negative amount")
        q = call(owner, "describe_table", {"table": "sales.orders", "full": True}).structured_content["quality"]
        checks = {c["name"]: c for c in q["report"]["checks"]}
        check(q["report"]["snapshot_id"] == str(direct.load_table("sales.orders").metadata.current_snapshot_id)
              and checks["no_negative_totals"]["status"] == "fail" and checks["no_negative_totals"]["measured"] == 1
              and checks["rowCount must be > 100000"]["measured"] == want["rows"],
              f"the new snapshot is evaluated: no_negative_totals fails ({checks['no_negative_totals']})")
        check(notices(analyst, "quality", "no_negative_totals"), "the grant holder is told")
        n = call(analyst, "query", {"sql": "SELECT count(*) AS n FROM sales.orders"})
        text = n.content[0].text
        check(n.is_error and "no-queries-on-negative-totals" in text,
              f"the policy's forbid on that breach refuses the analyst's query ({text[:160]})")
        check("quality checks currently fail" in text and "no_negative_totals" in text,
              f"the refusal names the failing quality check as the way on ({text[-260:]})")

        # A new contract version published through MCP by the owner: the rule the table breaks is retired.
        contract["version"] = "1.3.0"
        orders["quality"] = [r for r in orders["quality"] if r.get("name") != "tiny_table"]
        text = yaml.safe_dump(contract, sort_keys=False)
        e = call(analyst, "publish_contract", {"contract": text})
        check(e.is_error and "owners" in e.content[0].text, f"a non-owner cannot publish ({e.content[0].text[:100]})")
        p = call(owner, "publish_contract", {"contract": text})
        check(not p.is_error and p.structured_content["version"] == "1.3.0"
              and p.structured_content["replaces"] == "1.2.0" and len(p.structured_content["told"]) == 1,
              f"the owner publishes v1.3.0 through MCP; the grant holder is told ({p.content[0].text[:160]})")
        c = call(analyst, "get_contract", {"table": "sales.orders"}).structured_content
        check(c["version"] == "1.3.0" and c["quality"]["report"]["contract_version"] == "1.3.0"
              and "tiny_table" not in c["quality"]["breaches"] and "no_negative_totals" in c["quality"]["breaches"],
              f"it is in force at once, and the snapshot is judged by its rules ({c['quality']['breaches']})")
        check(notices(analyst, "contract_change", "contract v1.3.0"), "the grant holder's notices say so")
        breaking = dict(contract, version="1.4.0")
        breaking["schema"] = [dict(orders, properties=[x for x in orders["properties"] if x["name"] != "status"])]
        p = call(owner, "publish_contract", {"contract": yaml.safe_dump(breaking, sort_keys=False)})
        check(p.is_error and "new major version" in p.content[0].text,
              f"a breaking version without a new major version is refused ({p.content[0].text[:120]})")

        # Consumers per column, from grants and from the columns queries named (the audit log): dropping `channel`
        # (marketing's query names it) is refused naming marketing; dropping `is_gift`, which no grant covers and
        # no query named (the analyst's count(*) names none), lands though the contract promises it.
        from pyiceberg.exceptions import CommitFailedException

        try:
            own.load_table("sales.orders").update_schema().delete_column("channel").commit()
            refused = None
        except CommitFailedException as err:
            refused = str(err)
        check(refused is not None and "marketing-agent" in refused and "analyst" not in refused,
              f"dropping a column one query named is refused naming that reader only ({refused})")
        with own.load_table("sales.orders").update_schema() as update:
            update.delete_column("is_gift")
        check("is_gift" not in [f.name for f in direct.load_table("sales.orders").schema().fields],
              "dropping a contracted column no consumer reads lands")

        # A restart does not tell a breach again: the owner's notices hold each quality notice once.
        def told() -> list:
            return [n["reason"] for n in call(owner, "my_notices", {}).structured_content["notices"]
                    if n.get("kind") == "quality"]

        call(owner, "describe_table", {"table": "sales.orders", "full": True})
        time.sleep(2)  # told on a task of its own
        before = told()
        check(before and len(before) == len(set(before)), f"each breach told once ({len(before)} notices)")
        with open(clock) as f:
            offset = f.read()
        server.terminate()
        server.stderr.read()
        server.wait()
        server, port, clock = serve_http(binary, data_dir)
        with open(clock, "w") as f:
            f.write(offset)
        mcp = f"http://127.0.0.1:{port}/mcp"
        call(owner, "describe_table", {"table": "sales.orders", "full": True})
        call(analyst, "describe_table", {"table": "sales.orders"})
        time.sleep(2)
        after = told()
        check(sorted(after) == sorted(before), f"after a restart no breach is told again ({len(after)} notices)")
    finally:
        server.terminate()
        server.stderr.read()
        server.wait()
    print("quality: all checks passed")


if __name__ == "__main__":
    main()
