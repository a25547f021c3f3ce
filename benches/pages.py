"""The cost of `list_tables` pages on a large catalog, the server's work between calls included.

    python benches/pages.py target/release/parley DIR [--pages 300] [--gap 0.05] [--principal analyst]

One stdio MCP session from a bare JSON-RPC client on a data dir made by `parley bench catalog` (see
benches/catalog.py): once every table is decided (a page knows its total) and after 50 warm-up pages, `--pages`
first pages with `--gap` seconds between them. Prints p50/p90 of a page and the server's CPU time per page (user +
system of the whole process from /proc, Linux only), which counts what the server does in the background while
pages come at that rate (re-listing the catalog, checking the contract files), not only the pages themselves.
Compare two builds by running each in turn, interleaved.
"""

import argparse
import json
import os
import subprocess
import time


def cpu_seconds(pid):
    """User + system CPU time of the process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("data_dir")
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--gap", type=float, default=0.05)
    ap.add_argument("--principal", default="analyst")
    a = ap.parse_args()
    server = subprocess.Popen(
        [a.binary, "serve", "--data-dir", a.data_dir, "--principal", a.principal],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PARLEY_LOG": "error"},
    )
    next_id = [0]

    def call(method, params):
        next_id[0] += 1
        message = {"jsonrpc": "2.0", "id": next_id[0], "method": method, "params": params}
        server.stdin.write((json.dumps(message) + "\n").encode())
        server.stdin.flush()
        while True:
            reply = json.loads(server.stdout.readline())
            if reply.get("id") == next_id[0]:
                return reply["result"]

    def page():
        return call("tools/call", {"name": "list_tables", "arguments": {}})

    call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "pages", "version": "1"}})
    server.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    server.stdin.flush()
    while page()["structuredContent"].get("total") is None:
        time.sleep(0.05)
    for _ in range(50):
        page()
    times = []
    cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
    for _ in range(a.pages):
        if a.gap:
            time.sleep(a.gap)
        t = time.perf_counter()
        page()
        times.append((time.perf_counter() - t) * 1000)
    wall, cpu = time.perf_counter() - started, cpu_seconds(server.pid) - cpu_before
    times.sort()
    print(
        f"{a.pages} first pages, {a.gap * 1000:.0f} ms apart, over {wall:.1f} s: p50 {times[len(times) // 2]:.3f} ms, "
        f"p90 {times[len(times) * 9 // 10]:.3f} ms; server CPU {cpu / a.pages * 1000:.3f} ms a page "
        f"({cpu / wall * 100:.1f}% of a core)"
    )
    server.stdin.close()
    server.wait()


if __name__ == "__main__":
    main()
