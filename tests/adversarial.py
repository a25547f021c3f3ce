"""Adversarial suite (issue 11): attacks Parley through the official Python MCP SDK over stdio.

Every attack is one tool call whose answer is checked against ground truth read independently of Parley,
with pyiceberg's SqlCatalog on the same data dir (as tests/interop.py does), or against the audit log file
itself. The classes of attack:

  1. the row-filter security barrier of a grant (failing predicates and yes/no oracles on excluded rows);
  2. column masks and columns left out of a grant;
  3. time travel, metadata tables, file reads and every statement that is not one read-only query;
  4. the demo policy (marketing-agent and personal data; forbids win over grants);
  5. discovery non-enumeration (an undiscoverable table reads exactly like a nonexistent one);
  6. the `parley.audit_log` table (each caller sees only records of tables they own);
  7. bad input that must not kill, hang or wedge the server;
  8. quotas, expiry, revocation and grants used by someone else (and masks an approver may not pick);
  9. memory: values built by expressions, replies of huge cells, quadratic functions, against a server with a small
     pool;
 10. a grant's row quota under failing and concurrent queries;
 11. HTTP: session floods, trickled headers, requests without a valid token, other origins, bad params;
 12. `publish_contract`: who may publish, which versions and names it writes, notice periods, ownership;
 13. offers waiting for the person (an acknowledgement, on protocol 2026-07-28 or through `elicitation/create`) or
     the agent (an automatic counter-offer) taken up after the owner changed the contract; a question never
     answered, cancelled or failed by the client; declining an acknowledgement offer; refused `prompts/get` audited.

Classes 9 to 13 each start servers of their own (stdio, or `parley serve --http` on a free loopback port) on the same
data dir, and stop them when done. Class 13 speaks JSON-RPC over stdio itself (per-request `_meta`, retries with
`requestState`, the server's own requests, `notifications/cancelled`), reads state.db for the requests and grants
it made, and edits sales.customers' contract file, restoring it before it ends.

Usage: python tests/adversarial.py path/to/parley

ADVERSARIAL_ONLY=13-offers,10-quota (class keys, comma-separated) runs only those classes (classes 1 to 8 share
sessions and a grant: naming any of them runs all eight); the table-state check at the end always runs.

It creates its own data dir with `parley init`, prints each failure with its detail, a per-class summary and a
last line `N passed, M failed`, and exits non-zero when anything failed.
"""

import asyncio
import contextlib
import datetime
import decimal
import hashlib
import http.client
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from pyiceberg.catalog.sql import SqlCatalog

TABLES = ["sales.customers", "sales.orders", "sales.products", "ops.shipments"]
SALES_TABLES = {"sales.customers", "sales.orders", "sales.products"}
OPS_TABLES = {"ops.shipments"}
GRANTED_COLUMNS = ["customer_id", "email", "country", "segment", "lifetime_value"]
PII_COLUMNS = ["full_name", "email", "phone", "birth_date"]
# A call that has not answered after this long counts as a hang.
CALL_TIMEOUT = 60.0

CLASSES = {
    "1-barrier": "row-filter security barrier",
    "2-columns": "column masks and dropped columns",
    "3-statements": "time travel, metadata tables, files, non-read statements",
    "4-policy": "policy: marketing-agent and personal data",
    "5-discovery": "discovery non-enumeration",
    "6-audit": "audit log visibility",
    "7-bad-input": "bad input must not kill the server",
    "8-grants": "quotas, expiry, revocation, stolen grants",
    "9-memory": "memory within the pool plus a stated constant",
    "10-quota": "a grant's row quota under failing and concurrent queries",
    "11-http": "HTTP sessions, slow clients, tokens, origins, params",
    "12-publish": "publish_contract: who may, what it may write",
    "13-offers": "offers after contract edits; unanswered questions; prompts",
}

# Class 9 runs its own server with this query memory pool, and its peak resident memory may exceed what the server
# held before the attacks by at most the pool plus this constant (README, "Security model").
MEMORY_POOL = 256 << 20
MEMORY_CONSTANT = 512 << 20

HEX64 = re.compile(r"^[0-9a-f]{64}$")
DECIMAL_TEXT = re.compile(r"^-?\d+\.\d+$")
# Every demo e-mail ends with the customer id just before the '@' ("anna.schmidt123@example.com"); the
# contract's support address ("sales-data@example.com") does not, so this never matches documentation.
EMAIL_IN_TEXT = re.compile(r"[^\s'\"@,;:()\[\]{}<>]{0,64}\d@example\.(?:com|org|net)")
PHONE_IN_TEXT = re.compile(r"\+\d{8,}")
DECIMAL2_IN_TEXT = re.compile(r"(?<![\d.])\d+\.\d{2}(?!\d)")
DATE_IN_TEXT = re.compile(r"(?<!\d)\d{4}-\d{2}-\d{2}(?!\d)")
# What DataFusion's cast error shows of a row: "Cannot cast string '123consumer' to ...".
CAST_ROW_IN_TEXT = re.compile(r"(?<!\d)(\d+)(consumer|smb|enterprise)")


def catalog_of(data_dir: str) -> SqlCatalog:
    """A fresh pyiceberg catalog on Parley's data dir (a new instance, so nothing is cached between reads)."""
    return SqlCatalog(
        "parley",
        uri=f"sqlite:///{data_dir}/catalog.db",
        warehouse=f"file://{data_dir}/warehouse",
    )


def table_state(data_dir: str) -> dict:
    """What must never change under read-only SQL: per table its metadata file, snapshots and row count, plus
    the namespaces and table lists of the catalog."""
    catalog = catalog_of(data_dir)
    state: dict[str, Any] = {
        "namespaces": sorted(tuple(n) for n in catalog.list_namespaces()),
        "tables": sorted(tuple(t) for ns in catalog.list_namespaces() for t in catalog.list_tables(ns)),
    }
    for name in TABLES:
        table = catalog.load_table(name)
        first_column = table.schema().fields[0].name
        state[name] = {
            "metadata": table.metadata_location,
            "snapshots": sorted(s.snapshot_id for s in table.snapshots()),
            "current": table.current_snapshot().snapshot_id,
            "rows": table.scan(selected_fields=(first_column,)).to_arrow().num_rows,
        }
    return state


def canonical(value: Any) -> Any:
    """A result cell or expected value in one comparable form: decimals (strings in Parley's JSON) as
    Decimal."""
    if isinstance(value, str) and DECIMAL_TEXT.match(value):
        return decimal.Decimal(value)
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


class GroundTruth:
    """The demo lakehouse as pyiceberg reads it, and the answers a grant on German customers must give."""

    def __init__(self, data_dir: str) -> None:
        catalog = catalog_of(data_dir)
        customers = catalog.load_table("sales.customers")
        rows = customers.scan().to_arrow().to_pylist()
        self.customers_snapshot = customers.current_snapshot().snapshot_id
        self.customers = {r["customer_id"]: r for r in rows}
        self.n_customers = len(rows)
        # A data file of sales.customers: reading it directly would bypass every grant.
        self.customer_files = [t.file.file_path for t in customers.scan().plan_files()]
        self.de = sorted((r for r in rows if r["country"] == "DE"), key=lambda r: r["customer_id"])
        self.de_ids = {r["customer_id"] for r in self.de}
        self.non_de = sorted((r for r in rows if r["country"] != "DE"), key=lambda r: r["customer_id"])
        self.non_de_ids = {r["customer_id"] for r in self.non_de}
        self.n_de = len(self.de)
        self.de_ltv_sum = sum((r["lifetime_value"] for r in self.de), decimal.Decimal(0))
        self.de_segments = Counter(r["segment"] for r in self.de)
        self.countries = Counter(r["country"] for r in rows)

        # Values that exist only outside the grant's rows: none of them may ever reach the analyst.
        de_ltv = {str(r["lifetime_value"]) for r in self.de}
        self.non_de_only_ltv = {str(r["lifetime_value"]) for r in self.non_de} - de_ltv
        self.non_de_only_segments = {r["segment"] for r in self.non_de} - set(self.de_segments)
        # Personal data nobody but the owner may read in clear.
        self.emails = {r["email"] for r in rows}
        self.names = {r["full_name"] for r in rows}
        self.phones = {r["phone"] for r in rows if r["phone"]}
        self.birth_dates = {str(r["birth_date"]) for r in rows if r["birth_date"]}

        orders = catalog.load_table("sales.orders").scan(
            selected_fields=("order_id", "customer_id", "total_amount")
        )
        orders = orders.to_arrow().to_pydict()
        self.n_orders = len(orders["order_id"])
        self.order_ids = Counter(orders["order_id"])
        de_amounts = [a for c, a in zip(orders["customer_id"], orders["total_amount"]) if c in self.de_ids]
        self.de_orders = len(de_amounts)
        self.de_orders_sum = sum(de_amounts, decimal.Decimal(0))
        self.customers_with_orders = set(orders["customer_id"])
        shipments = catalog.load_table("ops.shipments").scan(selected_fields=("order_id",)).to_arrow()
        shipment_orders = shipments.column("order_id").to_pylist()
        self.n_shipments = len(shipment_orders)
        self.shipments_join_orders = sum(self.order_ids[o] for o in shipment_orders)
        self.n_products = catalog.load_table("sales.products").scan().to_arrow().num_rows

    def ltv(self, customer_id: int) -> decimal.Decimal:
        return self.customers[customer_id]["lifetime_value"]

    def leaks(self, text: str, sent: str, governed: bool) -> list[str]:
        """Secrets found in `text` that the request (`sent`) did not itself contain.

        Always: real e-mails, full names and phone numbers. Under the analyst's grant on German customers
        (`governed`), also: lifetime values and segments found only in excluded rows, ids of excluded rows in
        cast error texts, and birth dates (a column the grant leaves out)."""
        found = []
        # The e-mail pattern is only run where an address could be (it would crawl over megabytes of echoed
        # input otherwise).
        for m in EMAIL_IN_TEXT.finditer(text) if "@example." in text else ():
            if m.group(0) not in sent:
                found.append(f"e-mail {m.group(0)}")
        for name in self.names:
            if name in text and name not in sent:
                found.append(f"full name {name}")
        for m in PHONE_IN_TEXT.finditer(text):
            if m.group(0) in self.phones and m.group(0) not in sent:
                found.append(f"phone {m.group(0)}")
        if governed:
            for m in DECIMAL2_IN_TEXT.finditer(text):
                if m.group(0) in self.non_de_only_ltv and m.group(0) not in sent:
                    found.append(f"lifetime_value {m.group(0)} of an excluded row")
            for m in CAST_ROW_IN_TEXT.finditer(text):
                if int(m.group(1)) in self.non_de_ids and m.group(0) not in sent:
                    found.append(f"excluded row {m.group(0)} in an error")
            for segment in self.non_de_only_segments:
                if segment in text and segment not in sent:
                    found.append(f"segment {segment} of excluded rows")
            for m in DATE_IN_TEXT.finditer(text):
                if m.group(0) in self.birth_dates and m.group(0) not in sent:
                    found.append(f"birth date {m.group(0)}")
        return found[:5]


@dataclass
class Answer:
    """One call's outcome: `ok`, `tool_error` (isError), `rpc_error` (JSON-RPC error), `timeout` (a hang),
    `crash` (the transport failed) or `client_error` (the SDK refused the answer)."""

    kind: str
    data: Any
    text: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def error(self) -> bool:
        return self.kind in ("tool_error", "rpc_error")

    @property
    def rows(self) -> list | None:
        if self.ok and isinstance(self.data, dict) and isinstance(self.data.get("rows"), list):
            return self.data["rows"]
        return None

    def column_names(self) -> list[str]:
        if self.ok and isinstance(self.data, dict):
            return [c.get("name", "") for c in self.data.get("columns", [])]
        return []

    def brief(self, limit: int = 300) -> str:
        text = self.text if len(self.text) <= limit else self.text[:limit] + "..."
        return f"{self.kind} after {self.seconds:.2f}s: {text}"


class Parley:
    """One `parley serve` process over stdio for one principal, driven by the SDK's ClientSession."""

    def __init__(
        self, binary: str, data_dir: str, principal: str, log_dir: str, env: dict[str, str] | None = None
    ) -> None:
        self.binary, self.data_dir, self.principal = binary, data_dir, principal
        self.env = env or {}
        self.log = open(os.path.join(log_dir, f"{principal}.stderr.log"), "a")
        self.stack: contextlib.AsyncExitStack | None = None
        self.session: ClientSession | None = None

    async def open(self) -> "Parley":
        params = StdioServerParameters(
            command=self.binary,
            args=["serve", "--data-dir", self.data_dir, "--principal", self.principal],
            env={**os.environ, "PARLEY_LOG": "warn", **self.env},
        )
        self.stack = contextlib.AsyncExitStack()
        read, write = await self.stack.enter_async_context(stdio_client(params, errlog=self.log))
        self.session = await self.stack.enter_async_context(ClientSession(read, write))
        await asyncio.wait_for(self.session.initialize(), CALL_TIMEOUT)
        return self

    async def close(self) -> None:
        if self.stack is not None:
            # Closed in the task that opened it (anyio's cancel scopes require it); a server that died leaves
            # a transport that may fail to close, and nothing is left to clean up then.
            with contextlib.suppress(Exception):
                await self.stack.aclose()
        self.stack, self.session = None, None

    async def reopen(self) -> None:
        await self.close()
        await self.open()

    async def _run(self, request, timeout: float) -> Answer:
        started = time.monotonic()
        elapsed = lambda: time.monotonic() - started  # noqa: E731
        try:
            result = await asyncio.wait_for(request(), timeout)
        except asyncio.TimeoutError:
            return Answer("timeout", None, f"no answer within {timeout:.0f}s", elapsed())
        except MCPError as e:
            return Answer("rpc_error", None, f"[{e.code}] {e.message} {e.data or ''}", elapsed())
        except (RuntimeError, ValueError) as e:
            return Answer("client_error", None, f"{type(e).__name__}: {e}", elapsed())
        except Exception as e:  # the transport closed or broke: the server is gone
            return Answer("crash", None, f"{type(e).__name__}: {e}", elapsed())
        return self._answer(result, elapsed())

    @staticmethod
    def _answer(result: Any, seconds: float) -> Answer:
        parts = []
        for block in getattr(result, "content", None) or []:
            parts.append(getattr(block, "text", "") or "")
        for block in getattr(result, "contents", None) or []:
            parts.append(getattr(block, "text", "") or "")
        data = getattr(result, "structured_content", None)
        if data is not None:
            parts.append(json.dumps(data, ensure_ascii=False))
        kind = "tool_error" if getattr(result, "is_error", False) else "ok"
        return Answer(kind, data, "\n".join(parts), seconds)

    async def call(self, tool: str, args: Any, timeout: float = CALL_TIMEOUT) -> Answer:
        if self.session is None:
            return Answer("crash", None, "no session (an earlier call killed it)", 0.0)
        return await self._run(lambda: self.session.call_tool(tool, args), timeout)

    async def read(self, uri: str, timeout: float = CALL_TIMEOUT) -> Answer:
        if self.session is None:
            return Answer("crash", None, "no session (an earlier call killed it)", 0.0)
        return await self._run(lambda: self.session.read_resource(uri), timeout)


class Suite:
    """Counts attempts (tool calls) and checks per class; never stops at a failure."""

    def __init__(self, truth: GroundTruth) -> None:
        self.truth = truth
        self.attempts: Counter = Counter()
        self.passed: Counter = Counter()
        self.failed: Counter = Counter()
        self.failures: list[str] = []
        self.seconds: Counter = Counter()
        # marketing-agent's grant and a German customer id, to compare that customer's e-mail hash across
        # grants.
        self.hash_probe: tuple[str, int] | None = None

    async def timed(self, cls: str, attacks: Any) -> Any:
        started = time.monotonic()
        try:
            return await attacks
        finally:
            self.seconds[cls] += time.monotonic() - started

    def check(self, name: str, cls: str, condition: Any, detail: Any = "") -> bool:
        if condition:
            self.passed[cls] += 1
            return True
        self.failed[cls] += 1
        line = f"FAIL [{cls}] {name}: {detail}"
        self.failures.append(line)
        print(line, flush=True)
        return False

    async def call(
        self,
        cls: str,
        name: str,
        client: Parley,
        tool: str,
        args: Any,
        *,
        governed: bool = False,
        scan: bool = True,
        timeout: float = CALL_TIMEOUT,
        params: dict | None = None,
    ) -> Answer:
        """One attack: the call, then the checks every answer gets — it came back (no hang, no crash) and,
        unless `scan` is off (an owner reading their own personal data), it holds no secret the request did
        not. `params` (a `RawClient`'s only) go into the `tools/call` request next to its name and arguments."""
        self.attempts[cls] += 1
        answer = await client.call(tool, args, timeout, **(params or {}))
        self.check(f"{name}: answered", cls, answer.ok or answer.error, answer.brief())
        if answer.kind == "crash":
            await self.revive(client)
        if scan:
            leaks = self.truth.leaks(answer.text, json.dumps(args, ensure_ascii=False), governed)
            self.check(f"{name}: nothing leaked", cls, not leaks, f"{leaks} in {answer.brief()}")
        return answer

    async def read(self, cls: str, name: str, client: Parley, uri: str) -> Answer:
        self.attempts[cls] += 1
        answer = await client.read(uri)
        self.check(f"{name}: answered", cls, answer.ok or answer.error, answer.brief())
        leaks = self.truth.leaks(answer.text, uri, False)
        self.check(f"{name}: nothing leaked", cls, not leaks, f"{leaks} in {answer.brief()}")
        return answer

    async def revive(self, client: Parley) -> None:
        """After a crash, a new process for the same principal, so later attacks still run."""
        with contextlib.suppress(Exception):
            await client.reopen()

    async def query(
        self, cls: str, name: str, client: Parley, sql: str, grant: str | None = None, **kw: Any
    ) -> Answer:
        # The whole result, as far as the server's ceilings go (the default reply budget is ~2,000 tokens).
        args: dict[str, Any] = {"sql": sql, "max_rows": kw.pop("max_rows", 10000),
                                "max_bytes": kw.pop("max_bytes", 4 * 1024 * 1024)}
        if grant:
            args["grant_id"] = grant
        return await self.call(cls, name, client, "query", args, **kw)

    async def expect_rows(
        self, cls: str, name: str, client: Parley, sql: str, expected: list, grant: str | None = None, **kw
    ) -> Answer:
        answer = await self.query(cls, name, client, sql, grant, **kw)
        got = canonical(answer.rows) if answer.rows is not None else None
        self.check(
            f"{name}: rows equal pyiceberg's",
            cls,
            got == canonical(expected),
            f"{answer.brief()} expected {expected}",
        )
        return answer

    async def expect_error(
        self,
        cls: str,
        name: str,
        client: Parley,
        tool: str,
        args: Any,
        contains: tuple[str, ...] = (),
        **kw: Any,
    ) -> Answer:
        answer = await self.call(cls, name, client, tool, args, **kw)
        self.check(f"{name}: refused", cls, answer.error, answer.brief())
        for word in contains:
            self.check(
                f"{name}: error says {word!r}", cls, word.lower() in answer.text.lower(), answer.brief()
            )
        return answer


def dec(value: decimal.Decimal) -> str:
    """A decimal(12,2) SQL literal that compares exactly with lifetime_value."""
    return f"CAST('{value}' AS DECIMAL(12,2))"


# Yes/no oracles on one row: `{hit}` is true on exactly the row customer_id = K when its lifetime_value >= X,
# and the query fails (division by zero, cast of a non-number) or changes its answer when `{hit}` is ever
# true. Under a grant whose row filter excludes K, the answer must be the same for every X: that of the
# granted rows alone.
# Each entry: name, SQL, the expected rows when K is excluded, and when K is a granted row with X <= its value
# (the "armed" control, which proves the predicate does fail when it meets a visible row): rows or "error".
def oracles(t: GroundTruth) -> list[tuple[str, str, list, Any]]:
    de_ids = [r["customer_id"] for r in t.de]
    segment_squares = sum(n * n for n in t.de_segments.values())
    by_segment = [[s, n] for s, n in sorted(t.de_segments.items())]
    return [
        (
            "WHERE division by zero",
            "SELECT count(*) FROM sales.customers WHERE 1 / (CASE WHEN {hit} THEN 0 ELSE 1 END) = 1",
            [[t.n_de]],
            "error",
        ),
        (
            "WHERE cast of a string column",
            "SELECT count(*) FROM sales.customers WHERE CAST(CASE WHEN {hit} THEN segment ELSE '1' END AS "
            "BIGINT) = 1",
            [[t.n_de]],
            "error",
        ),
        (
            "JOIN ON division by zero",
            "SELECT count(*) FROM sales.customers a JOIN sales.customers b ON a.customer_id = b.customer_id "
            "AND 1 / (CASE WHEN {bhit} THEN 0 ELSE 1 END) = 1",
            [[t.n_de]],
            "error",
        ),
        (
            "IN subquery cast",
            "SELECT count(*) FROM sales.customers WHERE customer_id IN (SELECT customer_id FROM "
            "sales.customers "
            "WHERE CAST(CASE WHEN {hit} THEN segment ELSE '1' END AS INT) = 1)",
            [[t.n_de]],
            "error",
        ),
        (
            "scalar subquery count",
            "SELECT (SELECT count(*) FROM sales.customers WHERE {hit}) AS n",
            [[0]],
            [[1]],
        ),
        (
            "CASE in the SELECT list",
            "SELECT sum(1 / (CASE WHEN {hit} THEN 0 ELSE 1 END)) FROM sales.customers",
            [[t.n_de]],
            "error",
        ),
        (
            "HAVING",
            "SELECT segment, count(*) FROM sales.customers GROUP BY segment "
            "HAVING min(1 / (CASE WHEN {hit} THEN 0 ELSE 1 END)) = 1 ORDER BY segment",
            by_segment,
            "error",
        ),
        (
            "window function",
            "SELECT count(*), sum(w) FROM (SELECT sum(1 / (CASE WHEN {hit} THEN 0 ELSE 1 END)) "
            "OVER (PARTITION BY segment) AS w FROM sales.customers) t",
            [[t.n_de, segment_squares]],
            "error",
        ),
        (
            "ORDER BY expression",
            "SELECT customer_id FROM sales.customers ORDER BY 1 / (CASE WHEN {hit} THEN 0 ELSE 1 END), "
            "customer_id LIMIT 3",
            [[i] for i in de_ids[:3]],
            "error",
        ),
        (
            "LIMIT after a failing filter",
            "SELECT customer_id FROM sales.customers WHERE CAST(CASE WHEN {hit} THEN segment ELSE '7' END AS "
            "INT) "
            "= 7 ORDER BY customer_id DESC LIMIT 2",
            [[i] for i in de_ids[::-1][:2]],
            "error",
        ),
        (
            "GROUP BY expression",
            "SELECT 1 / (CASE WHEN {hit} THEN 0 ELSE 1 END) AS g, count(*) FROM sales.customers GROUP BY 1",
            [[1, t.n_de]],
            "error",
        ),
        (
            "correlated EXISTS",
            "SELECT count(*) FROM sales.customers a WHERE EXISTS (SELECT 1 FROM sales.customers b "
            "WHERE b.customer_id = a.customer_id AND 1 / (CASE WHEN {bhit} THEN 0 ELSE 1 END) = 1)",
            [[t.n_de]],
            "error",
        ),
        (
            "UNION ALL",
            "SELECT count(*) FROM (SELECT customer_id FROM sales.customers WHERE 1 / (CASE WHEN {hit} THEN 0 "
            "ELSE 1 END) = 1 UNION ALL SELECT customer_id FROM sales.customers WHERE {hit}) u",
            [[t.n_de]],
            "error",
        ),
        (
            "CTE",
            "WITH c AS (SELECT customer_id, lifetime_value FROM sales.customers) SELECT count(*) FROM c "
            "WHERE 1 / (CASE WHEN {hit} THEN 0 ELSE 1 END) = 1",
            [[t.n_de]],
            "error",
        ),
        (
            "join with sales.orders",
            "SELECT count(*) FROM sales.orders o JOIN sales.customers b ON o.customer_id = b.customer_id "
            "WHERE 1 / (CASE WHEN {bhit} THEN 0 ELSE 1 END) = 1",
            [[t.de_orders]],
            "error",
        ),
    ]


def render(sql: str, k: int, x: decimal.Decimal) -> str:
    hit = f"customer_id = {k} AND lifetime_value >= {dec(x)}"
    bhit = f"b.customer_id = {k} AND b.lifetime_value >= {dec(x)}"
    return sql.format(hit=hit, bhit=bhit)


async def class1_barrier(s: Suite, analyst: Parley) -> str | None:
    """The analyst's grant on German customers: nothing about other rows may be learned through it."""
    cls, t = "1-barrier", s.truth
    offer = await s.call(
        cls,
        "request_access with a row scope",
        analyst,
        "request_access",
        {
            "tables": ["sales.customers"],
            "purpose": "churn_analysis",
            "columns": GRANTED_COLUMNS,
            "row_scope": {"column": "country", "values": ["DE"]},
        },
    )
    terms = (offer.data or {}).get("terms", {})
    s.check(
        "row-scoped request is a counter-offer masking email",
        cls,
        offer.ok
        and offer.data.get("status") == "counter_offer"
        and terms.get("masks", {}).get("sales.customers.email") == "hash"
        and terms.get("row_filter") == {"column": "country", "values": ["DE"]},
        offer.brief(600),
    )
    if not offer.ok:
        return None
    accepted = await s.call(
        cls,
        "accept_offer",
        analyst,
        "accept_offer",
        {"request_id": offer.data["request_id"], "terms_hash": offer.data["terms_hash"]},
    )
    grant = (accepted.data or {}).get("grant_id")
    if not s.check("accept_offer gives a grant", cls, accepted.ok and grant, accepted.brief()):
        return None

    # Plain differential checks: the grant must answer exactly as the German rows alone would.
    de, de_ids = t.de, [r["customer_id"] for r in t.de]
    ltvs = [r["lifetime_value"] for r in de]
    by_ltv = sorted(de, key=lambda r: (-r["lifetime_value"], r["customer_id"]))
    top_per_segment = []
    for segment in sorted(t.de_segments):
        best = min(
            (r for r in de if r["segment"] == segment), key=lambda r: (-r["lifetime_value"], r["customer_id"])
        )
        top_per_segment.append([segment, best["customer_id"]])
    first_rows = [[r["customer_id"], r["country"], r["segment"], r["lifetime_value"]] for r in de[:25]]
    non_de = t.non_de
    sample_k = [
        non_de[i]["customer_id"] for i in (0, len(non_de) // 3, 2 * len(non_de) // 3, len(non_de) - 1)
    ]
    mid = sample_k[1]
    below_mid = max(i for i in de_ids if i < mid)
    plain = [
        ("count(*)", "SELECT count(*) FROM sales.customers", [[t.n_de]]),
        (
            "aggregates",
            "SELECT count(*), sum(lifetime_value), min(customer_id), max(customer_id), min(lifetime_value), "
            "max(lifetime_value) FROM sales.customers",
            [[t.n_de, t.de_ltv_sum, de_ids[0], de_ids[-1], min(ltvs), max(ltvs)]],
        ),
        ("countries", "SELECT country, count(*) FROM sales.customers GROUP BY country", [["DE", t.n_de]]),
        ("country <> DE", "SELECT count(*) FROM sales.customers WHERE country <> 'DE'", [[0]]),
        ("country = FR", "SELECT count(*) FROM sales.customers WHERE country = 'FR'", [[0]]),
        (
            "segments",
            "SELECT segment, count(*), sum(lifetime_value) FROM sales.customers GROUP BY segment ORDER BY "
            "segment",
            [
                [seg, n, sum((r["lifetime_value"] for r in de if r["segment"] == seg), decimal.Decimal(0))]
                for seg, n in sorted(t.de_segments.items())
            ],
        ),
        (
            "first rows",
            "SELECT customer_id, country, segment, lifetime_value FROM sales.customers ORDER BY customer_id "
            "LIMIT 25",
            first_rows,
        ),
        (
            "ORDER BY lifetime_value",
            "SELECT customer_id FROM sales.customers ORDER BY lifetime_value DESC, customer_id LIMIT 10",
            [[r["customer_id"]] for r in by_ltv[:10]],
        ),
        (
            "ORDER BY an expression",
            "SELECT customer_id FROM sales.customers ORDER BY lifetime_value * -1, customer_id LIMIT 5",
            [[r["customer_id"]] for r in by_ltv[:5]],
        ),
        (
            "row_number per segment",
            "SELECT segment, customer_id FROM (SELECT segment, customer_id, row_number() OVER (PARTITION BY "
            "segment ORDER BY lifetime_value DESC, customer_id) AS r FROM sales.customers) t WHERE r = 1 "
            "ORDER BY segment",
            top_per_segment,
        ),
        (
            "HAVING on counts",
            "SELECT segment, count(*) c FROM sales.customers GROUP BY segment HAVING count(*) > 0 ORDER BY "
            "segment",
            [[seg, n] for seg, n in sorted(t.de_segments.items())],
        ),
        (
            "self-join",
            "SELECT count(*) FROM sales.customers a JOIN sales.customers b ON a.customer_id = b.customer_id",
            [[t.n_de]],
        ),
        (
            "self-join on an expression",
            "SELECT count(*) FROM sales.customers a, sales.customers b WHERE a.customer_id = b.customer_id + "
            "0",
            [[t.n_de]],
        ),
        (
            "IN subquery",
            "SELECT count(*) FROM sales.customers WHERE customer_id IN "
            "(SELECT customer_id FROM sales.customers WHERE segment = 'smb')",
            [[t.de_segments["smb"]]],
        ),
        (
            "excluded ids",
            f"SELECT count(*) FROM sales.customers WHERE customer_id IN ({','.join(map(str, sample_k))})",
            [[0]],
        ),
        (
            "largest id below an excluded one",
            f"SELECT max(customer_id) FROM sales.customers WHERE customer_id < {mid}",
            [[below_mid]],
        ),
        ("distinct hashed e-mails", "SELECT count(DISTINCT email) FROM sales.customers", [[t.n_de]]),
        ("no '@' in hashed e-mails", "SELECT count(*) FROM sales.customers WHERE email LIKE '%@%'", [[0]]),
        (
            "join with sales.orders",
            "SELECT count(*), sum(o.total_amount) FROM sales.orders o JOIN sales.customers c "
            "ON o.customer_id = c.customer_id",
            [[t.de_orders, t.de_orders_sum]],
        ),
        (
            "LEFT JOIN from sales.orders",
            "SELECT count(c.customer_id) FROM sales.orders o LEFT JOIN sales.customers c "
            "ON o.customer_id = c.customer_id",
            [[t.de_orders]],
        ),
        ("LIMIT over count", "SELECT count(*) FROM sales.customers LIMIT 1", [[t.n_de]]),
    ]
    for name, sql, expected in plain:
        await s.expect_rows(cls, name, analyst, sql, expected, grant, governed=True)

    # Whatever LIMIT picks, it picks granted rows.
    a = await s.query(
        cls, "bare LIMIT", analyst, "SELECT customer_id FROM sales.customers LIMIT 7", grant, governed=True
    )
    s.check(
        "bare LIMIT: only granted ids",
        cls,
        a.rows is not None and len(a.rows) == 7 and all(r[0] in t.de_ids for r in a.rows),
        a.brief(),
    )
    # `purpose` alone selects the live grant for it.
    a = await s.call(
        cls,
        "purpose selects the grant",
        analyst,
        "query",
        {"sql": "SELECT count(*) FROM sales.customers", "purpose": "churn_analysis"},
        governed=True,
    )
    s.check("purpose selects the grant: German rows only", cls, canonical(a.rows) == [[t.n_de]], a.brief())
    # A single excluded row, asked for by key, does not exist; a granted one does.
    for k in sample_k:
        await s.expect_rows(
            cls,
            f"excluded row {k} by key",
            analyst,
            f"SELECT count(*) FROM sales.customers WHERE customer_id = {k}",
            [[0]],
            grant,
            governed=True,
        )
    await s.expect_rows(
        cls,
        "granted row by key",
        analyst,
        f"SELECT count(*) FROM sales.customers WHERE customer_id = {de_ids[5]}",
        [[1]],
        grant,
        governed=True,
    )

    # The oracles: the same answer for every X, for several excluded rows K; and an armed control on a granted
    # row.
    armed = next(r for r in de if r["lifetime_value"] > 0 and r["customer_id"] in t.customers_with_orders)
    for name, sql, expected, armed_expected in oracles(t):
        for k in sample_k:
            value = t.ltv(k)
            for x in (value - decimal.Decimal("0.01"), value, value + decimal.Decimal("0.01")):
                await s.expect_rows(
                    cls,
                    f"oracle {name} K={k} X={x}",
                    analyst,
                    render(sql, k, x),
                    expected,
                    grant,
                    governed=True,
                )
        control = await s.query(
            cls,
            f"armed oracle {name}",
            analyst,
            render(sql, armed["customer_id"], armed["lifetime_value"]),
            grant,
            governed=True,
        )
        if armed_expected == "error":
            s.check(f"armed oracle {name}: fails on a granted row", cls, control.error, control.brief())
        else:
            s.check(
                f"armed oracle {name}: counts the granted row",
                cls,
                canonical(control.rows) == armed_expected,
                control.brief(),
            )
    for k in sample_k:
        await s.expect_rows(
            cls,
            f"oracle (id - K)/(id - K) K={k}",
            analyst,
            f"SELECT count(*) FROM sales.customers WHERE (customer_id - {k}) / (customer_id - {k}) = 1",
            [[t.n_de]],
            grant,
            governed=True,
        )

    # Casts that fail on every row: an error is expected, and the row it names must be a granted one.
    failing = [
        "SELECT count(*) FROM sales.customers WHERE CAST(CAST(customer_id AS VARCHAR) || segment AS BIGINT) "
        "> 0",
        "SELECT CAST(CAST(customer_id AS VARCHAR) || segment AS BIGINT) FROM sales.customers",
        "SELECT count(*) FROM sales.customers a JOIN sales.customers b "
        "ON a.customer_id = CAST(CAST(b.customer_id AS VARCHAR) || b.segment AS BIGINT)",
        "SELECT count(*) FROM sales.customers WHERE customer_id IN "
        "(SELECT CAST(CAST(customer_id AS VARCHAR) || segment AS BIGINT) FROM sales.customers)",
        "SELECT segment FROM sales.customers GROUP BY segment "
        "HAVING max(CAST(CAST(customer_id AS VARCHAR) || segment AS BIGINT)) > 0",
        "SELECT customer_id FROM sales.customers ORDER BY CAST(CAST(customer_id AS VARCHAR) || segment AS "
        "BIGINT) LIMIT 1",
        "SELECT sum(CAST(CAST(customer_id AS VARCHAR) || segment AS BIGINT)) OVER () FROM sales.customers "
        "LIMIT 1",
        "SELECT count(*) FROM sales.customers WHERE CAST(CAST(lifetime_value AS VARCHAR) || 'x' AS "
        "DECIMAL(12,2)) > 0",
        "SELECT count(*) FROM sales.customers WHERE CAST(country || CAST(customer_id AS VARCHAR) AS INT) > 0",
        "SELECT count(*) FROM sales.customers WHERE CAST(email AS BIGINT) > 0",
        "SELECT count(*) FROM sales.orders o JOIN sales.customers c ON o.customer_id = c.customer_id "
        "WHERE CAST(CAST(c.customer_id AS VARCHAR) || c.segment AS BIGINT) > 0",
        "WITH w AS (SELECT CAST(CAST(customer_id AS VARCHAR) || segment AS BIGINT) AS v FROM "
        "sales.customers) "
        "SELECT max(v) FROM w",
    ]
    for i, sql in enumerate(failing):
        a = await s.query(cls, f"failing cast #{i}", analyst, sql, grant, governed=True)
        s.check(f"failing cast #{i}: an error", cls, a.error, a.brief())
    # The same casts on excluded rows only: no row, so no error.
    for k in sample_k[:2]:
        await s.expect_rows(
            cls,
            f"failing cast on excluded row {k}",
            analyst,
            "SELECT CAST(CAST(customer_id AS VARCHAR) || segment AS BIGINT) FROM sales.customers WHERE "
            f"customer_id = {k}",
            [],
            grant,
            governed=True,
        )
    await s.expect_rows(
        cls,
        "failing cast on excluded ids in a list",
        analyst,
        "SELECT CAST(segment AS BIGINT) FROM sales.customers WHERE customer_id IN "
        f"({','.join(map(str, sample_k))})",
        [],
        grant,
        governed=True,
    )
    return grant


async def class2_columns(s: Suite, analyst: Parley, grant: str) -> None:
    """Columns outside the grant do not exist; the hashed e-mail never shows the address."""
    cls, t = "2-columns", s.truth
    de_row = t.de[3]
    real_email = de_row["email"]
    dropped = [
        "SELECT phone FROM sales.customers",
        "SELECT full_name FROM sales.customers",
        "SELECT birth_date FROM sales.customers",
        "SELECT signup_at FROM sales.customers",
        "SELECT is_active FROM sales.customers",
        'SELECT "phone" FROM sales.customers',
        "SELECT PHONE FROM sales.customers",
        "SELECT Full_Name FROM sales.customers",
        'SELECT "PHONE" FROM sales.customers',
        "SELECT c.phone FROM sales.customers c",
        "SELECT sales.customers.full_name FROM sales.customers",
        'SELECT "sales"."customers"."birth_date" FROM "sales"."customers"',
        "SELECT parley.sales.customers.phone FROM parley.sales.customers",
        "SELECT count(*) FROM sales.customers WHERE phone IS NOT NULL",
        "SELECT count(*) FROM sales.customers WHERE full_name LIKE 'A%'",
        "SELECT customer_id FROM sales.customers ORDER BY birth_date LIMIT 5",
        "SELECT full_name, count(*) FROM sales.customers GROUP BY full_name",
        "SELECT length(full_name) FROM sales.customers",
        "SELECT upper(phone) FROM sales.customers",
        "SELECT max(birth_date) FROM sales.customers",
        "SELECT count(*) FROM sales.customers a JOIN sales.customers b ON a.phone = b.phone",
        "SELECT (SELECT max(full_name) FROM sales.customers) AS x",
        "WITH c AS (SELECT full_name AS n FROM sales.customers) SELECT n FROM c",
        "SELECT customer_id FROM sales.customers WHERE customer_id IN (SELECT customer_id FROM "
        "sales.customers WHERE phone LIKE '+49%')",
        "SELECT customer_id FROM sales.customers ORDER BY length(full_name) DESC LIMIT 1",
        "SELECT row_number() OVER (ORDER BY birth_date) FROM sales.customers LIMIT 1",
        "SELECT customer_id FROM sales.customers GROUP BY customer_id HAVING max(phone) > ''",
        "SELECT * FROM sales.customers WHERE CAST(phone AS BIGINT) > 0",
        "SELECT arrow_typeof(phone) FROM sales.customers LIMIT 1",
    ]
    for sql in dropped:
        a = await s.query(cls, f"dropped column: {sql}", analyst, sql, grant, governed=True)
        s.check(f"dropped column refused: {sql}", cls, a.error, a.brief())

    # Forms that may run, but only ever over the granted columns.
    star = [
        "SELECT * FROM sales.customers ORDER BY customer_id LIMIT 50",
        "SELECT c.* FROM sales.customers c ORDER BY customer_id LIMIT 50",
        "SELECT * FROM (SELECT * FROM sales.customers) t ORDER BY customer_id LIMIT 50",
        "WITH c AS (SELECT * FROM sales.customers) SELECT * FROM c ORDER BY customer_id LIMIT 50",
        "SELECT * FROM sales.customers a JOIN sales.customers b USING (customer_id) ORDER BY customer_id "
        "LIMIT 50",
        "SELECT * EXCLUDE (email) FROM sales.customers ORDER BY customer_id LIMIT 50",
        "SELECT email AS phone, customer_id AS full_name FROM sales.customers ORDER BY customer_id LIMIT 50",
        "SELECT * FROM sales.customers UNION ALL SELECT * FROM sales.customers ORDER BY customer_id LIMIT 50",
    ]
    allowed = set(GRANTED_COLUMNS)
    for sql in star:
        a = await s.query(cls, f"star: {sql}", analyst, sql, grant, governed=True)
        names = {n.split(".")[-1].lower() for n in a.column_names()}
        if "AS phone" in sql:
            # Aliases named after dropped columns hold only what they alias: hashes and granted ids.
            s.check(
                "aliases named phone and full_name hold hashes and granted ids",
                cls,
                a.rows and all(HEX64.match(str(r[0])) and r[1] in s.truth.de_ids for r in a.rows),
                a.brief(),
            )
            continue
        s.check(
            f"star runs over granted columns only: {sql}",
            cls,
            a.ok and names and names <= allowed,
            f"{names} {a.brief()}",
        )
        if a.ok and "email" in a.column_names():
            i = a.column_names().index("email")
            s.check(f"star: email hashed: {sql}", cls, all(HEX64.match(str(r[i])) for r in a.rows), a.brief())

    # Catalog introspection: refused, or silent about the columns left out.
    for sql in [
        "SELECT * FROM information_schema.columns",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'customers'",
        "SELECT * FROM information_schema.tables",
        "SHOW COLUMNS FROM sales.customers",
        "DESCRIBE sales.customers",
        "SHOW TABLES",
        "SELECT * FROM sales.customers.phone",
    ]:
        a = await s.query(cls, f"introspection: {sql}", analyst, sql, grant, governed=True)
        s.check(
            f"introspection shows no dropped column: {sql}",
            cls,
            a.error or not any(c in a.text for c in ("phone", "full_name", "birth_date")),
            a.brief(),
        )

    # The masked e-mail: every function of it shows only the hash.
    for sql in [
        "SELECT email FROM sales.customers ORDER BY customer_id LIMIT 200",
        "SELECT lower(email) FROM sales.customers ORDER BY customer_id LIMIT 200",
        "SELECT substr(email, 1, 64) FROM sales.customers ORDER BY customer_id LIMIT 200",
        "SELECT CAST(email AS VARCHAR) FROM sales.customers ORDER BY customer_id LIMIT 200",
        "SELECT max(email) FROM sales.customers",
        "SELECT split_part(email, '@', 1) FROM sales.customers ORDER BY customer_id LIMIT 200",
        "SELECT email FROM sales.customers UNION SELECT email FROM sales.customers LIMIT 200",
        "SELECT a.email FROM sales.customers a JOIN sales.customers b ON a.customer_id = b.customer_id LIMIT "
        "200",
    ]:
        a = await s.query(cls, f"masked email: {sql}", analyst, sql, grant, governed=True)
        s.check(
            f"masked email is 64 hex chars: {sql}",
            cls,
            a.rows and all(isinstance(r[0], str) and HEX64.match(r[0]) and "@" not in r[0] for r in a.rows),
            a.brief(),
        )
    await s.expect_rows(
        cls,
        "email equals a real address",
        analyst,
        f"SELECT count(*) FROM sales.customers WHERE email = '{real_email}'",
        [[0]],
        grant,
        governed=True,
    )
    await s.expect_rows(
        cls,
        "strpos of '@'",
        analyst,
        "SELECT max(strpos(email, '@')) FROM sales.customers",
        [[0]],
        grant,
        governed=True,
    )
    unsalted = hashlib.sha256(real_email.encode()).hexdigest()
    await s.expect_rows(
        cls,
        "email equals its unsalted SHA-256",
        analyst,
        f"SELECT count(*) FROM sales.customers WHERE email = '{unsalted}'",
        [[0]],
        grant,
        governed=True,
    )
    a = await s.query(
        cls,
        "email of one granted row",
        analyst,
        f"SELECT email FROM sales.customers WHERE customer_id = {de_row['customer_id']}",
        grant,
        governed=True,
    )
    s.check(
        "email hash is salted",
        cls,
        a.rows and a.rows[0][0] != unsalted and HEX64.match(a.rows[0][0]),
        a.brief(),
    )
    # Without a grant the analyst may not read the table at all.
    for sql in ["SELECT count(*) FROM sales.customers", "SELECT email FROM sales.customers LIMIT 1"]:
        await s.expect_error(cls, f"no grant: {sql}", analyst, "query", {"sql": sql}, ("request_access",))
    # A grant bound to a purpose does not serve another.
    await s.expect_error(
        cls,
        "grant under another purpose",
        analyst,
        "query",
        {"sql": "SELECT count(*) FROM sales.customers", "grant_id": grant, "purpose": "fraud_investigation"},
    )


async def class3_statements(s: Suite, analyst: Parley, grant: str, scratch: str) -> None:
    """Only one read-only query runs: nothing reads files, metadata or other snapshots, and nothing writes."""
    cls, t = "3-statements", s.truth
    data_file = t.customer_files[0].removeprefix("file://")
    refused = [
        "SELECT * FROM sales.orders FOR SYSTEM_TIME AS OF '2020-01-01'",
        "SELECT count(*) FROM sales.orders FOR SYSTEM_TIME AS OF '2024-01-01 00:00:00'",
        "SELECT * FROM sales.customers FOR SYSTEM_TIME AS OF '2020-01-01'",
        "SELECT * FROM sales.orders VERSION AS OF 1",
        'SELECT * FROM sales."orders$snapshots"',
        'SELECT * FROM sales."orders$files"',
        'SELECT * FROM sales."orders$manifests"',
        'SELECT * FROM sales."orders$history"',
        'SELECT * FROM sales."customers$snapshots"',
        'SELECT * FROM sales."customers$files"',
        'SELECT * FROM "sales.customers$snapshots"',
        "SELECT * FROM sales.orders.snapshots",
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        'SELECT * FROM "/etc/passwd"',
        "SELECT * FROM 'file:///etc/passwd'",
        f"SELECT * FROM '{data_file}'",
        f"SELECT * FROM 'file://{data_file}'",
        f"SELECT * FROM read_parquet('{data_file}')",
        f"SELECT * FROM parquet_scan('{data_file}')",
        "SELECT * FROM generate_series(1, 3)",
        "SELECT * FROM range(10)",
        "SELECT * FROM iceberg_scan('x')",
        f"COPY (SELECT 1) TO '{scratch}/copy1.csv'",
        f"COPY sales.orders TO '{scratch}/copy2.parquet'",
        f"COPY (SELECT * FROM sales.customers) TO '{scratch}/copy3.csv'",
        "CREATE TABLE sales.evil AS SELECT 1",
        "CREATE VIEW sales.v AS SELECT * FROM sales.customers",
        "CREATE SCHEMA evil",
        f"CREATE EXTERNAL TABLE evil STORED AS PARQUET LOCATION '{data_file}'",
        "CREATE EXTERNAL TABLE evil STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO sales.orders SELECT * FROM sales.orders",
        "INSERT INTO sales.products VALUES (9999, 'x', 'x', 'x', 1.00, true, DATE '2020-01-01')",
        "DELETE FROM sales.orders",
        "DELETE FROM parley.audit_log",
        "UPDATE sales.orders SET status = 'x'",
        "UPDATE parley.audit_log SET principal = 'x'",
        "DROP TABLE sales.orders",
        "TRUNCATE sales.orders",
        "ALTER TABLE sales.orders ADD COLUMN x INT",
        "SET datafusion.execution.batch_size = 1",
        "SET TIME ZONE 'UTC'",
        "RESET datafusion.execution.batch_size",
        "EXPLAIN SELECT * FROM sales.customers",
        "EXPLAIN ANALYZE SELECT count(*) FROM sales.orders",
        "EXPLAIN VERBOSE SELECT * FROM sales.customers",
        "SHOW ALL",
        "SELECT * FROM information_schema.df_settings",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "SELECT 1; DROP TABLE sales.orders",
        "SELECT 1; SELECT 2",
        "SELECT count(*) FROM sales.orders; DELETE FROM sales.orders",
        "SELECT 1 /* harmless */; DELETE FROM sales.orders",
        "-- a comment\nDELETE FROM sales.orders",
        "/* SELECT 1 */ DELETE FROM sales.orders",
        "/* multi\nline */ INSERT INTO sales.orders SELECT * FROM sales.orders",
        "WITH x AS (DELETE FROM sales.orders) SELECT 1",
        "CREATE FUNCTION f() RETURNS INT RETURN 1",
        "SELECT * FROM parley.sales.orders FOR SYSTEM_TIME AS OF '2020-01-01'",
        "",
        "   ",
    ]
    for sql in refused:
        for g in (None, grant):
            label = f"{'under grant: ' if g else ''}{sql!r}"
            a = await s.query(cls, label, analyst, sql, g, governed=bool(g))
            s.check(f"refused: {label}", cls, a.error, a.brief())
    # A statement only inside a comment is just a comment: the query runs and changes nothing.
    await s.expect_rows(
        cls, "statement in a line comment", analyst, "SELECT 1 -- ; DROP TABLE sales.orders", [[1]]
    )
    await s.expect_rows(
        cls, "statement in a block comment", analyst, "SELECT 2 /* ; DELETE FROM sales.orders */", [[2]]
    )
    await s.expect_rows(cls, "VALUES is a query", analyst, "VALUES (3)", [[3]])
    # The answer names the snapshot read: the current one, as pyiceberg sees it.
    a = await s.query(cls, "snapshot of a read", analyst, "SELECT count(*) FROM sales.orders")
    snapshots = (a.data or {}).get("snapshots", [])
    current = catalog_of(analyst.data_dir).load_table("sales.orders").current_snapshot().snapshot_id
    s.check(
        "query reads pyiceberg's current snapshot",
        cls,
        canonical(a.rows) == [[t.n_orders]] and [int(x.get("snapshot_id")) for x in snapshots] == [current],
        a.brief(),
    )
    a = await s.query(
        cls,
        "snapshot of a governed read",
        analyst,
        "SELECT count(*) FROM sales.customers",
        grant,
        governed=True,
    )
    s.check(
        "governed query reads the current snapshot",
        cls,
        [int(x.get("snapshot_id")) for x in (a.data or {}).get("snapshots", [])] == [t.customers_snapshot],
        a.brief(),
    )
    for name in ("copy1.csv", "copy2.parquet", "copy3.csv"):
        s.check(f"COPY wrote no {name}", cls, not os.path.exists(os.path.join(scratch, name)), name)


async def class4_policy(s: Suite, marketing: Parley, analyst_grant: str | None) -> None:
    """marketing-agent reads personal data only masked, under a grant; ops is invisible to it."""
    cls, t = "4-policy", s.truth
    for sql in [
        "SELECT count(*) FROM sales.customers",
        "SELECT customer_id FROM sales.customers LIMIT 1",
        "SELECT count(*) FROM sales.orders o JOIN sales.customers c ON o.customer_id = c.customer_id",
        "WITH c AS (SELECT * FROM sales.customers) SELECT count(*) FROM c",
        "SELECT count(*) FROM sales.orders WHERE customer_id IN (SELECT customer_id FROM sales.customers)",
    ]:
        await s.expect_error(
            cls,
            f"marketing without grant: {sql}",
            marketing,
            "query",
            {"sql": sql},
            ("no-pii-for-marketing",),
        )
    await s.expect_rows(
        cls, "marketing reads sales.orders", marketing, "SELECT count(*) FROM sales.orders", [[t.n_orders]]
    )
    await s.expect_rows(
        cls,
        "marketing reads sales.products",
        marketing,
        "SELECT count(*) FROM sales.products",
        [[t.n_products]],
    )
    # Someone else's grant is not a way in.
    if analyst_grant:
        await s.expect_error(
            cls,
            "marketing uses the analyst's grant",
            marketing,
            "query",
            {"sql": "SELECT count(*) FROM sales.customers", "grant_id": analyst_grant},
        )
    a = await s.call(cls, "marketing lists tables", marketing, "list_tables", {})
    s.check(
        "marketing lists no ops table",
        cls,
        a.ok and "shipments" not in a.text and '"ops' not in a.text,
        a.brief(),
    )
    for args in ({"filter": "shipments"}, {"namespace": "ops"}, {"filter": "ops"}):
        a = await s.call(cls, f"marketing lists {args}", marketing, "list_tables", args)
        s.check(
            f"marketing finds nothing with {args}",
            cls,
            a.error or (a.ok and a.data.get("tables") == []),
            a.brief(),
        )
    for tool, args in [
        ("describe_table", {"table": "ops.shipments"}),
        ("get_contract", {"table": "ops.shipments"}),
        ("table_consumers", {"table": "ops.shipments"}),
        ("query", {"sql": "SELECT count(*) FROM ops.shipments"}),
        ("request_access", {"tables": ["ops.shipments"], "purpose": "logistics_planning"}),
    ]:
        await s.expect_error(cls, f"marketing {tool} ops.shipments", marketing, tool, args)

    # A prohibited purpose is denied; an allowed one is offered with every personal-data column masked.
    denied = await s.call(
        cls,
        "marketing asks for marketing_outreach",
        marketing,
        "request_access",
        {"tables": ["sales.customers"], "purpose": "marketing_outreach"},
    )
    s.check(
        "marketing_outreach denied", cls, denied.ok and denied.data.get("status") == "denied", denied.brief()
    )
    clear = await s.call(
        cls,
        "marketing asks for PII columns",
        marketing,
        "request_access",
        {
            "tables": ["sales.customers"],
            "purpose": "churn_analysis",
            "columns": ["customer_id", "full_name", "email"],
        },
    )
    masks = (clear.data or {}).get("terms", {}).get("masks", {})
    s.check(
        "PII asked for is offered masked",
        cls,
        clear.ok
        and clear.data.get("status") in ("counter_offer", "denied")
        and (
            clear.data.get("status") == "denied"
            or {"sales.customers.full_name", "sales.customers.email"} <= set(masks)
        ),
        clear.brief(600),
    )
    if clear.ok and clear.data.get("request_id") and clear.data.get("status") == "counter_offer":
        a = await s.call(
            cls,
            "marketing declines the PII offer",
            marketing,
            "decline_offer",
            {"request_id": clear.data["request_id"]},
        )
        s.check("decline_offer", cls, a.ok, a.brief())
    offer = await s.call(
        cls,
        "marketing asks for churn_analysis",
        marketing,
        "request_access",
        {"tables": ["sales.customers"], "purpose": "churn_analysis", "duration_days": 7},
    )
    masks = (offer.data or {}).get("terms", {}).get("masks", {})
    s.check(
        "marketing offer masks every personal-data column",
        cls,
        offer.ok
        and offer.data.get("status") == "counter_offer"
        and all(f"sales.customers.{c}" in masks for c in PII_COLUMNS),
        offer.brief(600),
    )
    if not offer.ok or "request_id" not in offer.data:
        return
    await s.expect_error(
        cls,
        "accept with a forged terms_hash",
        marketing,
        "accept_offer",
        {"request_id": offer.data["request_id"], "terms_hash": "0" * 64},
    )
    accepted = await s.call(
        cls,
        "marketing accepts",
        marketing,
        "accept_offer",
        {"request_id": offer.data["request_id"], "terms_hash": offer.data["terms_hash"]},
    )
    grant = (accepted.data or {}).get("grant_id")
    if not s.check("marketing gets a grant", cls, accepted.ok and grant, accepted.brief()):
        return
    a = await s.query(
        cls,
        "marketing reads masked PII",
        marketing,
        "SELECT customer_id, full_name, email, phone, birth_date FROM sales.customers ORDER BY customer_id "
        "LIMIT 2000",
        grant,
    )
    good = a.rows is not None and len(a.rows) == 2000
    bad_rows = []
    for row in a.rows or []:
        real = t.customers.get(row[0])
        birth_ok = (
            row[4] is None
            if real is None or real["birth_date"] is None
            else row[4] == f"{real['birth_date'].year:04d}-01-01"
        )
        if not (
            real
            and HEX64.match(str(row[1]))
            and HEX64.match(str(row[2]))
            and (row[3] is None or HEX64.match(str(row[3])))
            and birth_ok
        ):
            bad_rows.append(row)
    s.check(
        "marketing sees names, e-mails, phones hashed and birth dates as the year",
        cls,
        good and not bad_rows,
        f"{bad_rows[:3]} {a.brief()}",
    )
    year_cut = sum(1 for r in t.customers.values() if r["birth_date"] and r["birth_date"].year >= 1991)
    checks = [
        ("all rows", "SELECT count(*) FROM sales.customers", [[t.n_customers]]),
        (
            "countries",
            "SELECT country, count(*) FROM sales.customers GROUP BY country ORDER BY country",
            [[c, n] for c, n in sorted(t.countries.items())],
        ),
        (
            "birth dates are years",
            "SELECT count(*) FROM sales.customers WHERE birth_date >= DATE '1990-06-15'",
            [[year_cut]],
        ),
        ("distinct hashed names", "SELECT count(DISTINCT full_name) FROM sales.customers", [[len(t.names)]]),
        ("no '@'", "SELECT count(*) FROM sales.customers WHERE email LIKE '%@%'", [[0]]),
        ("no '+'", "SELECT count(*) FROM sales.customers WHERE phone LIKE '+%'", [[0]]),
        ("no space in names", "SELECT count(*) FROM sales.customers WHERE full_name LIKE '% %'", [[0]]),
        ("a real address", f"SELECT count(*) FROM sales.customers WHERE email = '{t.de[0]['email']}'", [[0]]),
        (
            "a real name",
            f"SELECT count(*) FROM sales.customers WHERE full_name = '{t.de[0]['full_name']}'",
            [[0]],
        ),
        (
            "month of birth",
            "SELECT count(*) FROM sales.customers WHERE date_part('month', birth_date) <> 1",
            [[0]],
        ),
    ]
    for name, sql, expected in checks:
        await s.expect_rows(cls, f"marketing grant: {name}", marketing, sql, expected, grant)
    # Hashes are salted per grant: the same customer's hash differs between the analyst's grant and this one.
    s.hash_probe = (grant, t.de[3]["customer_id"])
    await s.expect_error(
        cls,
        "marketing grant under another purpose",
        marketing,
        "query",
        {"sql": "SELECT count(*) FROM sales.customers", "grant_id": grant, "purpose": "marketing_outreach"},
    )


async def class5_discovery(s: Suite, marketing: Parley, nobody: Parley) -> None:
    """A table one may not discover answers exactly as a table that does not exist, by every tool."""
    cls = "5-discovery"

    def normal(answer: Answer, names: list[str]) -> str:
        # Table names are compared case-insensitively: Parley reports `OPS.SHIPMENTS` as `ops.shipments`.
        text = f"{answer.kind}|{answer.text}"
        for n in names:
            text = re.sub(re.escape(n), "<TABLE>", text, flags=re.IGNORECASE)
        return re.sub(r"\d+ ?ms|\d{4}-\d\d-\d\dT[\d:.]+Z?", "<N>", text)

    pairs = [
        ("ops.shipments", "ops.no_such_table"),
        ("OPS.SHIPMENTS", "OPS.NO_SUCH_TABLE"),
        ("ops.shipments", "nope.no_such_table"),
    ]
    for real, fake in pairs:
        names = lambda n: [n, n.replace(".", "/"), n.split(".")[1], n.split(".")[0]]  # noqa: E731
        tools = [
            ("describe_table", lambda n: {"table": n}),
            ("get_contract", lambda n: {"table": n}),
            ("table_consumers", lambda n: {"table": n}),
            ("query", lambda n: {"sql": f"SELECT * FROM {n}"}),
            (
                "query",
                lambda n: {
                    "sql": f"SELECT count(*) FROM sales.orders o JOIN {n} s ON o.order_id = s.order_id"
                },
            ),
            (
                "query",
                lambda n: {
                    "sql": f"SELECT count(*) FROM {n} s JOIN sales.orders o ON o.order_id = s.order_id"
                },
            ),
            ("request_access", lambda n: {"tables": [n], "purpose": "logistics_planning"}),
            ("request_access", lambda n: {"tables": ["sales.orders", n], "purpose": "revenue_reporting"}),
        ]
        for tool, args in tools:
            a = await s.call(cls, f"marketing {tool} {real}", marketing, tool, args(real))
            b = await s.call(cls, f"marketing {tool} {fake}", marketing, tool, args(fake))
            s.check(
                f"{tool}: {real} reads as {fake}",
                cls,
                a.error and normal(a, names(real)) == normal(b, names(fake)),
                f"\n  {a.brief()}\n  {b.brief()}",
            )
        if (real, fake) == pairs[0]:
            a = await s.read(
                cls, "marketing reads contract://ops/shipments", marketing, "contract://ops/shipments"
            )
            b = await s.read(
                cls, "marketing reads contract://ops/no_such_table", marketing, "contract://ops/no_such_table"
            )
            s.check(
                "contract resource: ops/shipments reads as nonexistent",
                cls,
                a.error and normal(a, names(real)) == normal(b, names(fake)),
                f"\n  {a.brief()}\n  {b.brief()}",
            )
    # A principal nobody knows discovers nothing: sales.customers reads as a nonexistent table.
    for tool, args in [
        ("describe_table", {"table": "{}"}),
        ("get_contract", {"table": "{}"}),
        ("query", {"sql": "SELECT 1 FROM {}"}),
    ]:
        real = {k: v.format("sales.customers") for k, v in args.items()}
        fake = {k: v.format("sales.no_such_table") for k, v in args.items()}
        a = await s.call(cls, f"stranger {tool} sales.customers", nobody, tool, real)
        b = await s.call(cls, f"stranger {tool} sales.no_such_table", nobody, tool, fake)
        names_a = ["sales.customers", "customers"]
        names_b = ["sales.no_such_table", "no_such_table"]
        s.check(
            f"stranger {tool}: existing reads as nonexistent",
            cls,
            a.error and normal(a, names_a) == normal(b, names_b),
            f"\n  {a.brief()}\n  {b.brief()}",
        )
    a = await s.call(cls, "stranger lists tables", nobody, "list_tables", {})
    s.check("stranger lists nothing", cls, a.ok and a.data.get("tables") == [], a.brief())


def audit_records(data_dir: str) -> list[dict]:
    """The audit log as written on disk (every segment, in sequence order)."""
    audit_dir = os.path.join(data_dir, "audit")
    records = []
    for name in sorted(os.listdir(audit_dir)):
        if name.endswith(".jsonl"):
            with open(os.path.join(audit_dir, name)) as f:
                records += [json.loads(line) for line in f if line.strip()]
    return sorted(records, key=lambda r: r["seq"])


async def class6_audit(s: Suite, sessions: dict[str, Parley], grant: str | None, data_dir: str) -> None:
    """Each caller sees only audit records all of whose tables they own; none carries another owner's data."""
    cls, t = "6-audit", s.truth
    analyst, marketing = sessions["analyst"], sessions["marketing-agent"]
    email = t.de[7]["email"]
    # Records to find: joins across owners, some failing half-way, some carrying a real e-mail in their SQL.
    await s.expect_rows(
        cls,
        "analyst joins shipments and orders",
        analyst,
        "SELECT count(*) FROM ops.shipments s JOIN sales.orders o ON s.order_id = o.order_id",
        [[t.shipments_join_orders]],
    )
    await s.expect_rows(
        cls, "analyst reads shipments", analyst, "SELECT count(*) FROM ops.shipments", [[t.n_shipments]]
    )
    await s.query(
        cls,
        "analyst joins with an e-mail literal",
        analyst,
        "SELECT count(*) FROM ops.shipments s JOIN sales.orders o ON s.order_id = o.order_id WHERE "
        f"'{email}' <> ''",
    )
    await s.query(
        cls,
        "analyst joins customers without grant",
        analyst,
        "SELECT count(*) FROM ops.shipments s JOIN sales.customers c ON c.customer_id = s.shipment_id WHERE "
        f"c.email = '{email}'",
    )
    if grant:
        await s.query(
            cls,
            "analyst joins three tables under a grant",
            analyst,
            "SELECT count(*) FROM ops.shipments s JOIN sales.orders o ON s.order_id = o.order_id JOIN "
            f"sales.customers c ON c.customer_id = o.customer_id WHERE c.email <> '{email}'",
            grant,
            governed=True,
        )
    await s.query(
        cls,
        "marketing joins ops first",
        marketing,
        "SELECT count(*) FROM ops.shipments s JOIN sales.customers c ON c.customer_id = s.shipment_id WHERE "
        f"c.email = '{email}'",
    )
    await s.query(
        cls,
        "marketing joins sales first",
        marketing,
        "SELECT count(*) FROM sales.customers c JOIN ops.shipments s ON c.customer_id = s.shipment_id WHERE "
        f"c.email = '{email}'",
    )
    sessions_by = {"sales-owner": SALES_TABLES, "ops-owner": OPS_TABLES}
    columns = "seq, principal, tool, resource, decision, reason, purpose, sql, error"
    for who in ("analyst", "marketing-agent"):
        await s.expect_rows(
            cls, f"{who} counts audit records", sessions[who], "SELECT count(*) FROM parley.audit_log", [[0]]
        )
        a = await s.query(
            cls, f"{who} reads the audit log", sessions[who], f"SELECT {columns} FROM parley.audit_log"
        )
        s.check(f"{who} sees no audit record", cls, a.rows == [], a.brief())
        await s.expect_rows(
            cls,
            f"{who} looks for sales records",
            sessions[who],
            "SELECT count(*) FROM parley.audit_log WHERE resource LIKE '%sales%' OR sql LIKE '%@%'",
            [[0]],
        )
    for who, owned in sessions_by.items():
        client = sessions[who]
        other = "ops." if who == "sales-owner" else "sales."
        on_disk = audit_records(data_dir)
        expected = [r["seq"] for r in on_disk if all(p in owned for p in r["resource"].split(","))]
        # The owner reads what others did with their tables; sales-owner may see e-mails, ops-owner never.
        a = await s.query(
            cls,
            f"{who} reads the audit log",
            client,
            f"SELECT {columns} FROM parley.audit_log ORDER BY seq",
            scan=(who == "ops-owner"),
        )
        rows = a.rows or []
        seqs = [r[0] for r in rows]
        s.check(
            f"{who} sees exactly the records of their tables",
            cls,
            a.ok and seqs == expected,
            f"got {len(seqs)} expected {len(expected)}: extra {sorted(set(seqs) - set(expected))[:10]} "
            f"missing {sorted(set(expected) - set(seqs))[:10]}",
        )
        s.check(f"{who} sees some records", cls, len(rows) > 0, a.brief())
        foreign = [r for r in rows if other in (r[3] or "")]
        s.check(f"{who}: no visible record's resource names {other}*", cls, not foreign, foreign[:3])
        named = [r for r in rows if other in (r[7] or "") or other in (r[8] or "")]
        s.check(
            f"{who}: no visible record's SQL or error names {other}*",
            cls,
            not named,
            [(r[0], r[1], r[3], r[7]) for r in named[:3]],
        )
        if who == "ops-owner":
            with_email = [r for r in rows if EMAIL_IN_TEXT.search(json.dumps(r, ensure_ascii=False))]
            s.check(
                "ops-owner sees no e-mail address",
                cls,
                not with_email,
                [(r[0], r[1], r[3], r[7]) for r in with_email[:3]],
            )
        await s.expect_rows(
            cls,
            f"{who} filters for {other}* records",
            client,
            f"SELECT count(*) FROM parley.audit_log WHERE resource LIKE '%{other}%'",
            [[0]],
            scan=(who == "ops-owner"),
        )
        # The audit table joined with the owner's own table: still only their records.
        table = "ops.shipments" if who == "ops-owner" else "sales.orders"
        await s.expect_rows(
            cls,
            f"{who} joins the audit log with {table}",
            client,
            f"SELECT count(*) FROM parley.audit_log a JOIN (SELECT 1 AS one FROM {table} LIMIT 1) t ON true "
            f"WHERE a.resource LIKE '%{other}%'",
            [[0]],
            scan=(who == "ops-owner"),
        )


async def class7_bad_input(s: Suite, client: Parley, t: GroundTruth) -> None:
    """Malformed, deep and huge calls are refused; the same session then still answers SELECT 1."""
    cls = "7-bad-input"
    two_mb = "a" * (2 * 1024 * 1024)
    deep = ("levels deep", "recursion")
    cases: list[tuple[str, str, Any, tuple[str, ...]]] = [
        ("2000 additions", "query", {"sql": "SELECT 1" + " + 1" * 2000}, deep),
        (
            "2000 ORs",
            "query",
            {
                "sql": "SELECT count(*) FROM sales.orders WHERE "
                + " OR ".join(f"order_id = {i}" for i in range(2000))
            },
            deep,
        ),
        (
            "2000 ANDs",
            "query",
            {
                "sql": "SELECT count(*) FROM sales.orders WHERE "
                + " AND ".join(f"order_id <> {i}" for i in range(2000))
            },
            deep,
        ),
        ("3000 nested parentheses", "query", {"sql": "SELECT " + "(" * 3000 + "1" + ")" * 3000}, deep),
        # sqlparser's own recursion limit stops these with a syntax error: refused, which is all that matters.
        ("3000 NOTs", "query", {"sql": "SELECT " + "NOT " * 3000 + "true"}, ()),
        ("3000 unary minuses", "query", {"sql": "SELECT " + "- " * 3000 + "1"}, deep),
        (
            "1000 nested CASEs",
            "query",
            {"sql": "SELECT " + "CASE WHEN true THEN " * 1000 + "1" + " END" * 1000},
            (),
        ),
        ("2000 nested functions", "query", {"sql": "SELECT " + "abs(" * 2000 + "1" + ")" * 2000}, deep),
        ("300 nested subqueries", "query", {"sql": nested_subqueries(300)}, deep),
        ("2000 string concatenations", "query", {"sql": "SELECT 'a'" + " || 'a'" * 2000}, deep),
        ("SQL over 100 KB", "query", {"sql": "SELECT 1 -- " + "x" * 120_000}, ("bytes",)),
        ("2 MB SQL", "query", {"sql": f"SELECT '{two_mb}'"}, ("bytes",)),
        ("2 MB grant_id", "query", {"sql": "SELECT 1", "grant_id": two_mb}, ()),
        ("2 MB table name", "describe_table", {"table": two_mb}, ()),
        ("2 MB request id", "access_status", {"request_id": two_mb}, ()),
        ("sql is a number", "query", {"sql": 123}, ()),
        ("sql is null", "query", {"sql": None}, ()),
        ("sql is a list", "query", {"sql": ["SELECT 1"]}, ()),
        ("sql is an object", "query", {"sql": {"text": "SELECT 1"}}, ()),
        ("sql missing", "query", {}, ()),
        ("unknown argument", "query", {"sql": "SELECT 1", "as_user": "sales-owner"}, ()),
        ("max_rows is text", "query", {"sql": "SELECT 1", "max_rows": "ten"}, ()),
        ("max_rows negative", "query", {"sql": "SELECT 1", "max_rows": -1}, ()),
        ("max_rows huge", "query", {"sql": "SELECT 1", "max_rows": 10**15}, ()),
        ("max_rows fractional", "query", {"sql": "SELECT 1", "max_rows": 1.5}, ()),
        ("grant_id is a number", "query", {"sql": "SELECT 1", "grant_id": 42}, ()),
        ("purpose is an object", "query", {"sql": "SELECT 1", "purpose": {"a": 1}}, ()),
        ("table is null", "describe_table", {"table": None}, ()),
        ("table is a list", "describe_table", {"table": ["sales.orders"]}, ()),
        ("table empty", "describe_table", {"table": ""}, ()),
        ("table is a path", "describe_table", {"table": "../../../etc/passwd"}, ()),
        ("table with NUL", "get_contract", {"table": "sales.orders\u0000"}, ()),
        (
            "tables is a string",
            "request_access",
            {"tables": "sales.orders", "purpose": "revenue_reporting"},
            (),
        ),
        ("tables hold numbers", "request_access", {"tables": [1, 2], "purpose": "revenue_reporting"}, ()),
        ("purpose missing", "request_access", {"tables": ["sales.orders"]}, ()),
        (
            "duration is text",
            "request_access",
            {"tables": ["sales.orders"], "purpose": "revenue_reporting", "duration_days": "thirty"},
            (),
        ),
        (
            "row_scope is text",
            "request_access",
            {"tables": ["sales.orders"], "purpose": "revenue_reporting", "row_scope": "DE"},
            (),
        ),
        ("request_id is null", "accept_offer", {"request_id": None, "terms_hash": "x"}, ()),
        ("terms_hash is a number", "accept_offer", {"request_id": "req-1", "terms_hash": 123}, ()),
        ("approve is text", "decide_request", {"request_id": "req-1", "approve": "yes", "reason": "x"}, ()),
        ("limit is text", "list_tables", {"limit": "many"}, ()),
        ("filter is a number", "list_tables", {"filter": 7}, ()),
        ("unknown tool", "drop_table", {"table": "sales.orders"}, ()),
        ("empty tool name", "", {}, ()),
        ("tool name differs in case", "QUERY", {"sql": "SELECT 1"}, ()),
        ("tool name with NUL", "query\u0000", {"sql": "SELECT 1"}, ()),
        ("10 KB tool name", "q" * 10_000, {}, ()),
    ]
    for name, tool, args, words in cases:
        a = await s.call(cls, name, client, tool, args, timeout=90)
        s.check(f"{name}: a tool or JSON-RPC error", cls, a.error, a.brief())
        if words:
            s.check(
                f"{name}: says {' or '.join(words)}", cls, any(w in a.text.lower() for w in words), a.brief()
            )
        after = await s.call(cls, f"SELECT 1 after {name}", client, "query", {"sql": "SELECT 1"})
        s.check(f"the session still answers SELECT 1 after {name}", cls, after.rows == [[1]], after.brief())
        if not after.ok:
            await s.revive(client)
    # A long but flat IN list under the size limit is fine, and exact.
    ids = list(range(1, 12_001))
    expected = sum(t.order_ids[i] for i in ids)
    await s.expect_rows(
        cls,
        "12,000-item IN list",
        client,
        f"SELECT count(*) FROM sales.orders WHERE order_id IN ({','.join(map(str, ids))})",
        [[expected]],
        timeout=90,
    )


def nested_subqueries(depth: int) -> str:
    sql = "SELECT 1 AS x"
    for i in range(depth):
        sql = f"SELECT x FROM ({sql}) t{i}"
    return sql


async def year_only_on_text(s: Suite, owner: Parley, marketing: Parley) -> None:
    """An approver cannot mask a text column `year_only`: it keeps the year of a date, and on text it failed on every
    row with the clear value in the error (an outside attack read segments and countries so). The refusal names the
    masks that fit, quotes no value of the column, and leaves the request pending."""
    cls, t = "8-grants", s.truth
    asked = await s.call(
        cls,
        "marketing asks for countries and segments (pending)",
        marketing,
        "request_access",
        {
            "tables": ["sales.customers"],
            "purpose": "revenue_reporting",
            "columns": ["customer_id", "country", "segment"],
        },
    )
    if not s.check(
        "countries and segments for revenue_reporting are pending",
        cls,
        asked.ok and asked.data.get("status") == "pending",
        asked.brief(),
    ):
        return
    request = asked.data["request_id"]
    values = {
        "segment": {r["segment"] for r in t.customers.values() if r["segment"]},
        "country": set(t.countries),
    }
    for column, seen in values.items():
        a = await s.expect_error(
            cls,
            f"owner masks the text column {column} year_only",
            owner,
            "decide_request",
            {"request_id": request, "approve": True, "reason": "hide it", "masks": {column: "year_only"}},
        )
        s.check(
            f"year_only on {column}: the refusal names redact or hash",
            cls,
            "redact" in a.text.lower() or "hash" in a.text.lower(),
            a.brief(),
        )
        quoted = sorted(v for v in seen if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", a.text))
        s.check(
            f"year_only on {column}: the refusal quotes no value of it", cls, not quoted, f"{quoted} in {a.brief()}"
        )
    status = await s.call(
        cls, "marketing reads the refused request", marketing, "access_status", {"request_id": request}
    )
    s.check(
        "refused decisions leave the request pending",
        cls,
        status.ok and status.data.get("state") == "requested",
        status.brief(),
    )


async def class8_grants(s: Suite, sessions: dict[str, Parley], grant: str | None) -> None:
    """Quotas and expiry set by the approver hold; a revoked grant stops; nobody uses or decides another's; an
    approver cannot pick a mask that does not fit the column."""
    cls, t = "8-grants", s.truth
    analyst, owner, marketing = sessions["analyst"], sessions["sales-owner"], sessions["marketing-agent"]
    await year_only_on_text(s, owner, marketing)
    orders = {"tables": ["sales.orders"], "purpose": "pricing_research"}
    quota = await s.call(cls, "analyst asks for orders (pending)", analyst, "request_access", orders)
    expiry = await s.call(
        cls,
        "analyst asks again (pending)",
        analyst,
        "request_access",
        {**orders, "purpose": "audit_sampling"},
    )
    s.check(
        "requests are pending",
        cls,
        quota.ok and expiry.ok and quota.data.get("status") == "pending" == expiry.data.get("status"),
        f"{quota.brief()} {expiry.brief()}",
    )
    if not (quota.ok and expiry.ok):
        return
    qid, eid = quota.data["request_id"], expiry.data["request_id"]
    await s.expect_error(
        cls,
        "analyst decides own request",
        analyst,
        "decide_request",
        {"request_id": qid, "approve": True, "reason": "me"},
    )
    await s.expect_error(
        cls,
        "marketing decides the analyst's request",
        marketing,
        "decide_request",
        {"request_id": qid, "approve": True, "reason": "me"},
    )
    await s.expect_error(
        cls, "marketing reads the analyst's request", marketing, "access_status", {"request_id": qid}
    )
    a = await s.call(
        cls,
        "owner approves with a quota",
        owner,
        "decide_request",
        {"request_id": qid, "approve": True, "reason": "two queries", "max_queries": 2},
    )
    s.check("approved with a quota", cls, a.ok, a.brief())
    ends = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    a = await s.call(
        cls,
        "owner approves briefly",
        owner,
        "decide_request",
        {"request_id": eid, "approve": True, "reason": "briefly", "expires_at": ends.isoformat()},
    )
    s.check("approved with an expiry", cls, a.ok, a.brief())
    status = await s.call(
        cls, "analyst reads the quota request", analyst, "access_status", {"request_id": qid}
    )
    quota_grant = (status.data or {}).get("grant_id")
    status = await s.call(
        cls, "analyst reads the expiry request", analyst, "access_status", {"request_id": eid}
    )
    expiry_grant = (status.data or {}).get("grant_id")
    count = "SELECT count(*) FROM sales.orders"
    if quota_grant:
        await s.expect_rows(cls, "quota query 1", analyst, count, [[t.n_orders]], quota_grant)
        await s.expect_rows(cls, "quota query 2", analyst, count, [[t.n_orders]], quota_grant)
        await s.expect_error(
            cls, "quota query 3", analyst, "query", {"sql": count, "grant_id": quota_grant}, ("quota",)
        )
        await s.expect_error(
            cls,
            "marketing uses the analyst's quota grant",
            marketing,
            "query",
            {"sql": count, "grant_id": quota_grant},
        )
    if expiry_grant:
        await s.expect_rows(cls, "query before expiry", analyst, count, [[t.n_orders]], expiry_grant)
        await asyncio.sleep(
            max(0.0, (ends - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 0.3
        )
        await s.expect_error(
            cls,
            "query after expiry",
            analyst,
            "query",
            {"sql": count, "grant_id": expiry_grant},
            ("expired",),
        )
    if grant:
        await s.expect_error(
            cls,
            "marketing revokes the analyst's grant",
            marketing,
            "revoke_grant",
            {"grant_id": grant, "reason": "mine now"},
        )
        await s.expect_rows(
            cls,
            "grant alive after a refused revocation",
            analyst,
            "SELECT count(*) FROM sales.customers",
            [[t.n_de]],
            grant,
            governed=True,
        )
        a = await s.call(
            cls,
            "owner revokes the analyst's grant",
            owner,
            "revoke_grant",
            {"grant_id": grant, "reason": "project over"},
        )
        s.check("revoked", cls, a.ok, a.brief())
        await s.expect_error(
            cls,
            "query under a revoked grant",
            analyst,
            "query",
            {"sql": "SELECT count(*) FROM sales.customers", "grant_id": grant},
            ("revoked",),
        )
        await s.expect_error(
            cls,
            "purpose after revocation",
            analyst,
            "query",
            {"sql": "SELECT count(*) FROM sales.customers", "purpose": "churn_analysis"},
        )


async def hash_salt_check(s: Suite, analyst: Parley, marketing: Parley, grant: str | None) -> None:
    """Masked values do not link across grants: the same e-mail hashes differently under two grants."""
    probe = s.hash_probe
    if not (grant and probe):
        return
    marketing_grant, customer = probe
    sql = f"SELECT email FROM sales.customers WHERE customer_id = {customer}"
    a = await s.query("2-columns", "analyst hash of one customer", analyst, sql, grant, governed=True)
    b = await s.query("2-columns", "marketing hash of the same customer", marketing, sql, marketing_grant)
    s.check(
        "hashes differ between grants",
        "2-columns",
        a.rows and b.rows and a.rows[0][0] != b.rows[0][0],
        f"{a.brief()} {b.brief()}",
    )



def process_with_env(marker: str) -> int | None:
    """The pid of the process whose environment holds `marker` (the server class 9 started)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    return int(entry)
    return None


def memory_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def doubling(step: str, levels: int = 30) -> str:
    """A CTE chain whose every level doubles a value by `step` (over `s`)."""
    ctes = ["l0 AS (SELECT order_id, repeat('x', 1000) AS s FROM sales.orders)"]
    ctes += [f"l{i} AS (SELECT order_id, {step} AS s FROM l{i - 1})" for i in range(1, levels)]
    return f"WITH {', '.join(ctes)} SELECT order_id, length(s) FROM l{levels - 1}"


# A 1 MiB value the planner cannot fold into a literal (so it is built per batch, as data would be).
MIB_VALUE = "repeat('x', 1048576 + CAST(random() * 0 AS BIGINT))"
# How much class 9's peak resident memory may grow while one of the outside attack's cases runs (the attack took
# +2.4 GB for a reply and +2.2 GB for capture groups; the values themselves are a few MiB).
CASE_GROWTH = 128 << 20


async def memory_outside_attack(s: Suite, client: Parley, pid: int) -> None:
    """The outside attack's cases against class 9's server (256 MiB pool): a reply of cells formatted from 400
    references to one 1 MiB value (nothing for the engine, 400 MiB of text) stays within its byte budget and builds
    no more; `regexp_match` copying a large value per capture group is refused before it builds; `levenshtein` of
    two long strings on every query slot at once is refused or stopped at the time limit, and the next query is
    answered at once (the attack held every slot for minutes past the limit)."""
    cls = "9-memory"

    def grown_since(peak_kib: int) -> int:
        return (memory_kib(pid, "VmHWM") - peak_kib) * 1024

    wide = f"WITH s AS (SELECT {MIB_VALUE} AS v) SELECT struct({', '.join(['v'] * 400)}) AS big FROM s"
    for budget in (None, 4 << 20):
        cap = budget or 8192  # without max_bytes: the default reply budget (`query.default_reply_bytes`)
        args: dict[str, Any] = {"sql": wide} if budget is None else {"sql": wide, "max_rows": 10, "max_bytes": budget}
        name = f"a struct of 400 copies of a 1 MiB value, reply budget {cap} bytes"
        peak = memory_kib(pid, "VmHWM")
        a = await s.call(cls, name, client, "query", args)
        grown = grown_since(peak)
        s.check(f"{name}: no 400 MiB cell in the reply", cls, a.error or a.rows == [], a.brief())
        reply_bytes = int((a.data or {}).get("result_bytes", cap + 1))
        s.check(
            f"{name}: the reply stays within its budget",
            cls,
            a.error or (reply_bytes <= cap and len(a.text) <= 2 * cap + (64 << 10)),
            f"{reply_bytes} bytes of rows, {len(a.text)} characters: {a.brief()}",
        )
        s.check(f"{name}: peak memory grew by at most {CASE_GROWTH >> 20} MiB", cls, grown <= CASE_GROWTH,
                f"+{grown >> 20} MiB")

    name = "regexp_match with 240 capture groups over 1 MiB values"
    groups = "(" * 240 + ".*" + ")" * 240
    sql = (
        f"WITH s AS (SELECT {MIB_VALUE} AS v), r AS (SELECT order_id FROM sales.orders ORDER BY order_id LIMIT 8) "
        f"SELECT sum(cardinality(regexp_match(v, '{groups}'))) FROM s CROSS JOIN r"
    )
    peak = memory_kib(pid, "VmHWM")
    await s.expect_error(cls, name, client, "query", {"sql": sql}, ("would build",))
    grown = grown_since(peak)
    s.check(f"{name}: peak memory grew by at most {CASE_GROWTH >> 20} MiB", cls, grown <= CASE_GROWTH,
            f"+{grown >> 20} MiB")

    # As many copies as the server has query slots by default (2 per core), each 2.25e10 steps computed without a
    # yield: minutes of a core apiece.
    slots = 2 * len(os.sched_getaffinity(0))
    long = "repeat('{}', 150000 + CAST(random() * 0 AS BIGINT))"
    sql = f"SELECT levenshtein({long.format('a')}, {long.format('b')})"
    answers = await asyncio.gather(
        *(
            s.query(cls, f"levenshtein of two 150 KB strings, copy {i}", client, sql, max_rows=10, timeout=90)
            for i in range(slots)
        )
    )
    late = [a.brief(160) for a in answers if not ((a.ok or a.error) and a.seconds <= 40)]
    s.check(f"{slots} levenshtein copies: each refused or answered within the 30 s time limit (+10 s)", cls, not late,
            late[:2])
    limits = ("steps", "would build", "time limit", "longer than")
    vague = [a.brief(200) for a in answers if a.error and not any(w in a.text.lower() for w in limits)]
    s.check("levenshtein refusals name the limit", cls, not vague, vague[:1])
    after = await s.expect_rows(cls, "SELECT 1 right after the levenshtein copies", client, "SELECT 1", [[1]])
    s.check("SELECT 1 right after the levenshtein copies: within 5 s", cls, after.seconds <= 5, after.brief())


async def class9_memory(s: Suite, binary: str, data_dir: str, scratch: str) -> None:
    """Values built by expressions, literals broadcast over batches and many of both at once (and the outside
    attack's cases, `memory_outside_attack`), against a server with a 256 MiB pool: every call is answered (rows or
    a clear error), the server still answers afterwards, and its peak resident memory stays within what it held
    before, plus the pool, plus a stated constant."""
    cls = "9-memory"
    marker = f"PARLEY_ADVERSARIAL_PROBE=memory-{os.getpid()}"
    env = {"PARLEY_QUERY_MEMORY_BYTES": str(MEMORY_POOL), marker.split("=")[0]: marker.split("=")[1]}
    client = Parley(binary, data_dir, "analyst", scratch, env)
    try:
        await client.open()
        warm = await s.expect_rows(cls, "warm-up", client, "SELECT count(*) FROM sales.orders", [[s.truth.n_orders]])
        pid = process_with_env(marker)
        if not s.check("the class's server process found", cls, pid is not None, marker):
            return
        before = memory_kib(pid, "VmRSS")
        await memory_outside_attack(s, client, pid)
        n = s.truth.n_orders
        big = "y" * 90_000
        refused = ("would build", "memory", "constants")
        attacks: list[tuple[str, str, tuple[str, ...] | None]] = [
            # (name, sql, words the error must hold; None when an answer with rows is also fine)
            ("repeat 100 KB per order (the report's case)", "SELECT order_id, repeat('x', 100000) FROM sales.orders", None),
            ("lpad to a million characters per order", "SELECT lpad('a', 1000000) FROM sales.orders", refused),
            ("|| doubling through 30 CTEs", doubling("s || s"), refused),
            ("concat doubling through 30 CTEs", doubling("concat(s, s)"), refused),
            ("concat_ws with the value as separator", doubling("concat_ws(s, s, s)"), refused),
            ("replace doubling", doubling("replace(s, 'x', 'xx')"), refused),
            ("regexp_replace with group references", doubling("regexp_replace(s, '(x+)', '\\1\\1')"), refused),
            ("encode to hex, doubling", doubling("encode(s, 'hex')"), refused),
            ("translate to two-byte characters", doubling("translate(s, 'x', 'ü')", 8), None),
            ("make_array and array_to_string", doubling("array_to_string(make_array(s, s), '')"), refused),
            ("one replace multiplying a value by 1000", "SELECT length(replace(repeat('a', 100000), 'a', repeat('b', 1000)))", refused),
            ("array_to_string with a 1 KB separator", "SELECT length(array_to_string(range(0, 100000), repeat('-', 1000)))", refused),
            ("a 90 KB literal per order", f"SELECT order_id, '{big}' AS v FROM sales.orders", None),
            ("a 90 KB literal counted over all orders", f"SELECT count(v) FROM (SELECT '{big}' AS v FROM sales.orders)", None),
            (
                "a CTE literal inlined 400 times",
                "WITH a AS (SELECT '" + "z" * 40_000 + "' AS s) SELECT " + ", ".join(f"substr(s, {i}) AS c{i}" for i in range(400)) + " FROM a",
                None,
            ),
            (
                "eight 60 KB columns per order",
                "SELECT " + ", ".join(f"length(repeat('x', {60_000 + i})) AS c{i}" for i in range(8)) + " FROM sales.orders",
                None,
            ),
            (
                "string_agg over orders × orders",
                "SELECT length(string_agg(repeat('x', 1000), ',')) FROM sales.orders a CROSS JOIN sales.orders b",
                None,
            ),
            ("array_agg of 10 KB values", "SELECT cardinality(array_agg(repeat('x', 10000))) FROM sales.orders a CROSS JOIN sales.orders b", None),
            ("unnest of a million-element range per order", "SELECT count(*) FROM (SELECT unnest(range(0, 1000000)) FROM sales.orders)", refused),
        ]
        peak = memory_kib(pid, "VmHWM")
        for name, sql, words in attacks:
            answer = await s.query(cls, name, client, sql, max_rows=10)
            now = memory_kib(pid, "VmHWM")
            if now > peak + 64 * 1024:
                print(f"  9-memory: peak {now // 1024} MiB after {name!r}", flush=True)
            peak = now
            if words is not None:
                s.check(f"{name}: refused", cls, answer.error, answer.brief())
            if answer.error:
                s.check(
                    f"{name}: the error names the limit",
                    cls,
                    any(w in answer.text.lower() for w in refused),
                    answer.brief(),
                )
        # The report's case, 32 at once.
        answers = await asyncio.gather(
            *(
                s.query(cls, f"repeat 100 KB per order, copy {i}", client, attacks[0][1], max_rows=10)
                for i in range(32)
            )
        )
        s.check("32 concurrent copies all answered", cls, all(a.ok or a.error for a in answers))
        # A literal broadcast answers the right rows: as many as pyiceberg counts.
        count = await s.expect_rows(
            cls,
            "a 90 KB literal counted",
            client,
            f"SELECT count(v) FROM (SELECT '{big}' AS v FROM sales.orders)",
            [[n]],
        )
        del count, warm
        await s.expect_rows(cls, "the server still answers", client, "SELECT 1", [[1]])
        peak = memory_kib(pid, "VmHWM")
        allowed = before + (MEMORY_POOL + MEMORY_CONSTANT) // 1024
        print(
            f"  9-memory: resident before {before // 1024} MiB, peak {peak // 1024} MiB, "
            f"allowed {allowed // 1024} MiB (pool {MEMORY_POOL >> 20} MiB + {MEMORY_CONSTANT >> 20} MiB)",
            flush=True,
        )
        s.attempts[cls] += 1
        s.check("peak memory within the pool plus the stated constant", cls, peak <= allowed, f"{peak} KiB > {allowed} KiB")
    finally:
        await client.close()

# Class 10's grant: a purpose sales.orders' contract does not allow, so its owner decides (and sets the quota).
QUOTA_PURPOSE = "quota_testing"
QUOTA_ROWS = 5


async def class10_quota(s: Suite, binary: str, data_dir: str, scratch: str) -> None:
    """An approver's row quota bounds the rows all queries under the grant return together (an outside attack had
    10,000 rows from one query and 20,000 from four concurrent ones under `max_rows: 5`): a failed query keeps none
    of it, concurrent queries share what is left (each answer pyiceberg's rows, the one the quota cut saying so),
    usage counts exactly the rows returned, and the next query is refused naming the quota. Its own processes and
    grant, so no other class's grants are touched."""
    cls, t = "10-quota", s.truth
    analyst = Parley(binary, data_dir, "analyst", scratch)
    owner = Parley(binary, data_dir, "sales-owner", scratch)
    try:
        await analyst.open()
        await owner.open()
        orders = {"tables": ["sales.orders"], "purpose": QUOTA_PURPOSE}
        asked = await s.call(cls, "analyst asks for sales.orders (pending)", analyst, "request_access", orders)
        pending = asked.ok and asked.data.get("status") == "pending"
        if not s.check("the request is pending", cls, pending, asked.brief()):
            return
        request = asked.data["request_id"]
        decision = {"request_id": request, "approve": True, "reason": "five rows in all", "max_rows": QUOTA_ROWS}
        decided = await s.call(cls, f"owner approves with max_rows {QUOTA_ROWS}", owner, "decide_request", decision)
        status = await s.call(cls, "analyst reads the request", analyst, "access_status", {"request_id": request})
        grant = (status.data or {}).get("grant_id")
        if not s.check("approved: the analyst has a grant", cls, decided.ok and grant, status.brief()):
            return

        async def usage(name: str) -> dict:
            a = await s.call(cls, name, analyst, "my_grants", {})
            mine = [g for g in (a.data or {}).get("grants", []) if g.get("grant_id") == grant]
            listed = bool(mine) and mine[0].get("terms", {}).get("max_rows") == QUOTA_ROWS
            s.check(f"{name}: my_grants lists the grant with its quota", cls, listed, a.brief())
            return (mine[0].get("usage") or {}) if mine else {}

        # Queries failing as they run (after their rows were reserved) keep none of the quota.
        for name, sql in [
            ("division by zero", "SELECT order_id / (order_id - order_id) FROM sales.orders ORDER BY order_id"),
            ("a cast of text to a number", "SELECT CAST(status AS BIGINT) FROM sales.orders"),
        ]:
            await s.expect_error(cls, f"failing query: {name}", analyst, "query", {"sql": sql, "grant_id": grant})
            used = await usage(f"usage right after the failing query ({name})")
            if not s.check(f"a failing query ({name}) keeps no rows of the quota", cls, used.get("rows") == 0, used):
                # A build that gives rows back in the background: let it, so the checks below test the quota itself.
                await asyncio.sleep(1.0)

        ids = sorted(t.order_ids.elements())
        ordered = "SELECT order_id FROM sales.orders ORDER BY order_id"
        # The caller's own max_rows cuts this one (the quota has more left): it says so, not the quota.
        first = await s.expect_rows(cls, "2 rows of 5", analyst, ordered, [[i] for i in ids[:2]], grant, max_rows=2)
        cut = (first.data or {}).get("truncated_by")
        s.check("2 rows of 5: cut by max_rows, not by the quota", cls, cut == "max_rows", first.brief())
        used = await usage("usage after 2 rows")
        s.check("usage counts the 2 rows returned", cls, used.get("rows") == 2, used)

        # Six queries at once, 1,000 rows each asked: together at most (and, the table being larger, exactly) the 3
        # rows left, each answer pyiceberg's first rows of its own SQL.
        left, n = QUOTA_ROWS - 2, 6
        residue = "SELECT order_id FROM sales.orders WHERE order_id % {n} = {i} ORDER BY order_id"
        answers = await asyncio.gather(
            *(
                s.query(cls, f"concurrent query {i}", analyst, residue.format(n=n, i=i), grant, max_rows=1000)
                for i in range(n)
            )
        )
        returned = sum(len(a.rows) for a in answers if a.rows is not None)
        briefs = [a.brief(120) for a in answers]
        s.check(f"{n} concurrent queries return at most the {left} rows left", cls, returned <= left, briefs)
        s.check(f"{n} concurrent queries return all {left} rows left", cls, returned == left, briefs)
        for i, a in enumerate(answers):
            theirs = [[x] for x in ids if x % n == i]
            if a.rows is None:
                refused = a.error and "quota" in a.text.lower()
                s.check(f"concurrent query {i}: refused naming the quota", cls, refused, a.brief())
                continue
            s.check(f"concurrent query {i}: pyiceberg's first rows", cls, a.rows == theirs[: len(a.rows)], a.brief())
            if len(a.rows) < min(1000, len(theirs)):
                cut = str((a.data or {}).get("truncated_by"))
                s.check(f"concurrent query {i}: truncated_by names the row quota", cls, "row quota" in cut, a.brief())
        used = await usage("usage after the concurrent queries")
        s.check(
            "usage rows equal the rows returned, the whole quota",
            cls,
            used.get("rows") == 2 + returned == QUOTA_ROWS,
            f"usage {used}, returned {2 + returned}",
        )
        for name, sql in [
            ("a query past the quota", "SELECT count(*) FROM sales.orders"),
            ("a failing query past the quota", "SELECT order_id / (order_id - order_id) FROM sales.orders"),
        ]:
            await s.expect_error(cls, name, analyst, "query", {"sql": sql, "grant_id": grant}, ("quota",))
        used = await usage("usage at the end")
        s.check("usage never passes the quota", cls, used.get("rows") == QUOTA_ROWS, used)
    finally:
        # Last opened, first closed: each transport's cancel scope must end in the order anyio nests them.
        await owner.close()
        await analyst.close()


# Class 11: the HTTP transport (README, "Security model": 64 sessions per principal, headers within 10 s, a request
# without a valid token answered and its connection closed, a loopback server refusing other origins).
HTTP_PROTOCOL = "2025-06-18"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": HTTP_PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "adversarial", "version": "1"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
SESSIONS_PER_PRINCIPAL = 64
FLOOD_SESSIONS = 400
# What 400 sessions may add to the server's resident memory: the 64 kept open (~0.5 MB each) and the allocator's
# churn (34-44 MiB measured for 200); 400 of them, unbounded, took ~200 MB.
FLOOD_GROWTH = 96 << 20
HEADER_TIMEOUT = 10.0


def free_port() -> int:
    """A loopback port nothing listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HttpServer:
    """One `parley serve --http 127.0.0.1:PORT ...` process of class 11's, on a free port; `stop` ends it (by its
    pid)."""

    def __init__(self, binary: str, data_dir: str, scratch: str, name: str, args: list[str]) -> None:
        self.port = free_port()
        self.log = open(os.path.join(scratch, f"{name}.log"), "a")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", data_dir, "--http", f"127.0.0.1:{self.port}", *args],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PARLEY_LOG": "warn"},
        )

    def ready(self, timeout: float = CALL_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            time.sleep(0.05)
        return False

    def rss(self) -> int:
        return memory_kib(self.proc.pid, "VmRSS") * 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class HttpAnswer:
    """One HTTP request's outcome; status 0 when no answer came (the text then says why)."""

    status: int
    headers: dict[str, str]
    text: str
    seconds: float

    def messages(self) -> list[dict]:
        """The JSON-RPC messages of the body: its server-sent events' `data:` lines, or the body as one document."""
        found = []
        for line in self.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line[5:]))
        if not found:
            with contextlib.suppress(ValueError):
                found.append(json.loads(self.text))
        return [m for m in found if isinstance(m, dict)]

    def reply(self, request_id: int) -> dict:
        return next((m for m in self.messages() if m.get("id") == request_id), {})

    def brief(self, limit: int = 300) -> str:
        text = self.text if len(self.text) <= limit else self.text[:limit] + "..."
        return f"HTTP {self.status} after {self.seconds:.2f}s: {text}"


def http_request(port: int, message: Any, headers: dict[str, str], method: str = "POST") -> HttpAnswer:
    """One request to /mcp on a connection of its own."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
    try:
        body = None if message is None else json.dumps(message).encode()
        base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        conn.request(method, "/mcp", body=body, headers={**base, **headers})
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        found = {k.lower(): v for k, v in response.getheaders()}
        return HttpAnswer(response.status, found, text, time.monotonic() - started)
    except (OSError, http.client.HTTPException) as e:
        return HttpAnswer(0, {}, f"{type(e).__name__}: {e}", time.monotonic() - started)
    finally:
        conn.close()


def refused_connection(port: int, token: str | None) -> tuple[HttpAnswer, bool]:
    """`initialize` with `token` (None: no Authorization header) on a connection asking to be kept alive: the
    answer, and whether the server then closed the connection (end of stream or reset within 2 s of the answer)."""
    body = json.dumps(INITIALIZE).encode()
    lines = [
        "POST /mcp HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        "Connection: keep-alive",
        f"Content-Length: {len(body)}",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    started = time.monotonic()
    data, closed, answered_at = b"", False, None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while True:
            if answered_at is not None:
                sock.settimeout(max(0.01, answered_at + 2 - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            head, ended, rest = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if answered_at is None and ended and length and len(rest) >= int(length.group(1)):
                answered_at = time.monotonic()
    head, _, rest = data.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode(errors="replace").partition(":")
        headers[name.strip().lower()] = value.strip()
    text = rest.decode(errors="replace") if status else f"no answer: {data[:200]!r}"
    return HttpAnswer(int(status.group(1)) if status else 0, headers, text, time.monotonic() - started), closed


def trickle_headers(port: int, give_up: float = 25.0) -> float | None:
    """Sends a request's headers one byte a second: the seconds until the server closed the connection (or answered,
    e.g. 408), or None when it still held it after `give_up` seconds."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Trickle: ".encode())
        sock.settimeout(1.0)
        while time.monotonic() - started < give_up:
            try:
                sock.sendall(b"a")
                sock.recv(4096)  # an answer or the end of the stream: the server is done with the connection
                return time.monotonic() - started
            except socket.timeout:
                continue
            except OSError:
                return time.monotonic() - started
    return None


def mint_token(binary: str, data_dir: str, principal: str, groups: str | None) -> str:
    args = [binary, "token", "--data-dir", data_dir, "--principal", principal, "--ttl", "1h"]
    if groups:
        args += ["--groups", groups]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def mcp_headers(token: str | None, session: str | None = None) -> dict[str, str]:
    headers = {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if session:
        headers |= {"mcp-session-id": session, "mcp-protocol-version": HTTP_PROTOCOL}
    return headers


async def http_call(s: Suite, cls: str, name: str, port: int, message: Any, headers: dict[str, str]) -> HttpAnswer:
    """One attack over HTTP, checked as `Suite.call` checks one over stdio: an answer came, holding no secret the
    request did not."""
    s.attempts[cls] += 1
    answer = await asyncio.to_thread(http_request, port, message, headers)
    s.check(f"{name}: answered", cls, answer.status != 0, answer.brief())
    leaks = s.truth.leaks(answer.text, json.dumps(message, ensure_ascii=False), False)
    s.check(f"{name}: nothing leaked", cls, not leaks, f"{leaks} in {answer.brief()}")
    return answer


async def http_session(s: Suite, cls: str, name: str, port: int, token: str | None) -> str | None:
    """A session opened as an MCP client opens one (initialize, then notifications/initialized)."""
    a = await http_call(s, cls, f"{name}: initialize", port, INITIALIZE, mcp_headers(token))
    session = a.headers.get("mcp-session-id")
    if not s.check(f"{name}: initialize opens a session", cls, a.status == 200 and session, a.brief()):
        return None
    a = await http_call(s, cls, f"{name}: initialized", port, INITIALIZED, mcp_headers(token, session))
    s.check(f"{name}: initialized accepted", cls, a.status in (200, 202), a.brief())
    return session


async def http_select(s: Suite, cls: str, name: str, port: int, token: str | None, session: str | None) -> HttpAnswer:
    """`SELECT 1` through the query tool in `session`, checked for its one row."""
    message = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
               "params": {"name": "query", "arguments": {"sql": "SELECT 1"}}}
    a = await http_call(s, cls, name, port, message, mcp_headers(token, session))
    rows = (a.reply(9).get("result") or {}).get("structuredContent", {}).get("rows")
    s.check(f"{name}: SELECT 1 answers [[1]]", cls, a.status == 200 and rows == [[1]], a.brief())
    return a


async def class11_http(s: Suite, binary: str, data_dir: str, scratch: str) -> None:
    """The HTTP transport under an outside attack's cases: a token holder opening sessions without end (the server
    grew ~0.5 MB a session, unbounded), headers trickled to hold a connection (held forever), requests without a
    valid token (not always answered, connection kept), a web page's `Origin` on the token-less loopback server
    (accepted), and bad params for a known method (answered "method not found")."""
    cls = "11-http"
    # One after the other: each opens the data dir's stores as it starts.
    server = HttpServer(binary, data_dir, scratch, "http-tokens", ["--dev-issuer"])
    local = None
    try:
        up = [await asyncio.to_thread(server.ready)]
        local = HttpServer(binary, data_dir, scratch, "http-local", ["--principal", "analyst"])
        up.append(await asyncio.to_thread(local.ready))
        s.attempts[cls] += 1
        if not s.check("both HTTP servers listen", cls, all(up), f"{up}; logs in {scratch}"):
            return
        port = server.port
        analyst = await asyncio.to_thread(mint_token, binary, data_dir, "analyst", "analysts")
        flooder = await asyncio.to_thread(mint_token, binary, data_dir, "session-flooder", None)
        mine = await http_session(s, cls, "analyst", port, analyst)
        await http_select(s, cls, "analyst's session", port, analyst, mine)

        def rpc(request_id: int, method: str, params: dict | None = None) -> dict:
            message = {"jsonrpc": "2.0", "id": request_id, "method": method}
            return message if params is None else {**message, "params": params}

        # (a) One token holder opens 200 more sessions (initialize only): past 64 its oldest are closed, and the
        # server's memory stays put; other principals' sessions are untouched.
        oldest = await http_session(s, cls, "the flooder's first session", port, flooder)
        before = server.rss()
        flood = await asyncio.to_thread(
            lambda: [http_request(port, INITIALIZE, mcp_headers(flooder)) for _ in range(FLOOD_SESSIONS)]
        )
        s.attempts[cls] += len(flood)
        await asyncio.sleep(0.5)
        grown = server.rss() - before
        print(f"  11-http: {FLOOD_SESSIONS} sessions grew the server's resident memory by {grown >> 20} MiB",
              flush=True)
        opened = [a.headers.get("mcp-session-id") for a in flood if a.status == 200]
        s.check(
            f"{FLOOD_SESSIONS} more sessions by one principal are each answered",
            cls,
            len(opened) == FLOOD_SESSIONS and all(opened),
            next((a.brief() for a in flood if a.status != 200), ""),
        )
        leaks = [x for a in flood for x in s.truth.leaks(a.text, json.dumps(INITIALIZE), False)]
        s.check(f"{FLOOD_SESSIONS} sessions: nothing leaked", cls, not leaks, leaks[:3])
        s.check(
            f"{FLOOD_SESSIONS} sessions grow resident memory by less than {FLOOD_GROWTH >> 20} MiB",
            cls,
            grown < FLOOD_GROWTH,
            f"+{grown >> 20} MiB",
        )
        if oldest:
            a = await http_call(s, cls, "the oldest session", port, rpc(2, "tools/list"), mcp_headers(flooder, oldest))
            closed = a.status == 404
            s.check(f"the oldest session is closed once {SESSIONS_PER_PRINCIPAL} newer are open: 404", cls, closed,
                    a.brief())
        if opened:
            newest = mcp_headers(flooder, opened[-1])
            await http_call(s, cls, "the newest session: initialized", port, INITIALIZED, newest)
            a = await http_call(s, cls, "the newest session", port, rpc(3, "tools/list"), newest)
            s.check("the newest session is still open", cls, a.status == 200 and "result" in a.reply(3), a.brief())
        fresh = await http_session(s, cls, "the flooder's session after the flood", port, flooder)
        a = await http_call(s, cls, "a new session after the flood", port, rpc(4, "tools/list"),
                            mcp_headers(flooder, fresh))
        s.check("a new session after the flood works", cls, a.status == 200 and "result" in a.reply(4), a.brief())
        await http_select(s, cls, "another principal's session after the flood", port, analyst, mine)

        # (e) Bad params for a method MCP defines: invalid params (-32602), not "method not found" (-32601).
        for request_id, params in [(5, {"level": "loud"}), (6, {})]:
            a = await http_call(s, cls, f"logging/setLevel {params}", port, rpc(request_id, "logging/setLevel", params),
                                mcp_headers(analyst, mine))
            error = a.reply(request_id).get("error") or {}
            invalid = error.get("code") == -32602 and "invalid params" in str(error.get("message")).lower()
            s.check(f"logging/setLevel {params}: -32602 invalid params", cls, invalid, a.brief())
        a = await http_call(s, cls, "logging/setLevel warning", port, rpc(7, "logging/setLevel", {"level": "warning"}),
                            mcp_headers(analyst, mine))
        s.check("logging/setLevel warning: accepted", cls, "result" in a.reply(7), a.brief())

        # (b) Headers trickled a byte a second: the connection is closed at the header time limit, while others are
        # served.
        s.attempts[cls] += 1
        trickle = asyncio.create_task(asyncio.to_thread(trickle_headers, port))
        for i in range(3):
            await asyncio.sleep(2.5)
            await http_select(s, cls, f"analyst while headers trickle ({i + 1})", port, analyst, mine)
        closed_after = await trickle
        s.check(
            f"trickled headers: the connection is closed within {HEADER_TIMEOUT:.0f}-15 s",
            cls,
            closed_after is not None and closed_after <= HEADER_TIMEOUT + 5,
            "still open after 25 s" if closed_after is None else f"closed after {closed_after:.1f} s",
        )

        # (c) Without a valid token: 401 with a challenge, and the connection closed (it keeps no connection slot).
        refusals = []
        for token in [None, None, None, "not-a-token", "not-a-token", analyst[:-8] + "AAAAAAAA"]:
            s.attempts[cls] += 1
            refusals.append(await asyncio.to_thread(refused_connection, port, token))
        challenged = all(a.status == 401 and "www-authenticate" in a.headers for a, _ in refusals)
        s.check("requests without a valid token are answered 401 with a challenge", cls, challenged,
                [a.brief(120) for a, _ in refusals if a.status != 401][:2])
        close = all(a.headers.get("connection", "").lower() == "close" for a, _ in refusals)
        s.check("401 answers say Connection: close", cls, close, [a.headers for a, _ in refusals][:1])
        s.check("the server closes the connection after a 401", cls, all(c for _, c in refusals),
                [c for _, c in refusals])
        leaks = [x for a, _ in refusals for x in s.truth.leaks(a.text, "", False)]
        s.check("401 answers: nothing leaked", cls, not leaks, leaks[:3])

        # (d) The token-less loopback server: a web page's Origin is refused; a local client (no Origin, or a
        # loopback one) is served.
        for origin in ["http://evil.example", f"http://127.0.0.1.evil.example:{local.port}", "null"]:
            a = await http_call(s, cls, f"local mode, Origin {origin}", local.port, INITIALIZE, {"origin": origin})
            s.check(f"local mode refuses Origin {origin}: 403", cls, a.status == 403, a.brief())
        session = await http_session(s, cls, "local mode, no Origin", local.port, None)
        await http_select(s, cls, "local mode, no Origin", local.port, None, session)
        own = f"http://127.0.0.1:{local.port}"
        a = await http_call(s, cls, f"local mode, Origin {own}", local.port, INITIALIZE, {"origin": own})
        s.check(f"local mode accepts Origin {own}", cls, a.status == 200 and a.headers.get("mcp-session-id"),
                a.brief())
        running = server.proc.poll() is None and local.proc.poll() is None
        s.check("both HTTP servers still run", cls, running, f"{server.proc.poll()} {local.proc.poll()}")
    finally:
        await asyncio.gather(*(asyncio.to_thread(x.stop) for x in (server, local) if x is not None))


# Class 12: `publish_contract` (README, "Contracts as law"): only owners' text is parsed, a version and a table name
# must name a contract file as written, a notice period cannot be shortened at once nor leave 0..=3660 days, and the
# table's owners are the operator's to move.
NESTED_BRACKETS = 50_000  # `x: [[[…]]]`, 100 KB: 13 s of a core in the YAML scanner before the fix (200 KB: 61 s)


def contract_files(data_dir: str) -> list[str]:
    """Every directory (with a trailing '/') and file under the data dir's `contracts/`, relative to it."""
    root = os.path.join(data_dir, "contracts")
    found = []
    for folder, dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, d), root) + "/" for d in dirs]
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    return sorted(found)


def contract_variant(base: str, version: str, field: str = "", changed: str = "") -> str:
    """The demo contract text `base` as `version` (quoted as JSON, which YAML reads as it is), with `field` (one
    exact piece of its text) replaced by `changed`; nothing else differs."""
    if field not in base:
        raise ValueError(f"the demo contract no longer holds {field!r}: the check would test nothing")
    text = re.sub(r"(?m)^version: .*$", lambda _: f"version: {json.dumps(version)}", base, count=1)
    return text.replace(field, changed, 1)


def with_notice(base: str, version: str, days: int) -> str:
    """`base` as `version` promising `days` of notice for breaking changes (the demo orders contract gives none, so
    the default 30 applies)."""
    entry = f"slaProperties:\n  - property: noticePeriod\n    value: {days}\n    unit: d\n"
    return contract_variant(base, version, "slaProperties:\n", entry)


async def class12_publish(s: Suite, binary: str, data_dir: str, scratch: str) -> None:
    """`publish_contract` under the outside attack's cases: a principal owning no table held a core for seconds to
    minutes with nested brackets (parsed before the owner check, in time growing faster than depth squared);
    versions and table names wrote files wherever their text led (`..` was a version in force, ` sales.orders` a
    stray directory); a compatible version lowering the notice period skipped the notice the next breaking one owes,
    and a huge one made that call panic with no answer and no audit record; an owner handed the table to another
    team. Each is refused at once with a reason, nothing is written, and every call is answered and audited. Runs
    last: its one accepted version (the control) changes sales.orders' contract."""
    cls = "12-publish"
    with open(os.path.join(data_dir, "contracts", "sales", "orders.yaml")) as f:
        base = f.read()
    stranger = Parley(binary, data_dir, "stranger", scratch)
    owner = Parley(binary, data_dir, "sales-owner", scratch)
    analyst = Parley(binary, data_dir, "analyst", scratch)
    answers: list[Answer] = []
    try:
        await stranger.open()
        await owner.open()
        await analyst.open()
        first_seq = max((r["seq"] for r in audit_records(data_dir)), default=0)

        async def publish(name: str, client: Parley, contract: str, words: tuple[str, ...], **args: Any) -> Answer:
            a = await s.expect_error(cls, name, client, "publish_contract", {"contract": contract, **args}, words)
            answers.append(a)
            return a

        # (a) Nested brackets: refused before the YAML scanner sees them (a stranger: before anything is parsed).
        # The stranger sends two at once and, while they are in flight, lists tables in the same session (before
        # the fix that list waited for the first parse to end).
        bomb = "x: " + "[" * NESTED_BRACKETS + "]" * NESTED_BRACKETS + "\n"

        async def list_tables_soon(client: Parley) -> Answer:
            await asyncio.sleep(0.3)
            return await s.call(cls, "stranger lists tables while its brackets are sent", client, "list_tables", {})

        *bombs, listed = await asyncio.gather(
            *(publish(f"stranger publishes 100 KB of nested brackets ({i})", stranger, bomb, ("you own no table",))
              for i in (1, 2)),
            list_tables_soon(stranger),
        )
        bombs.append(await publish("sales-owner publishes 100 KB of nested brackets", owner, bomb,
                                   ("flow collections",)))
        slow = [a.brief(160) for a in bombs if a.seconds >= 2]
        s.check("each 100 KB of nested brackets is refused within 2 s", cls, not slow, slow)
        s.check("the stranger's list_tables alongside: answered within 2 s", cls, listed.ok and listed.seconds < 2,
                listed.brief())
        a = await s.call(cls, "analyst lists tables right after the brackets", analyst, "list_tables", {})
        s.check("analyst's list_tables right after the brackets: answered within 2 s", cls,
                a.ok and a.seconds < 2, a.brief())

        # (b) Versions and table names that cannot name a contract file: nothing is written anywhere.
        files = contract_files(data_dir)
        for version in ["../../policy/evil", "..", ".hidden", "1/../x", "1.3.0/"]:
            await publish(f"version {version!r}", owner, contract_variant(base, version),
                          ("cannot name a contract file",))
        spaced = contract_variant(base, "1.3.0", "physicalName: sales.orders", "physicalName: ' sales.orders'")
        await publish("physicalName ' sales.orders'", owner, spaced, ("not a table name as Parley writes one",))
        after = contract_files(data_dir)
        s.check("refused versions and names write nothing under contracts/", cls, after == files,
                f"added {sorted(set(after) - set(files))}, removed {sorted(set(files) - set(after))}")

        # (c) The notice period: lowering it is breaking; out of range is refused; each call is answered (a huge
        # notice in force made the next breaking publication panic, unanswered and unaudited).
        await publish("a minor version lowering the notice period to 0", owner, with_notice(base, "1.3.0", 0),
                      ("breaking", "notice period shortened"))
        for version, days in [("1.4.0", -100_000), ("1.5.0", 9_223_372_036_854_775_807)]:
            await publish(f"notice period {days}", owner, with_notice(base, version, days), ("give 0 to 3660 days",))
        soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).strftime("%Y-%m-%d")
        dropped = contract_variant(base, "2.0.0", "      - name: is_gift\n", "      - name: was_gift\n")
        await publish("a breaking version a day away after those", owner, dropped,
                      ("notice period (30 days)",), effective_from=soon)

        # (d) Who owns the table is not the owner's to hand on.
        moved = contract_variant(base, "1.6.0", "team:\n  name: sales-owners", "team:\n  name: marketing")
        await publish("team.name changed to marketing", owner, moved, ("ownership is moved by the server's operator",))

        # Every answer keeps the server's paths to itself, and every call left its audit record.
        named = [a.brief(200) for a in answers if data_dir in a.text]
        s.check("no refusal names the server's data dir", cls, not named, named[:2])
        audited = [r for r in audit_records(data_dir) if r["seq"] > first_seq and r["tool"] == "publish_contract"]
        s.check(f"each of the {len(answers)} publish_contract calls left one audit record", cls,
                len(audited) == len(answers), f"{len(audited)} records: {[r.get('decision') for r in audited]}")

        # The control: the same base with a longer notice period is compatible, published, and written as the one
        # file it names.
        files = contract_files(data_dir)
        a = await s.call(cls, "a minor version with a longer notice period", owner, "publish_contract",
                         {"contract": with_notice(base, "1.3.0", 60)})
        s.check("a longer notice period is compatible: published", cls, a.ok, a.brief())
        added = sorted(set(contract_files(data_dir)) - set(files))
        s.check("the published version is the one file written", cls, added == ["sales/orders@1.3.0.yaml"], added)
    finally:
        await analyst.close()
        await owner.close()
        await stranger.close()


# Class 13: offers that wait for the person behind the agent (README, "Negotiating access"). An automatic grant
# waits for their acknowledgement of the usage terms: on protocol 2026-07-28 as an input-required result answered by
# a retry with its `requestState`, before that through the server's own `elicitation/create` request. An automatic
# counter-offer waits for `accept_offer`. Per-request `_meta`, a server's question left open and a call cancelled
# while it waits are plainest sent by hand, so this class speaks JSON-RPC over stdio itself.
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "adversarial", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
}
ACKNOWLEDGED = {"acknowledge": {"action": "accept", "content": {"accept": True}}}
# Granted at once under the demo contract (no personal data), so acknowledged when the client can ask.
OFFER_ARGS = {"tables": ["sales.customers"], "columns": ["customer_id", "country"], "purpose": "churn_analysis"}
# A counter-offer: e-mail hashed, made by no person.
COUNTER_ARGS = {
    "tables": ["sales.customers"],
    "columns": ["customer_id", "email", "country"],
    "purpose": "churn_analysis",
}
# On a table whose contract the class leaves alone.
ORDERS_ARGS = {"tables": ["sales.orders"], "columns": ["order_id", "total_amount"], "purpose": "churn_analysis"}
# What the owner changes in sales.customers' contract (pieces of its text and what they become).
PURPOSE_PROHIBITED = [
    ("value: [customer_analytics, churn_analysis, fraud_investigation]", "value: [fraud_investigation]"),
    ("value: [marketing_outreach, resale, re_identification]",
     "value: [marketing_outreach, resale, re_identification, analytics]"),
]
COUNTRY_PII = [
    ("        classification: internal\n        description: ISO 3166-1 alpha-2 country of residence.",
     "        classification: restricted\n        tags: [pii]\n        description: ISO 3166-1 alpha-2 country of "
     "residence."),
]
# How long a contract edit may take to be in force (the server checks every 2 s).
RELOAD_WITHIN = 30.0


class RawClient:
    """One `parley serve` over stdio for one principal, driven by hand-written JSON-RPC: per-request `_meta`,
    `requestState` retries, the server's own requests (each answered by `answer`, or left in `asked` for the test
    to answer or ignore) and `notifications/cancelled`. `call` returns an `Answer` as `Parley.call` does."""

    def __init__(
        self,
        binary: str,
        data_dir: str,
        principal: str,
        log_dir: str,
        protocol: str = "2025-11-25",
        capabilities: dict | None = None,
        answer: Any = None,
    ) -> None:
        self.binary, self.data_dir, self.principal = binary, data_dir, principal
        self.protocol, self.capabilities, self.answer = protocol, capabilities or {}, answer
        self.log = open(os.path.join(log_dir, f"{principal}.raw.stderr.log"), "a")
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.asked: asyncio.Queue = asyncio.Queue()
        self.next_id = 0

    async def open(self) -> "RawClient":
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "serve", "--data-dir", self.data_dir, "--principal", self.principal,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env={**os.environ, "PARLEY_LOG": "warn"}, limit=64 << 20,
        )
        self.reader = asyncio.create_task(self._read(self.proc))
        init = await self.request("initialize", {
            "protocolVersion": self.protocol,
            "capabilities": self.capabilities,
            "clientInfo": {"name": "adversarial", "version": "1"},
        })
        if "result" not in init:
            raise RuntimeError(f"{self.principal}: initialize failed: {init}")
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        try:
            while line := await proc.stdout.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict) or "id" not in message:
                    continue
                if "method" in message:
                    reply = self.answer(message) if self.answer else None
                    if reply is None:
                        self.asked.put_nowait(message)
                    else:
                        await self.send(reply)
                    continue
                future = self.pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_result({"crash": "the server's stdout closed"})
            self.pending.clear()

    async def send(self, message: dict) -> bool:
        if self.proc is None or self.proc.stdin.is_closing():
            return False
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            await self.proc.stdin.drain()
            return True
        except (ConnectionError, RuntimeError):
            return False

    async def begin(self, method: str, params: Any = None) -> tuple[int, asyncio.Future]:
        """Sends a request; its reply resolves the future (to `{"crash": ...}` if the server goes)."""
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            message["params"] = params
        if not await self.send(message):
            self.pending.pop(self.next_id, None)
            future.set_result({"crash": "no server to send to"})
        return self.next_id, future

    async def wait(self, request_id: int, future: asyncio.Future, timeout: float = CALL_TIMEOUT) -> dict:
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            self.pending.pop(request_id, None)
            return {"timeout": f"no answer within {timeout:.0f}s"}

    async def request(self, method: str, params: Any = None, timeout: float = CALL_TIMEOUT) -> dict:
        return await self.wait(*(await self.begin(method, params)), timeout)

    async def question(self, timeout: float = CALL_TIMEOUT) -> dict | None:
        """The next request the server sent this client and nobody answered (None: none came in time)."""
        with contextlib.suppress(asyncio.TimeoutError):
            return await asyncio.wait_for(self.asked.get(), timeout)
        return None

    @staticmethod
    def answer_of(reply: dict, seconds: float) -> Answer:
        if "timeout" in reply:
            return Answer("timeout", None, reply["timeout"], seconds)
        if "crash" in reply:
            return Answer("crash", None, reply["crash"], seconds)
        if "error" in reply:
            e = reply["error"] if isinstance(reply["error"], dict) else {}
            return Answer("rpc_error", None, f"[{e.get('code')}] {e.get('message')} {e.get('data') or ''}", seconds)
        result = reply.get("result")
        if not isinstance(result, dict):
            return Answer("client_error", None, f"not a result: {json.dumps(reply)[:300]}", seconds)
        parts = [b.get("text", "") for b in result.get("content") or [] if isinstance(b, dict)]
        # An input-required result has no content: the whole result is its data (requestState, inputRequests).
        data = result.get("structuredContent", None if "content" in result else result)
        if data is not None:
            parts.append(json.dumps(data, ensure_ascii=False))
        return Answer("tool_error" if result.get("isError") else "ok", data, "\n".join(parts), seconds)

    async def call(self, tool: str, args: Any, timeout: float = CALL_TIMEOUT, **params: Any) -> Answer:
        started = time.monotonic()
        reply = await self.request("tools/call", {"name": tool, "arguments": args, **params}, timeout)
        return self.answer_of(reply, time.monotonic() - started)

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self.reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.reader, 5)
        self.reader = None

    async def reopen(self) -> None:
        await self.close()
        self.pending, self.asked = {}, asyncio.Queue()
        await self.open()


def stored_requests(data_dir: str, principal: str) -> dict[str, str]:
    """The access requests of `principal` and their states, as state.db holds them (read from the file, as the
    audit log is)."""
    with contextlib.closing(sqlite3.connect(f"file:{data_dir}/state.db?mode=ro", uri=True, timeout=10)) as db:
        return dict(db.execute("SELECT id, state FROM access_requests WHERE principal = ?", (principal,)))


def stored_grants(data_dir: str, request_id: str) -> list[str]:
    """The grants state.db holds that were made for request `request_id`."""
    with contextlib.closing(sqlite3.connect(f"file:{data_dir}/state.db?mode=ro", uri=True, timeout=10)) as db:
        return [r[0] for r in db.execute("SELECT id FROM access_grants WHERE request_id = ?", (request_id,))]


async def audited(data_dir: str, found: Any, within: float = 10.0) -> list[dict]:
    """The audit records for which `found(record)` holds, once there are any (or after `within` seconds); a line
    being written as it is read is read again."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(ValueError, OSError):
            records = [r for r in audit_records(data_dir) if found(r)]
            if records or time.monotonic() > deadline:
                return records
        if time.monotonic() > deadline:
            return []
        await asyncio.sleep(0.25)


def contract_edited(base: str, pieces: list[tuple[str, str]]) -> str:
    """`base` with each (piece, replacement) applied once; a piece no longer in the demo contract is an error (the
    check would test nothing)."""
    for piece, changed in pieces:
        if piece not in base:
            raise ValueError(f"the demo contract no longer holds {piece!r}: the check would test nothing")
        base = base.replace(piece, changed, 1)
    return base


async def class13_offers(s: Suite, binary: str, data_dir: str, scratch: str) -> None:
    """Offers waiting for the person or the agent, under the outside attack's cases: an acknowledgement (2026
    `requestState`, or the answer to `elicitation/create`) and `accept_offer` of an automatic counter-offer made a
    grant after the owner had prohibited the purpose or made a granted column personal data (the grant read the
    column in clear); an unanswered `elicitation/create` held the call forever and its cancellation left no audit
    record; such an offer could be neither accepted nor declined ("internal error"), nor could a client's failure
    to ask end it; `prompts/get` refused before it was audited. Now an offer is evaluated again when it is taken up
    and withdrawn (terminated) if its terms changed, a cancelled question ends its request with a record, an
    acknowledgement offer is declined with decline_offer, and every prompts/get is audited. Edits sales.customers'
    contract file and restores it (waiting until it is in force again)."""
    cls, t = "13-offers", s.truth
    path = os.path.join(data_dir, "contracts", "sales", "customers.yaml")
    with open(path) as f:
        base = f.read()
    # Plain calls (no question asked: an automatic grant is made at once), and 2026 calls through `_meta`.
    analyst = RawClient(binary, data_dir, "analyst", scratch)
    # MCP 2025-06-18 with elicitation: the server asks it; the test answers, or never does.
    asking = RawClient(binary, data_dir, "analyst", scratch, "2025-06-18", {"elicitation": {}})
    # Answers every elicitation/create with a JSON-RPC error.
    failing = RawClient(
        binary, data_dir, "analyst", scratch, "2025-06-18", {"elicitation": {}},
        answer=lambda m: {"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32603, "message": "client failed"}},
    )
    marketing = RawClient(binary, data_dir, "marketing-agent", scratch)
    modern = {"_meta": MODERN_META}

    async def ask_modern(name: str, args: dict) -> tuple[str | None, str | None]:
        """A 2026 request_access held for acknowledgement: its requestState and request id."""
        a = await s.call(cls, name, analyst, "request_access", args, params=modern)
        state = (a.data or {}).get("requestState") if a.ok else None
        s.check(f"{name}: input required, with a requestState", cls, isinstance(state, str), a.brief())
        request = re.search(r"req-[0-9a-f-]{36}", state or "")
        return state, request.group(0) if request else None

    async def acknowledge(name: str, args: dict, state: str | None) -> Answer:
        return await s.call(cls, name, analyst, "request_access", args,
                            params={**modern, "requestState": state, "inputResponses": ACKNOWLEDGED})

    async def counter_offer(name: str) -> tuple[str | None, str | None]:
        a = await s.call(cls, name, analyst, "request_access", COUNTER_ARGS)
        data = a.data or {}
        offered = a.ok and data.get("status") == "counter_offer" and HEX64.match(str(data.get("terms_hash")))
        s.check(f"{name}: an automatic counter-offer with a terms_hash", cls, offered, a.brief())
        return data.get("request_id"), data.get("terms_hash")

    async def ask_2025(name: str) -> tuple[int, asyncio.Future, dict | None, str | None]:
        """request_access from `asking`: the call, the server's elicitation/create, and the request it stored."""
        known = set(stored_requests(data_dir, "analyst"))
        s.attempts[cls] += 1
        call_id, reply = await asking.begin("tools/call", {"name": "request_access", "arguments": OFFER_ARGS})
        question = await asking.question()
        asked = question is not None and question.get("method") == "elicitation/create"
        s.check(f"{name}: the server asks through elicitation/create", cls, asked, question)
        new = [r for r, state in stored_requests(data_dir, "analyst").items() if r not in known and state == "offered"]
        s.check(f"{name}: one request stored as offered", cls, len(new) == 1, new)
        return call_id, reply, question, new[0] if len(new) == 1 else None

    def contract_view(a: Answer) -> tuple[bool, bool]:
        """Whether get_contract's answer prohibits analytics, and whether it makes country personal data."""
        data = a.data if a.ok and isinstance(a.data, dict) else {}
        country = [c for c in data.get("columns") or [] if c.get("name") == "country"]
        return "analytics" in (data.get("prohibited_purposes") or []), bool(country and country[0].get("pii"))

    async def in_force(name: str, view: tuple[bool, bool], status: str) -> bool:
        """Waits until each of the class's analyst servers reads sales.customers' contract as `view` (each reloads
        it on its own clock); then a new plain request for OFFER_ARGS must come to `status`."""
        deadline = time.monotonic() + RELOAD_WITHIN
        seen = []
        for client in (analyst, asking, failing):
            while True:
                a = await client.call("get_contract", {"table": "sales.customers"})
                if contract_view(a) == view or time.monotonic() > deadline:
                    seen.append(contract_view(a))
                    break
                await asyncio.sleep(0.25)
        s.check(f"{name}: each server reads the contract as written", cls, seen == [view] * 3, seen)
        a = await s.call(cls, f"{name}: a new request", analyst, "request_access", OFFER_ARGS)
        return s.check(f"{name}: a new request is {status}", cls, (a.data or {}).get("status") == status, a.brief())

    async def edit(pieces: list[tuple[str, str]]) -> None:
        with open(path, "w") as f:
            f.write(contract_edited(base, pieces))

    async def restore(name: str) -> None:
        with open(path, "w") as f:
            f.write(base)
        await in_force(f"{name}: the restored contract is in force again", (False, False), "granted")

    async def withdrawn(name: str, answer: Answer, request: str | None, column: str | None = None) -> None:
        """`answer` took up an offer that no longer holds: refused, saying so; no grant made (state.db), the
        request terminated (access_status); and if a grant was made anyway, what it reads of `column`."""
        s.check(f"{name}: refused", cls, answer.error, answer.brief())
        for words in ("no longer holds", "request_access again"):
            s.check(f"{name}: the refusal says {words!r}", cls, words in answer.text, answer.brief())
        grants = stored_grants(data_dir, request) if request else []
        s.check(f"{name}: no grant was made for the request", cls, request and not grants, f"{request}: {grants}")
        status = await s.call(cls, f"{name}: access_status", analyst, "access_status", {"request_id": request or ""})
        s.check(f"{name}: the request is terminated", cls, (status.data or {}).get("state") == "terminated",
                status.brief())
        grant = (answer.data or {}).get("grant_id") if answer.ok else None
        if grant and column:
            q = await s.query(cls, f"{name}: a query under the grant made", analyst,
                              f"SELECT DISTINCT {column} FROM sales.customers", grant)
            clear = sorted({str(r[0]) for r in q.rows or []} & set(t.countries))
            s.check(f"{name}: no clear {column} under the grant made", cls, q.error or not clear, clear[:5])

    try:
        await analyst.open()
        await asking.open()
        await failing.open()
        await marketing.open()

        # (a) Controls, the contract as it is: an acknowledged offer and an accepted counter-offer are granted and
        # read what pyiceberg reads (e-mails hashed).
        state, request = await ask_modern("control: a 2026 request held for acknowledgement", OFFER_ARGS)
        a = await acknowledge("control: acknowledged at once", OFFER_ARGS, state)
        grant = (a.data or {}).get("grant_id") if a.ok else None
        s.check("control: the acknowledged offer is granted", cls, grant, a.brief())
        by_country = "SELECT country, count(*) FROM sales.customers GROUP BY country ORDER BY country"
        await s.expect_rows(cls, "control: a query under the acknowledged grant", analyst, by_country,
                            sorted([c, n] for c, n in t.countries.items()), grant)
        request, terms_hash = await counter_offer("control: a counter-offer")
        a = await s.call(cls, "control: accept_offer at once", analyst, "accept_offer",
                         {"request_id": request, "terms_hash": terms_hash})
        grant = (a.data or {}).get("grant_id") if a.ok else None
        s.check("control: the accepted counter-offer is granted", cls, grant, a.brief())
        q = await s.query(cls, "control: e-mails under the accepted grant", analyst,
                          "SELECT email FROM sales.customers ORDER BY customer_id LIMIT 20", grant)
        s.check("control: 20 e-mails, each hashed", cls,
                q.rows is not None and len(q.rows) == 20 and not {r[0] for r in q.rows} & t.emails, q.brief())

        # (b) The owner prohibits the purpose while three offers wait: a 2026 acknowledgement, a 2025 one (the
        # question open) and a counter-offer. None is granted; an offer on another table still is.
        state, modern_request = await ask_modern("prohibited: a 2026 request held for acknowledgement", OFFER_ARGS)
        call_id, reply, question, asked_request = await ask_2025("prohibited: a 2025 request")
        counter_request, terms_hash = await counter_offer("prohibited: a counter-offer")
        orders_state, orders_request = await ask_modern("prohibited: a 2026 request on sales.orders", ORDERS_ARGS)
        await edit(PURPOSE_PROHIBITED)
        if await in_force("the prohibited purpose is in force", (True, False), "denied"):
            a = await acknowledge("prohibited: the 2026 acknowledgement", OFFER_ARGS, state)
            await withdrawn("prohibited: the 2026 acknowledgement", a, modern_request)
            if question is not None:
                await asking.send({"jsonrpc": "2.0", "id": question["id"],
                                   "result": {"action": "accept", "content": {"accept": True}}})
            a = RawClient.answer_of(await asking.wait(call_id, reply), 0.0)
            s.check("prohibited: the 2025 acknowledgement: answered", cls, a.ok or a.error, a.brief())
            await withdrawn("prohibited: the 2025 acknowledgement", a, asked_request)
            a = await s.call(cls, "prohibited: accept_offer of the counter-offer", analyst, "accept_offer",
                             {"request_id": counter_request, "terms_hash": terms_hash})
            await withdrawn("prohibited: accept_offer of the counter-offer", a, counter_request)
            a = await acknowledge("control: the 2026 acknowledgement on sales.orders", ORDERS_ARGS, orders_state)
            grant = (a.data or {}).get("grant_id") if a.ok else None
            s.check("control: the offer on sales.orders (its contract unchanged) is granted", cls, grant, a.brief())
            await s.expect_rows(cls, "control: a query under the sales.orders grant", analyst,
                                "SELECT count(*) FROM sales.orders", [[t.n_orders]], grant)
        await restore("prohibited")

        # (c) The owner makes `country` personal data while a 2026 acknowledgement and a counter-offer wait: no
        # grant reads it in clear.
        state, modern_request = await ask_modern("pii: a 2026 request held for acknowledgement", OFFER_ARGS)
        counter_request, terms_hash = await counter_offer("pii: a counter-offer")
        await edit(COUNTRY_PII)
        if await in_force("country as personal data is in force", (False, True), "counter_offer"):
            a = await acknowledge("pii: the 2026 acknowledgement", OFFER_ARGS, state)
            await withdrawn("pii: the 2026 acknowledgement", a, modern_request, "country")
            a = await s.call(cls, "pii: accept_offer of the counter-offer", analyst, "accept_offer",
                             {"request_id": counter_request, "terms_hash": terms_hash})
            await withdrawn("pii: accept_offer of the counter-offer", a, counter_request, "country")
        await restore("pii")

        # (d) A 2025 question left unanswered, then the call cancelled: the call ends, audited naming its request,
        # which is terminated; the session goes on.
        call_id, reply, question, request = await ask_2025("cancelled: a 2025 request")
        await asking.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                           "params": {"requestId": call_id, "reason": "the person closed the dialog"}})
        records = await audited(data_dir, lambda r: r.get("tool") == "request_access" and request
                                and request in json.dumps(r, ensure_ascii=False))
        s.check("cancelled: the call is audited naming its request", cls, request and records, request)
        reasons = [r.get("reason", "") for r in records]
        s.check("cancelled: the record says the client cancelled the call", cls,
                any("cancelled the call" in r for r in reasons), reasons)
        a = await s.call(cls, "cancelled: access_status", asking, "access_status", {"request_id": request or ""})
        s.check("cancelled: the request is terminated", cls, (a.data or {}).get("state") == "terminated", a.brief())
        s.check("cancelled: no grant was made", cls, request and not stored_grants(data_dir, request), request)
        a = await s.call(cls, "cancelled: list_tables in the same session", asking, "list_tables", {})
        s.check("cancelled: the session still answers", cls, a.ok, a.brief())

        # (e) A client that answers elicitation/create with an error: the request ends, declined, said so.
        a = await s.call(cls, "the client fails to ask", failing, "request_access", OFFER_ARGS)
        data = a.data or {}
        s.check("the client fails to ask: a result, declined and terminated", cls,
                a.ok and data.get("status") == "declined" and data.get("state") == "terminated", a.brief())
        s.check("the client fails to ask: the reason says the client could not ask the user", cls,
                "could not ask the user" in str(data.get("reason")), a.brief())
        s.check("the client fails to ask: not an internal error", cls, "internal error" not in a.text, a.brief())
        request = data.get("request_id")
        s.check("the client fails to ask: no grant was made", cls,
                request and not stored_grants(data_dir, request), request)

        # (f) An acknowledgement offer is the person's, not the agent's to accept: accept_offer says so, decline_offer
        # ends it, and its requestState grants nothing after that.
        state, request = await ask_modern("acknowledgement offer: a 2026 request", OFFER_ARGS)
        a = await s.call(cls, "acknowledgement offer: access_status", analyst, "access_status",
                         {"request_id": request or ""})
        data = a.data or {}
        s.check("acknowledgement offer: offered, with no terms_hash to accept", cls,
                data.get("state") == "offered" and not data.get("terms_hash"), a.brief())
        a = await s.expect_error(cls, "acknowledgement offer: accept_offer", analyst, "accept_offer",
                                 {"request_id": request or "", "terms_hash": data.get("terms_hash") or "0" * 64},
                                 ("acknowledge", "decline_offer"))
        s.check("acknowledgement offer: accept_offer is not an internal error", cls,
                "internal error" not in a.text.lower(), a.brief())
        a = await s.call(cls, "acknowledgement offer: decline_offer", analyst, "decline_offer",
                         {"request_id": request or ""})
        s.check("acknowledgement offer: declined", cls, a.ok, a.brief())
        a = await s.call(cls, "acknowledgement offer: access_status after", analyst, "access_status",
                         {"request_id": request or ""})
        s.check("acknowledgement offer: terminated", cls, (a.data or {}).get("state") == "terminated", a.brief())
        a = await acknowledge("acknowledgement offer: acknowledged after the decline", OFFER_ARGS, state)
        s.check("acknowledgement offer: acknowledged after the decline: refused", cls, a.error, a.brief())
        s.check("acknowledgement offer: no grant was made", cls,
                request and not stored_grants(data_dir, request), request)

        # (g) prompts/get that names no prompt, or arguments that do not fit: refused (-32602) and audited.
        for name, params, named in [
            ("prompts/get of an unknown prompt", {"name": "no_such_prompt_13"}, "no_such_prompt_13"),
            ("prompts/get without the table argument", {"name": "explore_dataset", "arguments": {}},
             "explore_dataset"),
        ]:
            first = max((r["seq"] for r in audit_records(data_dir)), default=0)
            s.attempts[cls] += 1
            reply = await marketing.request("prompts/get", params)
            s.check(f"{name}: refused with -32602", cls, (reply.get("error") or {}).get("code") == -32602, reply)
            records = await audited(data_dir, lambda r, named=named, first=first: r["seq"] > first
                                    and r.get("tool") == "prompts/get" and r.get("principal") == "marketing-agent"
                                    and named in json.dumps(r))
            s.check(f"{name}: audited as an error", cls, [r.get("decision") for r in records] == ["error"],
                    [(r.get("decision"), r.get("reason")) for r in records])
        a = await s.call(cls, "marketing lists tables after the prompts", marketing, "list_tables", {})
        s.check("the prompts' session still answers", cls, a.ok, a.brief())
    finally:
        with open(path) as f:
            changed = f.read() != base
        if changed:
            with open(path, "w") as f:
                f.write(base)
            await asyncio.sleep(6.0)  # three of the servers' 2 s checks
        await marketing.close()
        await failing.close()
        await asking.close()
        await analyst.close()


def only_classes() -> set[str]:
    """The classes ADVERSARIAL_ONLY names (comma-separated keys of CLASSES); empty: all of them."""
    only = {c.strip() for c in os.environ.get("ADVERSARIAL_ONLY", "").split(",") if c.strip()}
    unknown = only - set(CLASSES)
    if unknown:
        raise SystemExit(f"ADVERSARIAL_ONLY names no class: {sorted(unknown)} (classes: {', '.join(CLASSES)})")
    return only


async def run(binary: str, data_dir: str, scratch: str, s: Suite) -> None:
    only = only_classes()
    wanted = lambda cls: not only or cls in only  # noqa: E731
    principals = ["analyst", "marketing-agent", "sales-owner", "ops-owner", "stranger"]
    sessions = {p: Parley(binary, data_dir, p, scratch) for p in principals}
    bad = Parley(binary, data_dir, "analyst", scratch)
    try:
        # Classes 1 to 8 share these sessions and class 1's grant: naming any of them runs all eight.
        if any(wanted(cls) for cls in list(CLASSES)[:8]):
            for client in [*sessions.values(), bad]:
                await client.open()
            analyst, marketing = sessions["analyst"], sessions["marketing-agent"]
            grant = await s.timed("1-barrier", class1_barrier(s, analyst))
            if grant:
                await s.timed("2-columns", class2_columns(s, analyst, grant))
            await s.timed("3-statements", class3_statements(s, analyst, grant, scratch))
            await s.timed("4-policy", class4_policy(s, marketing, grant))
            await s.timed("2-columns", hash_salt_check(s, analyst, marketing, grant))
            await s.timed("5-discovery", class5_discovery(s, marketing, sessions["stranger"]))
            # The audit checks come after the attacks above, so that the log holds their records; bad input comes
            # last, after grants are exercised (class 8 revokes the analyst's grant).
            await s.timed("6-audit", class6_audit(s, sessions, grant, data_dir))
            await s.timed("8-grants", class8_grants(s, sessions, grant))
            await s.timed("7-bad-input", class7_bad_input(s, bad, s.truth))
        if wanted("9-memory"):
            await s.timed("9-memory", class9_memory(s, binary, data_dir, scratch))
        if wanted("10-quota"):
            await s.timed("10-quota", class10_quota(s, binary, data_dir, scratch))
        if wanted("11-http"):
            await s.timed("11-http", class11_http(s, binary, data_dir, scratch))
        # Before class 12: it edits sales.customers' contract and restores it.
        if wanted("13-offers"):
            await s.timed("13-offers", class13_offers(s, binary, data_dir, scratch))
        # Last: its control publishes a new version of sales.orders' contract.
        if wanted("12-publish"):
            await s.timed("12-publish", class12_publish(s, binary, data_dir, scratch))
    finally:
        for client in [*sessions.values(), bad]:
            await client.close()


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/adversarial.py path/to/parley")
    binary = os.path.abspath(sys.argv[1])
    only_classes()  # a filter naming no class stops here, before anything is made
    scratch = tempfile.mkdtemp(prefix="parley-adversarial-")
    data_dir = os.path.join(scratch, "data")
    started = time.monotonic()
    subprocess.run([binary, "init", "--data-dir", data_dir], check=True, stdout=subprocess.DEVNULL)
    truth = GroundTruth(data_dir)
    before = table_state(data_dir)
    s = Suite(truth)
    asyncio.run(run(binary, data_dir, scratch, s))
    # Nothing the suite did changed a table: same metadata file, snapshots, current snapshot and row count.
    after = table_state(data_dir)
    for key in before:
        s.check(
            f"pyiceberg shows {key} unchanged",
            "3-statements",
            before[key] == after[key],
            f"{before[key]} -> {after[key]}",
        )

    print(f"\nadversarial suite on {data_dir} ({time.monotonic() - started:.0f}s; server logs in {scratch}):")
    for cls, title in CLASSES.items():
        print(
            f"  {cls:13} {title:58} {s.attempts[cls]:4} attempts  {s.passed[cls]:4} passed  "
            f"{s.failed[cls]:3} failed  {s.seconds[cls]:5.1f}s"
        )
    print(f"  {'total':13} {'':58} {sum(s.attempts.values()):4} attempts")
    if s.failures:
        print(f"\n{len(s.failures)} failure(s):")
        for line in s.failures:
            print(f"  {line}")
    passed, failed = sum(s.passed.values()), sum(s.failed.values())
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
