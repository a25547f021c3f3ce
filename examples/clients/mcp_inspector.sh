#!/usr/bin/env sh
# Explore Parley with the MCP Inspector (UI), or call a tool from its CLI mode.
npx @modelcontextprotocol/inspector parley serve
# CLI mode:
# npx @modelcontextprotocol/inspector --cli parley serve --method tools/list
# npx @modelcontextprotocol/inspector --cli parley serve --method tools/call \
#   --tool-name query --tool-arg 'sql=SELECT status, count(*) FROM sales.orders GROUP BY status'
