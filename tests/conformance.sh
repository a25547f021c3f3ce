#!/usr/bin/env bash
# The official MCP conformance suite against Parley's HTTP transport, in the token-less loopback mode
# (`serve --http 127.0.0.1:P --principal analyst`). Runs the server scenarios that apply to any server; the rest
# call tools, prompts and resources of the suite's own reference server (test_simple_text, ...) that Parley does
# not have. Needs Node 22 (the suite uses fs.globSync): installed from the npm registry into the cache.
#
#   tests/conformance.sh PARLEY_BINARY [CACHE_DIR]
set -euo pipefail
parley="$1"
cache="${2:-$HOME/.cache/parley-ci}/conformance"
mkdir -p "$cache"
if [ ! -x "$cache/node_modules/.bin/node" ] || [ ! -f "$cache/node_modules/@modelcontextprotocol/conformance/dist/index.js" ]; then
    (cd "$cache" && npm install --silent --no-audit --no-fund node@22 @modelcontextprotocol/conformance@0.1.16)
fi
node="$cache/node_modules/.bin/node"
suite="$cache/node_modules/@modelcontextprotocol/conformance/dist/index.js"

data="$(mktemp -d)"
log="$data.log"
"$parley" init --data-dir "$data" > /dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$parley" serve --data-dir "$data" --http "127.0.0.1:$port" --principal analyst 2> "$log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$data" "$log"' EXIT
for _ in $(seq 1 100); do
    grep -q "serving MCP over streamable HTTP" "$log" && break
    sleep 0.2
done

failed=0
for scenario in server-initialize ping logging-set-level completion-complete tools-list resources-list prompts-list \
    server-sse-multiple-streams dns-rebinding-protection; do
    if PATH="$(dirname "$node"):$PATH" "$node" "$suite" server --url "http://127.0.0.1:$port/mcp" \
        --scenario "$scenario" > "$data/$scenario.out" 2>&1; then
        echo "conformance $scenario: passed"
    else
        echo "conformance $scenario: FAILED"
        cat "$data/$scenario.out"
        failed=1
    fi
done
exit $failed
