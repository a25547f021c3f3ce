"""Discovery on a large catalog, as an agent meets it: one stdio MCP session from a bare JSON-RPC client.

    parley bench catalog --tables 100000 --data-dir DIR      # once: 100,000 tables with contracts
    python benches/catalog.py target/release/parley DIR [--principal analyst] [--samples 50]

Reports the time until `initialize` is answered after spawning the server, until `tools/list` is answered (as
clients ask right after initializing; NO_TOOLS_LIST=1 skips it), until the first `list_tables` page is answered, until a page knows the total (every table decided), then p50/p90 of a first page, a text search and a
namespace page over `--samples` calls each after 10 warm-up calls, and the server's RSS. Run it twice to see a
restart (validated contracts remembered in DIR/cache). Prints the server's timing log lines at the end.
"""

import argparse
import json
import os
import subprocess
import threading
import time


def rss(pid):
    """The process's resident memory, MiB."""
    with open(f"/proc/{pid}/status") as status:
        return int([line for line in status if line.startswith("VmRSS:")][0].split()[1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("data_dir")
    ap.add_argument("--principal", default="analyst")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--filter", default="table_042424")
    ap.add_argument("--namespace", default="domain_0042")
    args = ap.parse_args()

    t0 = time.perf_counter()
    env = {**os.environ, "PARLEY_LOG": "info,parley=debug"}
    p = subprocess.Popen(
        [args.binary, "serve", "--data-dir", args.data_dir, "--principal", args.principal],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    log = []
    threading.Thread(
        target=lambda: [log.append((time.perf_counter() - t0, line.decode().strip())) for line in p.stderr],
        daemon=True,
    ).start()
    next_id = [0]

    def call(method, params):
        next_id[0] += 1
        p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": next_id[0], "method": method, "params": params}) + "\n").encode())
        p.stdin.flush()
        while True:
            line = p.stdout.readline()
            if not line:
                raise SystemExit("the server closed its output")
            message = json.loads(line)
            if message.get("id") == next_id[0]:
                if "error" in message:
                    raise SystemExit(f"{method}: {message['error']}")
                return message["result"]

    def list_tables(arguments):
        result = call("tools/call", {"name": "list_tables", "arguments": arguments})
        if result.get("isError"):
            raise SystemExit(f"list_tables {arguments}: {result['content'][0]['text']}")
        return result["structuredContent"]

    call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
    print(f"initialize answered        {time.perf_counter() - t0:8.2f} s after start")
    p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    p.stdin.flush()
    if not os.environ.get("NO_TOOLS_LIST"):
        # What a client asks right after initializing.
        tools = call("tools/list", {})
        print(f"tools/list answered        {time.perf_counter() - t0:8.2f} s  ({len(tools['tools'])} tools)")
    first = list_tables({})
    print(f"first list_tables answered {time.perf_counter() - t0:8.2f} s  ({len(first['tables'])} tables, total {first.get('total')})")
    while True:
        page = list_tables({"limit": 1})
        if page.get("total") is not None:
            break
        time.sleep(0.05)
    print(f"total known                {time.perf_counter() - t0:8.2f} s  (total {page['total']})")
    decided_rss = rss(p.pid)
    time.sleep(float(os.environ.get("SETTLE", "0")))

    for label, arguments in [("first page", {}), ("text search", {"filter": args.filter}), ("namespace page", {"namespace": args.namespace}), ("first page", {})]:
        times = []
        for i in range(10 + args.samples):
            t = time.perf_counter()
            result = list_tables(arguments)
            if i >= 10:
                times.append(time.perf_counter() - t)
        times.sort()
        print(
            f"{label:15} p50 {times[len(times) // 2] * 1000:6.2f} ms  p90 {times[int(len(times) * 0.9)] * 1000:6.2f} ms"
            f"  ({len(result['tables'])} tables of {result.get('total')})"
        )
    print(f"RSS {rss(p.pid):.0f} MiB (after every table was decided: {decided_rss:.0f} MiB)")
    p.stdin.close()
    p.wait(timeout=30)
    for at, line in log:
        if any(k in line for k in ("contracts loaded", "listed the catalogs", "ready", "owns a table")):
            print(f"  {at:6.2f} s  {line[:200]}")


if __name__ == "__main__":
    main()
