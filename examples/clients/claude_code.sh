#!/usr/bin/env sh
# Register Parley with Claude Code (stdio), acting as the demo analyst.
claude mcp add parley --env PARLEY_PRINCIPAL=analyst -- parley serve
# Or, against a running HTTP server with the dev issuer (parley serve --http 127.0.0.1:8765 --dev-issuer):
# claude mcp add --transport http parley-http http://127.0.0.1:8765/mcp \
#   --header "Authorization: Bearer $(parley token --principal analyst --ttl 8h)"
# Or a token-less local HTTP server acting as one principal (parley serve --http 127.0.0.1:8765 --principal analyst):
# claude mcp add --transport http parley-local http://127.0.0.1:8765/mcp
