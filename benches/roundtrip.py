"""A trivial call's round trip over stdio, against this machine's own floor, measured in the same run.

    python benches/roundtrip.py target/release/parley [--samples 50] [--gaps 0,0.02,0.1] [--baseline OTHER_BUILD]

Parley: `query` with `SELECT 1` over MCP stdio on a fresh demo data dir (the audit record is synced before the
reply, as always), twice: as configured by default, where the repeated statement is answered from the result
kept the first time (`query.result_cache_bytes`), and with results not kept (`PARLEY_QUERY_RESULT_CACHE_BYTES=0`),
where every call plans and runs `SELECT 1` in the engine. The floor: a 10-line Python server that reads a line,
appends it to a file, `fdatasync`s it and writes it back — the least any server that makes a record durable before
answering can do over a pipe on this machine. All are called with each gap between calls (an agent's calls come
back to back or after a pause; a machine at rest wakes threads and syncs files more slowly), samples interleaved
so all see the same machine. Prints p50/p90 per gap, the ratio of each p50 to the floor's, and each server's CPU
time per call (summed over its threads from /proc, Linux only): a machine that idles between calls runs the same
work slower afterwards, and the CPU column tells that apart from time spent waiting.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

FLOOR = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
for line in sys.stdin.buffer:
    os.write(fd, line)
    os.fdatasync(fd)
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""


def cpu_ns(pid):
    """CPU time used so far by every live thread of process `pid`, in ns (0 where /proc has no schedstat)."""
    total = 0
    for task in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(task) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


class Parley:
    def __init__(self, binary, data_dir, env=None):
        self.p = subprocess.Popen(
            [binary, "serve", "--data-dir", data_dir, "--principal", "analyst"],
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.n = 0
        self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message):
        self.p.stdin.write((json.dumps(message) + "\n").encode())
        self.p.stdin.flush()

    def request(self, method, params):
        self.n += 1
        self.send({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params})
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise SystemExit("parley closed its output")
            message = json.loads(line)
            if message.get("id") == self.n:
                return message

    def call(self):
        reply = self.request("tools/call", {"name": "query", "arguments": {"sql": "SELECT 1"}})
        if reply.get("result", {}).get("isError") or "error" in reply:
            raise SystemExit(f"SELECT 1 failed: {reply}")

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


class Floor:
    def __init__(self, path):
        self.p = subprocess.Popen([sys.executable, "-c", FLOOR, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def call(self):
        self.p.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        self.p.stdin.flush()
        self.p.stdout.readline()

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--gaps", default="0,0.02,0.1")
    ap.add_argument("--baseline", help="another build of Parley, measured in the same run (results kept), to compare")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as kept_dir, tempfile.TemporaryDirectory() as engine_dir, \
            tempfile.TemporaryDirectory() as floor_dir, tempfile.TemporaryDirectory() as baseline_dir:
        servers = {
            "parley": Parley(args.binary, kept_dir),
            "parley, results not kept": Parley(args.binary, engine_dir, {"PARLEY_QUERY_RESULT_CACHE_BYTES": "0"}),
            "floor": Floor(f"{floor_dir}/log"),
        }
        if args.baseline:
            servers = {"baseline": Parley(args.baseline, baseline_dir), **servers}
        print("| gap between calls | server | p50 (p90) | ratio to the floor | CPU / call |")
        print("| --- | --- | ---: | ---: | ---: |")
        for gap in [float(g) for g in args.gaps.split(",")]:
            times = {name: [] for name in servers}
            cpu = {}
            for i in range(10 + args.samples):
                for name, server in servers.items():
                    if i == 10:
                        cpu[name] = -cpu_ns(server.p.pid)
                    t = time.perf_counter()
                    server.call()
                    if i >= 10:
                        times[name].append((time.perf_counter() - t) * 1000)
                    if gap:
                        time.sleep(gap)
            # Everything the servers did over the samples, what follows a reply (idle checkpoints) included.
            for name, server in servers.items():
                cpu[name] += cpu_ns(server.p.pid)
            p = {k: (statistics.median(v), sorted(v)[int(len(v) * 0.9)]) for k, v in times.items()}
            for name in servers:
                print(
                    f"| {gap * 1000:.0f} ms | {name} | {p[name][0]:.2f} ms ({p[name][1]:.2f}) "
                    f"| {p[name][0] / p['floor'][0]:.1f}x | {cpu[name] / args.samples / 1000:.0f} µs |"
                )
        for server in servers.values():
            server.close()

if __name__ == "__main__":
    main()
