#!/usr/bin/env bash
# Installs Claude Code from npm (cached in $AGENTGUARD_E2E_CACHE, default /tmp/agentguard-e2e) for
# the test that runs it through `agentguard proxy` (tests/test_proxy_claude_code.py), and prints
# the path of its `claude` binary: AGENTGUARD_CLAUDE_BIN=$(bash scripts/install-claude-code.sh).
set -euo pipefail

CACHE=${AGENTGUARD_E2E_CACHE:-/tmp/agentguard-e2e}
VERSION=${AGENTGUARD_CLAUDE_CODE_VERSION:-2.1.332}
PREFIX="$CACHE/claude-code-$VERSION"
CLAUDE="$PREFIX/node_modules/.bin/claude"

if [ ! -x "$CLAUDE" ]; then
    command -v npm >/dev/null 2>&1 || {
        echo "npm not found: cannot install Claude Code" >&2
        exit 1
    }
    echo "installing @anthropic-ai/claude-code@$VERSION from npm into $PREFIX" >&2
    mkdir -p "$PREFIX"
    [ -f "$PREFIX/package.json" ] || echo '{"private": true}' >"$PREFIX/package.json"
    timeout 900 npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@$VERSION" >/dev/null
fi
"$CLAUDE" --version >&2
echo "$CLAUDE"
