"""Helpers for the OpenClaw end-to-end test (run.sh): ports, configs, and the checks.

Run with agentguard's Python: ``python helper.py <command> [options]``. Each check prints what it
saw and exits non-zero when the expectation is not met.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now (bound together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.bind(("127.0.0.1", 0))
            sockets.append(server)
        return [server.getsockname()[1] for server in sockets]
    finally:
        for server in sockets:
            server.close()


def wait_http(url: str, timeout_s: float) -> None:
    """Wait until ``url`` answers 2xx."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f}s ({last})")


def write_openclaw_config(args: argparse.Namespace) -> None:
    """The gateway's openclaw.json: loopback with token auth, and ``agentguard proxy`` (in front
    of the sim) as a custom provider: two models on one budget, the second as fallback (with a
    fallback configured, OpenClaw fails over instead of waiting out a retry-after longer than
    60 s in the run). Both are priced as gpt-4o-mini, so the fallback's call fits the budget's
    limit and is refused for the spent window like the first, not as too large for any."""

    def model(model_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "name": f"agentguard sim {model_id}",
            "reasoning": False,
            "input": ["text"],
            "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
            "contextWindow": 128000,
            # The output cap OpenClaw asks for: the proxy reserves it before each call.
            "maxTokens": args.max_tokens,
        }

    config = {
        "gateway": {
            "mode": "local",
            "port": args.gateway_port,
            "bind": "loopback",
            "auth": {"mode": "token", "token": args.token},
        },
        "models": {
            "mode": "merge",
            "providers": {
                "sim": {
                    "baseUrl": args.sim_url,
                    "apiKey": args.key,
                    "api": "openai-completions",
                    "models": [model("gpt-4o-mini"), model(FALLBACK_MODEL)],
                }
            },
        },
        "agents": {
            "defaults": {
                "model": {"primary": "sim/gpt-4o-mini", "fallbacks": [f"sim/{FALLBACK_MODEL}"]},
                # No runs of OpenClaw's own on the test's budget key: a heartbeat turn that
                # spent the reset window first would make the resume wait another window.
                "heartbeat": {"every": "0m"},
            }
        },
        "session": {"notifyOnCreate": False},
    }
    Path(args.path).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


FALLBACK_MODEL = "gpt-4o-mini-2024-07-18"


def patch_plugin_entry(args: argparse.Namespace) -> None:
    """Give the linked plugin its config and the conversation access its agent_end hook needs."""
    path = Path(args.path)
    config = json.loads(path.read_text(encoding="utf-8"))
    plugins = config.setdefault("plugins", {})
    entry = plugins.setdefault("entries", {}).setdefault("agentguard", {})
    if plugins.get("load", {}).get("paths") is None:
        raise SystemExit(f"{path}: `openclaw plugins install --link` did not add a load path")
    entry["enabled"] = True
    entry["hooks"] = {"allowConversationAccess": True}
    entry["config"] = {
        "parkingDir": args.parking_dir,
        "pollIntervalMs": 200,
        "windowHours": 1,
        "budgetKey": "openclaw-e2e",
    }
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(plugins, indent=2))


def parked_records(agentguard: str) -> list[dict[str, Any]]:
    """What ``agentguard parked list --json`` shows."""
    result = subprocess.run(
        [agentguard, "parked", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # Plain JSON: no colours (rich forces them whenever FORCE_COLOR is set), no wrapping.
        env={
            **{k: v for k, v in os.environ.items() if k != "FORCE_COLOR"},
            "NO_COLOR": "1",
            "COLUMNS": "200",
        },
    )
    if result.returncode != 0:
        raise SystemExit(f"agentguard parked list failed: {result.stderr.strip()}")
    return json.loads(result.stdout or "[]")


def wait_record(args: argparse.Namespace) -> None:
    """Wait until the session's record is in one of ``--state`` (and fail on ``--fail-on``)."""
    wanted = set(args.state.split(","))
    failing = set(args.fail_on.split(",")) if args.fail_on else set()
    deadline = time.monotonic() + args.timeout
    seen: list[str] = []
    record: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        records = [r for r in parked_records(args.agentguard) if r["session_id"] == args.session_id]
        record = records[0] if records else None
        state = record["state"] if record else "(no record)"
        if not seen or seen[-1] != state:
            seen.append(state)
            attempts = record["attempts"] if record else "-"
            print(f"   record {args.session_id}: {state} (attempts {attempts})", flush=True)
        if record and record["state"] in wanted:
            break
        if record and record["state"] in failing:
            print(json.dumps(record, indent=2))
            raise SystemExit(f"record went {record['state']}, expected {args.state}")
        time.sleep(args.interval)
    else:
        print(json.dumps(record, indent=2))
        raise SystemExit(f"no record in state {args.state} within {args.timeout:.0f}s: {seen}")
    assert record is not None
    if args.framework and record["framework"] != args.framework:
        raise SystemExit(f"framework is {record['framework']!r}, expected {args.framework!r}")
    if args.show:
        print(json.dumps(record, indent=2))
    if args.save:
        Path(args.save).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def proxy_records(args: argparse.Namespace) -> None:
    """Wait until some record of ``agentguard proxy`` is in ``--state``; print their ids.

    The proxy records each session it refuses, and derives a session from the conversation's
    opening: OpenClaw names the model in its system prompt, so each model it tries (the
    primary, then the fallback) is a session of its own there."""
    deadline = time.monotonic() + args.timeout
    while True:
        records = [r for r in parked_records(args.agentguard) if r["framework"] == "proxy"]
        found = [r["session_id"] for r in records if r["state"] == args.state]
        if found:
            left = [r["session_id"] for r in records if r["state"] == args.none_left]
            if left:
                raise SystemExit(f"records of agentguard proxy still {args.none_left}: {left}")
            print(" ".join(found))
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"no record of agentguard proxy {args.state} in {args.timeout:.0f}s")
        time.sleep(args.interval)


def check_parked(args: argparse.Namespace) -> None:
    """The parked record holds what the plugin promised: session key, message, reason, reset."""
    record = json.loads(Path(args.record).read_text(encoding="utf-8"))
    metadata = record["metadata"]
    reason = record["reason"]
    problems = []
    if record["resumer"] != "openclaw":
        problems.append(f"resumer {record['resumer']!r}")
    if metadata.get("session_key") != args.session_key:
        problems.append(f"metadata.session_key {metadata.get('session_key')!r}")
    if metadata.get("message") != args.message:
        problems.append(f"metadata.message {metadata.get('message')!r}")
    if reason["kind"] != "budget_window" or reason["status"] != 429:
        problems.append(f"reason {reason['kind']} {reason['status']}")
    if reason["reset_source"] != "message":
        problems.append(f"reset_source {reason['reset_source']!r} (the sim says when it resets)")
    if record["budget_key"] != "openclaw-e2e":
        problems.append(f"budget_key {record['budget_key']!r}")
    if problems:
        raise SystemExit("parked record is wrong: " + "; ".join(problems))
    print(
        f"   parked: {reason['kind']} {reason['status']} ({reason['message'][:90]}...), "
        f"resume_at {record['resume_at']} from the error message"
    )


def check_transcript(args: argparse.Namespace) -> None:
    """The session's transcript ends with an answer to the resent message, from the run the
    resume ticket started (the same OpenClaw session, not a new one)."""
    history = json.loads(Path(args.history).read_text(encoding="utf-8"))
    record = json.loads(Path(args.record).read_text(encoding="utf-8"))
    messages = history.get("messages") or []
    if history.get("sessionKey") != args.session_key:
        raise SystemExit(f"history is of session {history.get('sessionKey')!r}")
    if len(messages) < 2:
        raise SystemExit(f"the transcript has {len(messages)} messages")
    last, before = messages[-1], messages[-2]

    def text(message: dict[str, Any]) -> str:
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(part.get("text", "") for part in content or [] if isinstance(part, dict))

    if last.get("role") != "assistant" or last.get("stopReason") != "stop" or not text(last):
        raise SystemExit(f"the transcript does not end with an answer: {json.dumps(last)[:500]}")
    if before.get("role") != "user" or text(before) != args.message:
        raise SystemExit(
            f"the answer does not follow the resent message: {json.dumps(before)[:300]}"
        )
    run_id = (last.get("__openclaw") or {}).get("runId")
    result = json.dumps(record.get("result") or {})
    if not run_id or run_id not in result:
        raise SystemExit(f"the final answer's run {run_id!r} is not the resumed run ({result})")
    print(f"   transcript: {len(messages)} messages; the last answer is from run {run_id}:")
    print(f"   {text(last)[:160]!r}")


def validate_records(args: argparse.Namespace) -> None:
    """Every record the plugin builds (records.mjs, on stdin) is one agentguard accepts."""
    from agentguard.parking.record import ParkedSession

    records = json.load(sys.stdin)
    for record in records:
        parsed = ParkedSession.model_validate(record)
        if parsed.framework != "openclaw" or parsed.resumer != "openclaw":
            raise SystemExit(f"{parsed.session_id}: framework/resumer not openclaw")
    print(f"   {len(records)} plugin records validate against agentguard's ParkedSession")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ports = commands.add_parser("free-ports")
    ports.add_argument("count", type=int)
    http = commands.add_parser("wait-http")
    http.add_argument("url")
    http.add_argument("--timeout", type=float, default=60)
    openclaw = commands.add_parser("openclaw-config")
    for name in ("--path", "--token", "--sim-url", "--key"):
        openclaw.add_argument(name, required=True)
    openclaw.add_argument("--gateway-port", type=int, required=True)
    openclaw.add_argument("--max-tokens", type=int, default=4096)
    patch = commands.add_parser("patch-plugin-entry")
    patch.add_argument("--path", required=True)
    patch.add_argument("--parking-dir", required=True)
    wait = commands.add_parser("wait-record")
    wait.add_argument("--agentguard", required=True)
    wait.add_argument("--session-id", required=True)
    wait.add_argument("--state", required=True, help="comma-separated states to wait for")
    wait.add_argument("--fail-on", default="", help="comma-separated states that fail the wait")
    wait.add_argument("--framework")
    wait.add_argument("--timeout", type=float, default=60)
    wait.add_argument("--interval", type=float, default=1.0)
    wait.add_argument("--show", action="store_true")
    wait.add_argument("--save")
    proxy = commands.add_parser("proxy-records")
    proxy.add_argument("--agentguard", required=True)
    proxy.add_argument("--state", required=True)
    proxy.add_argument("--timeout", type=float, default=30)
    proxy.add_argument("--interval", type=float, default=0.5)
    proxy.add_argument("--none-left", help="fail if a record of the proxy is still in this state")
    parked = commands.add_parser("check-parked")
    for name in ("--record", "--session-key", "--message"):
        parked.add_argument(name, required=True)
    transcript = commands.add_parser("check-transcript")
    for name in ("--history", "--record", "--session-key", "--message"):
        transcript.add_argument(name, required=True)
    commands.add_parser("validate-records")
    args = parser.parse_args(argv)
    if args.command == "free-ports":
        print(" ".join(str(port) for port in free_ports(args.count)))
    elif args.command == "wait-http":
        wait_http(args.url, args.timeout)
    elif args.command == "openclaw-config":
        write_openclaw_config(args)
    elif args.command == "patch-plugin-entry":
        patch_plugin_entry(args)
    elif args.command == "wait-record":
        wait_record(args)
    elif args.command == "proxy-records":
        proxy_records(args)
    elif args.command == "check-parked":
        check_parked(args)
    elif args.command == "check-transcript":
        check_transcript(args)
    elif args.command == "validate-records":
        validate_records(args)


if __name__ == "__main__":
    main(sys.argv[1:])
