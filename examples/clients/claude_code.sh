#!/usr/bin/env sh
# Register Parley with Claude Code (stdio), acting as the demo analyst.
claude mcp add parley --env PARLEY_PRINCIPAL=analyst -- parley serve
# Or, against a running HTTP server (parley serve --http 127.0.0.1:8765):
# claude mcp add --transport http parley-http http://127.0.0.1:8765/mcp
