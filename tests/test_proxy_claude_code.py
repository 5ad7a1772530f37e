"""Claude Code through ``agentguard proxy``: the real ``claude`` binary run non-interactively
(``claude -p``) with ``ANTHROPIC_BASE_URL`` at the proxy, the simulated provider behind it, and
an invented API key. Money is judged by the simulated provider's own bill.

Needs the ``claude`` binary (``npm install @anthropic-ai/claude-code``), found on ``PATH`` or
named by ``AGENTGUARD_CLAUDE_BIN``; ``.ci/run`` installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agentguard.guard import Guard
from agentguard.proxy import ProxyServer
from agentguard.sim import SimServer

CLAUDE = os.environ.get("AGENTGUARD_CLAUDE_BIN") or shutil.which("claude")
pytestmark = pytest.mark.skipif(
    CLAUDE is None,
    reason="the claude binary is not installed (npm install @anthropic-ai/claude-code; "
    "AGENTGUARD_CLAUDE_BIN names it)",
)

KEYS = ["sk-ant-api03-" + f"Inv3nted{index}" * 5 for index in range(4)]
MODEL = "claude-haiku-4-5"
# Claude Code's first call sends a ~19k-token system prompt and tool list; with its output cap
# at 1,024 tokens the proxy reserves ~$0.065 for it and the sim bills ~$0.024 (a cache write).
# Each run uses another key, so neither the sim's prompt cache nor the proxy's knowledge of a
# cached prefix makes the next run cheaper: the first fits this limit, the second cannot.
LIMIT = Decimal("0.08")


def run_claude(server: ProxyServer, home: Path, key: str) -> dict[str, Any]:
    """``claude -p`` against the proxy, in a home of its own; its JSON result."""
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": server.base_url,
        "ANTHROPIC_API_KEY": key,
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "1024",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    assert CLAUDE is not None
    finished = subprocess.run(
        [CLAUDE, "-p", "Say hello.", "--model", MODEL, "--output-format", "json"],
        env=environment,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    try:
        result: dict[str, Any] = json.loads(finished.stdout)
    except ValueError:
        pytest.fail(
            f"claude -p gave no JSON (exit {finished.returncode}): {finished.stderr[-800:]}"
        )
    return result


@pytest.fixture
def proxied(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> Iterator[tuple[Guard, ProxyServer]]:
    """A proxy in front of the sim, with budget ``claude`` for requests that name none."""
    guard = make_guard(
        proxy={
            "anthropic_base_url": sim.url,
            "openai_base_url": sim.base_url,
            "budget_key": "claude",
        },
        budgets=[{"key": "claude", "limit_usd": LIMIT, "window": "1h"}],
    )
    server = ProxyServer(guard)
    server.start()
    yield guard, server
    server.stop()
    guard.close()


def test_claude_code_calls_are_counted_and_budgeted_and_a_refusal_reaches_it_as_a_429(
    sim: SimServer, proxied: tuple[Guard, ProxyServer], tmp_path: Path
) -> None:
    guard, server = proxied
    answered: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for key in KEYS:
        result = run_claude(server, tmp_path, key)
        if result.get("is_error"):
            break
        answered.append(result)
    assert answered, f"Claude Code's first call was refused: {result.get('result')}"
    assert answered[0]["result"].startswith("Simulated answer")

    # The refusal reached Claude Code as a 429 in Anthropic's error shape, with the reason.
    assert result.get("is_error") is True, "the budget never refused a call"
    assert result["api_error_status"] == 429
    assert "budget 'claude' exceeded" in result["result"]

    # Every answered call was metered and settled at the sim's bill; nothing refused reached it.
    billed = sim.billed_usd()
    assert 0 < billed <= LIMIT
    assert sim.billed_calls() == len(answered)
    guard.ledger.flush()
    assert guard.budget_status("claude").spent_usd == billed
    metrics = server.app.metrics
    assert metrics.calls[("claude", MODEL)] == len(answered)
    assert metrics.refusals[("claude", MODEL, "parked")] >= 1

    # The refused session is recorded parked until the budget's reset.
    named = re.search(r"for session '([^']+)'", result["result"])
    assert named is not None, result["result"]
    parked = guard.parked.get(named.group(1))
    assert parked.state == "parked" and parked.resumer == "proxy"
    assert parked.resume_at == guard.budget_status("claude").resets_at
