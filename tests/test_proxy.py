"""``agentguard proxy`` end to end: the real openai and anthropic SDKs pointed at the proxy, the
proxy in-process on a loopback port, the simulated provider behind it. Money is judged by the
simulated provider's own bill."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from helpers import wait_for
from typer.testing import CliRunner

from agentguard import configure_logging
from agentguard.cli import app as cli_app
from agentguard.guard import Guard
from agentguard.proxy import ProxyServer
from agentguard.sim import CutStream, HTTPError, Reply, SimServer, Timeout, ToolCall
from agentguard.sim.script import as_script

OPENAI_KEY = "sk-proj-" + "Pr0xyK3y" * 6
ANTHROPIC_KEY = "sk-ant-api03-" + "Pr0xyAnt" * 5
LIMIT = Decimal("0.002")
MESSAGES = [{"role": "user", "content": "Summarise the budget report."}]


@pytest.fixture
def proxied(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> Iterator[Callable[..., tuple[Guard, ProxyServer]]]:
    """Start a proxy in front of the sim: ``proxied(**config_sections)``."""
    started: list[ProxyServer] = []

    def start(**sections: Any) -> tuple[Guard, ProxyServer]:
        proxy_section = {
            "openai_base_url": sim.base_url,
            "anthropic_base_url": sim.base_url.removesuffix("/v1"),
            **sections.pop("proxy", {}),
        }
        budgets = sections.pop(
            "budgets", [{"key": "team"}, {"key": "capped", "limit_usd": LIMIT, "window": "1h"}]
        )
        guard = make_guard(proxy=proxy_section, budgets=budgets, **sections)
        server = ProxyServer(guard)
        server.start()
        started.append(server)
        return guard, server

    yield start
    for server in started:
        server.stop()
        server.app.guard.close()


def openai_client(server: ProxyServer, key: str = OPENAI_KEY, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url + "/v1", api_key=key, max_retries=0, default_headers=headers
    )


def anthropic_client(
    server: ProxyServer, key: str = ANTHROPIC_KEY, **headers: str
) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.base_url, api_key=key, max_retries=0, default_headers=headers
    )


def settled_usd(guard: Guard, key: str) -> Decimal:
    guard.ledger.flush()
    return guard.budget_status(key).spent_usd


def test_every_dialect_streamed_and_not_passes_and_is_settled_at_the_sims_bill(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    guard, server = proxied()
    client = openai_client(server, **{"x-agentguard-budget-key": "team"})
    chat = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert chat.choices[0].message.content
    chunks = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat.choices[0].message.content
    # The usage chunk the guard asked for is not handed to a caller who did not ask.
    assert all(chunk.usage is None for chunk in chunks)
    response = client.responses.create(model="gpt-4o-mini", input="Summarise the report.")
    assert response.output_text
    with client.responses.stream(model="gpt-4o-mini", input="Summarise it again.") as stream:
        assert stream.get_final_response().usage is not None

    claude = anthropic_client(server, **{"x-agentguard-budget-key": "team"})
    message = claude.messages.create(model="claude-haiku-4-5", max_tokens=200, messages=MESSAGES)
    assert message.content[0].type == "text" and message.usage.output_tokens > 0
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=200, messages=MESSAGES
    ) as stream:
        assert stream.get_final_message().usage.output_tokens > 0
    counted = claude.messages.count_tokens(model="claude-haiku-4-5", messages=MESSAGES)
    assert counted.input_tokens > 0
    # The beta surface (Claude Code's): /v1/messages?beta=true, guarded the same.
    beta = claude.beta.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES)
    assert beta.usage.output_tokens > 0
    assert any(r.path == "/v1/messages" and r.body for r in sim.requests[-2:])

    billed = sim.billed_usd(OPENAI_KEY) + sim.billed_usd(ANTHROPIC_KEY)
    assert sim.billed_calls() == 7
    assert billed > 0
    assert settled_usd(guard, "team") == billed
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'agentguard_proxy_calls_total{budget_key="team",model="gpt-4o-mini"} 4' in metrics
    assert httpx.get(server.base_url + "/healthz").json() == {"status": "ok"}


def test_legacy_endpoints_are_metered_under_a_budget(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    guard, server = proxied(
        budgets=[{"key": "capped", "limit_usd": "5", "window": "1h"}],
        proxy={"budget_key": "capped"},
    )
    client = openai_client(server)
    embedded = client.embeddings.create(model="text-embedding-3-small", input="budget report")
    assert embedded.data
    completed = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=8)
    assert completed.choices
    assert sim.billed_calls() == 2
    assert settled_usd(guard, "capped") == sim.billed_usd(OPENAI_KEY) > 0


def _exhaust(call: Callable[[], Any], error: type[Exception]) -> Any:
    for _ in range(200):
        try:
            call()
        except error as exc:
            return exc
    raise AssertionError("the budget never refused a call")


def test_an_exhausted_budget_answers_429_in_openai_shape_with_the_exact_reset_and_parks(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]], tmp_path: Path
) -> None:
    guard, server = proxied()
    client = openai_client(
        server, **{"x-agentguard-budget-key": "capped", "x-agentguard-session": "task-7"}
    )
    refused = _exhaust(
        lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=60),
        openai.RateLimitError,
    )
    assert sim.billed_usd(OPENAI_KEY) <= LIMIT
    assert sim.billed_calls() >= 1
    assert refused.status_code == 429
    error = refused.body
    assert isinstance(error, dict) and error["code"] == "budget_exceeded"
    assert "budget 'capped' exceeded" in error["message"]
    headers = refused.response.headers
    resets_at = guard.budget_status("capped").resets_at
    assert resets_at is not None
    assert datetime.fromisoformat(headers["x-agentguard-reset-at"]) == resets_at
    wait_s = (resets_at - datetime.now(UTC)).total_seconds()
    # Whole seconds, rounded up, counted when the answer was made (a moment ago).
    assert 0 <= int(headers["retry-after"]) - wait_s <= 30
    assert 0 <= int(headers["retry-after-ms"]) / 1000 - wait_s <= 30
    assert headers["x-should-retry"] == "false"

    parked = guard.parked.get("task-7")
    assert parked.state == "parked" and parked.resume_at == resets_at
    assert parked.reason.kind == "local_budget" and parked.resumer == "proxy"
    # The command line sees it as any parked session.
    config = tmp_path / "agentguard.toml"
    config.write_text(f'[store]\nurl = "{guard.config.store.url}"\n[[budgets]]\nkey = "capped"\n')
    listed = CliRunner().invoke(cli_app, ["parked", "list", "--json", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    assert [record["session_id"] for record in json.loads(listed.stdout)] == ["task-7"]
    # Further calls of the parked session are refused at once: nothing more reaches the sim.
    calls = sim.billed_calls()
    again = _exhaust(
        lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5),
        openai.RateLimitError,
    )
    assert again.body["code"] in ("budget_exceeded", "session_parked")  # type: ignore[index]
    assert sim.billed_calls() == calls


def test_an_exhausted_budget_answers_in_anthropic_shape_to_anthropic_clients_streamed_too(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    guard, server = proxied(proxy={"budget_key": "capped"})
    claude = anthropic_client(server)

    def call() -> None:
        with claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=300, messages=MESSAGES
        ) as stream:
            stream.get_final_message()

    refused = _exhaust(call, anthropic.RateLimitError)
    assert sim.billed_usd(ANTHROPIC_KEY) <= LIMIT
    assert settled_usd(guard, "capped") == sim.billed_usd(ANTHROPIC_KEY) > 0
    body = refused.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "exceeded" in body["error"]["message"]
    assert refused.response.headers["x-agentguard-reset-at"]
    assert [record.budget_key for record in guard.parked.list()] == ["capped"]


def test_a_provider_limit_that_parks_answers_429_with_its_reset(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    guard, server = proxied()
    sim.inject(HTTPError(429, headers={"retry-after": "3600"}))
    client = openai_client(server, **{"x-agentguard-session": "long-wait"})
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert refused.value.body["code"] == "session_parked"  # type: ignore[index]
    parked = guard.parked.get("long-wait")
    assert parked.state == "parked" and parked.resume_at is not None
    reset = datetime.fromisoformat(refused.value.response.headers["x-agentguard-reset-at"])
    assert abs((reset - parked.resume_at).total_seconds()) < 0.001
    assert 3500 < int(refused.value.response.headers["retry-after"]) <= 3600


def test_a_parked_session_goes_on_when_the_client_calls_after_the_reset(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    guard, server = proxied(
        budgets=[{"key": "short", "limit_usd": "0.001", "window": "3s"}],
        parking={"wait_inline_max_s": 0},  # answered at once, not held until the reset
    )
    client = openai_client(
        server, **{"x-agentguard-budget-key": "short", "x-agentguard-session": "retrier"}
    )
    refused = _exhaust(
        lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=60),
        openai.RateLimitError,
    )
    reset = datetime.fromisoformat(refused.response.headers["x-agentguard-reset-at"])
    time.sleep(max((reset - datetime.now(UTC)).total_seconds(), 0) + 0.05)
    answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=60)
    assert answer.choices[0].message.content
    assert guard.parked.get("retrier").state == "resumed"


def test_the_clients_key_is_forwarded_and_never_stored_or_logged(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]], tmp_path: Path
) -> None:
    log = io.StringIO()
    configure_logging("debug", stream=log)
    try:
        guard, server = proxied()
        client = openai_client(server, **{"x-agentguard-budget-key": "capped"})
        _exhaust(
            lambda: client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=60
            ),
            openai.RateLimitError,
        )
        claude = anthropic_client(server)
        claude.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES)
        guard.ledger.flush()
    finally:
        configure_logging("warning")
    # The provider saw the client's own keys.
    assert sim.billed_usd(OPENAI_KEY) > 0 and sim.billed_usd(ANTHROPIC_KEY) > 0
    assert guard.parked.list()
    written = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    for key in (OPENAI_KEY, ANTHROPIC_KEY):
        assert key.encode() not in written
        assert key not in log.getvalue()
    assert "proxy_request" in log.getvalue()


def test_sessions_from_headers_keep_their_own_counters(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    _, server = proxied(limits={"max_iterations": 2})
    first = openai_client(server, **{"x-agentguard-session": "agent-a"})
    second = openai_client(server, **{"x-agentguard-session": "agent-b"})
    for _ in range(2):
        first.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError) as stopped:
        first.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert stopped.value.body["code"] == "max_iterations_exceeded"  # type: ignore[index]
    second.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert sim.billed_calls() == 3


def test_without_headers_each_conversation_is_a_session_of_its_own(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    _, server = proxied(limits={"max_iterations": 2})
    client = openai_client(server)
    system = {"role": "system", "content": "You are a careful agent."}
    conversation = [system, {"role": "user", "content": "Task one."}]
    client.chat.completions.create(model="gpt-4o-mini", messages=conversation)
    # The same conversation, grown by a turn: the same session.
    grown = [*conversation, {"role": "assistant", "content": "Done."}, MESSAGES[0]]
    client.chat.completions.create(model="gpt-4o-mini", messages=grown)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[*grown, MESSAGES[0]])
    # Another opening (a sub-agent's task), or another key: other sessions.
    other_task = [system, {"role": "user", "content": "Task two."}]
    client.chat.completions.create(model="gpt-4o-mini", messages=other_task)
    openai_client(server, key="sk-other").chat.completions.create(
        model="gpt-4o-mini", messages=conversation
    )
    assert sim.billed_calls() == 4


def test_virtual_keys_pick_the_budget_and_the_upstream_key(
    sim: SimServer,
    proxied: Callable[..., tuple[Guard, ProxyServer]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    virtual = "agk-team-" + "v" * 20
    monkeypatch.setenv("UPSTREAM_OPENAI_KEY", OPENAI_KEY)
    guard, server = proxied(
        proxy={
            "keys": [
                {
                    "sha256": hashlib.sha256(virtual.encode()).hexdigest(),
                    "budget_key": "capped",
                    "upstream_key_env": "UPSTREAM_OPENAI_KEY",
                }
            ]
        }
    )
    client = openai_client(server, key=virtual)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
    assert sim.billed_usd(virtual) == 0
    assert settled_usd(guard, "capped") == sim.billed_usd(OPENAI_KEY) > 0
    with pytest.raises(openai.AuthenticationError):
        openai_client(server, key="sk-unknown").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    escaping = openai_client(server, key=virtual, **{"x-agentguard-budget-key": "team"})
    with pytest.raises(openai.PermissionDeniedError) as refused:
        escaping.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert refused.value.body["code"] == "budget_key_not_allowed"  # type: ignore[index]
    assert sim.billed_calls() == 1


def test_unmetered_posts_are_refused_under_a_budget_and_unknown_paths_get_404(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    _, server = proxied(proxy={"max_request_bytes": 32 * 1024})
    auth = {"authorization": f"Bearer {OPENAI_KEY}"}
    refused = httpx.post(
        server.base_url + "/v1/images/generations",
        json={"prompt": "a cat"},
        headers={**auth, "x-agentguard-budget-key": "capped"},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "unmetered_request"
    # Reads pass through under a budget.
    listed = openai_client(server, **{"x-agentguard-budget-key": "capped"}).models.list()
    assert listed.data
    too_large = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=b"{" + b" " * (64 * 1024) + b"}",
        headers={**auth, "content-type": "application/json"},
    )
    assert too_large.status_code == 413
    assert "proxy.max_request_bytes" in too_large.json()["error"]["message"]
    missing = httpx.get(server.base_url + "/nowhere", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    unknown_budget = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={**auth, "x-agentguard-budget-key": "capd"},
    )
    assert unknown_budget.status_code == 400
    assert "did you mean 'capped'" in unknown_budget.json()["error"]["message"]
    bad_session = httpx.post(
        server.base_url + "/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 10, "messages": MESSAGES},
        headers={"x-api-key": ANTHROPIC_KEY, "x-agentguard-session": "no spaces allowed"},
    )
    assert bad_session.status_code == 400
    error = bad_session.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith("x-agentguard-session: ")
    assert sim.billed_calls() == 0


def test_a_stream_cut_upstream_is_cut_for_the_client_and_charged_at_its_worst_case(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    guard, server = proxied()
    client = openai_client(server, **{"x-agentguard-budget-key": "team"})
    sim.inject(CutStream(after_chunks=2))
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=100, stream=True
        )
        for _ in stream:
            pass
    billed = sim.billed_usd(OPENAI_KEY)
    assert billed > 0
    # What the provider generated before the cut is unknown to the guard: charged at the
    # worst case, never less than the bill.
    assert settled_usd(guard, "team") >= billed


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_budgets_through_the_proxy_hold_on_each_store(
    store_url: str, sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    # store_url comes first: its database outlives the proxy's guard, which flushes on close.
    guard, server = proxied(store={"url": store_url})
    assert guard.store.is_sqlite == store_url.startswith("sqlite")
    client = openai_client(
        server, **{"x-agentguard-budget-key": "capped", "x-agentguard-session": "on-store"}
    )
    refused = _exhaust(
        lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=60),
        openai.RateLimitError,
    )
    assert refused.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert 0 < sim.billed_usd(OPENAI_KEY) <= LIMIT
    assert settled_usd(guard, "capped") == sim.billed_usd(OPENAI_KEY)
    assert guard.parked.get("on-store").state == "parked"


def test_a_child_session_named_by_its_parent_draws_on_the_parents_session_budget(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    guard, server = proxied(limits={"max_session_usd": "0.002"})
    parent = openai_client(server, **{"x-agentguard-session": "lead"})
    child = openai_client(
        server, **{"x-agentguard-session": "helper", "x-agentguard-parent": "lead"}
    )
    parent.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=60)
    refused = _exhaust(
        lambda: child.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=60),
        openai.PermissionDeniedError,
    )
    # A session's own budget never resets: refused for good, not parked.
    assert refused.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert "'session:lead'" in refused.body["message"]  # type: ignore[index]
    assert sim.billed_usd(OPENAI_KEY) <= Decimal("0.002")
    assert guard.parked.list() == []
    # Another root session has a budget of its own.
    other = openai_client(server, **{"x-agentguard-session": "another"})
    other.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=60)


def test_loop_detection_and_routing_apply_through_the_proxy_as_in_process(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    _, server = proxied(limits={"loop_threshold": 3}, routing={"force_model": "gpt-4o-mini"})
    search = ToolCall("search", {"query": "budget report"})
    sim.script = as_script([Reply(tool_calls=[search])] * 5)
    client = openai_client(server, **{"x-agentguard-session": "looping"})
    tools = [
        {
            "type": "function",
            "function": {"name": "search", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    for _ in range(2):
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=tools)
        assert answer.choices[0].message.tool_calls
    with pytest.raises(openai.PermissionDeniedError) as stopped:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=tools)
    assert stopped.value.body["code"] == "loop_threshold_exceeded"  # type: ignore[index]
    # Routing rewrote the request before it left: the provider saw the routed model.
    assert {request.body["model"] for request in sim.requests if request.body} == {"gpt-4o-mini"}


def test_a_short_wait_for_the_budget_is_held_in_the_proxy_and_each_window_stays_under_its_limit(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    window_s = 2
    _, server = proxied(
        budgets=[{"key": "short", "limit_usd": "0.001", "window": f"{window_s}s"}],
        parking={"wait_inline_max_s": 30},
    )
    client = openai_client(
        server, **{"x-agentguard-budget-key": "short", "x-agentguard-session": "patient"}
    )
    for _ in range(5):  # more than one window's budget: some calls wait for the next window
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=60)
    assert sim.billed_calls() == 5
    # Every call is the same request, so each is billed the same.
    per_call = sim.billed_usd(OPENAI_KEY) / 5
    calls_per_window = Counter(int(request.time // window_s) for request in sim.requests)
    assert len(calls_per_window) >= 2
    for calls in calls_per_window.values():
        assert calls * per_call <= Decimal("0.001")


def test_the_proxy_command_refuses_a_port_in_use_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["proxy", "--port", str(port)])
    assert result.exit_code == 2
    assert f"--host/--port: cannot listen on 127.0.0.1:{port}" in result.output
    bad = CliRunner().invoke(cli_app, ["proxy", "--port", "0"])
    assert bad.exit_code == 2 and "--port" in bad.output


def test_metrics_keep_a_bounded_number_of_label_sets() -> None:
    from agentguard.proxy.metrics import MAX_LABEL_SETS, Metrics

    metrics = Metrics()
    for index in range(MAX_LABEL_SETS + 50):
        metrics.refused("team", f"made-up-model-{index}", "refused")
    text = metrics.render()
    assert 'model="made-up-model-0"' in text
    assert f'model="made-up-model-{MAX_LABEL_SETS + 10}"' not in text
    assert (
        'agentguard_proxy_refusals_total{budget_key="team",model="other",kind="refused"} 50' in text
    )


def test_import_agentguard_loads_no_server_or_client_of_the_proxy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, agentguard;"
        "print([m for m in ('uvicorn', 'aiohttp', 'agentguard.proxy') if m in sys.modules])"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert output.returncode == 0 and output.stdout.strip() == "[]"


def test_an_upstream_that_goes_silent_is_charged_and_retried_then_answered_502(
    sim: SimServer, proxied: Callable[..., tuple[Guard, ProxyServer]]
) -> None:
    guard, server = proxied(
        proxy={"read_timeout_s": 0.5}, limits={"max_retries": 1, "backoff_initial_s": 0.01}
    )
    sim.inject(Timeout(seconds=2.0), n=2)
    client = openai_client(server, **{"x-agentguard-budget-key": "team"})
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
    assert failed.value.status_code == 502
    assert failed.value.body["code"] == "upstream_failed"  # type: ignore[index]
    # Both attempts may have been billed (the sim answers after the proxy gave up): each was
    # charged at its worst case, never less than the bill.
    wait_for(lambda: sim.billed_calls() == 2, timeout=30)
    assert settled_usd(guard, "team") >= sim.billed_usd(OPENAI_KEY) > 0


def test_an_upstream_that_cannot_be_reached_is_502_and_charges_nothing(
    proxied: Callable[..., tuple[Guard, ProxyServer]],
) -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    guard, server = proxied(proxy={"openai_base_url": nowhere}, limits={"max_retries": 1})
    client = openai_client(server, **{"x-agentguard-budget-key": "capped"})
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
    assert failed.value.status_code == 502
    assert settled_usd(guard, "capped") == 0
