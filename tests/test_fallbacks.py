"""Fallback chains, cooldowns and latency-aware choice, through the public API: real openai
and anthropic clients wrapped by a guard, over loopback HTTP to the sim, whose own bill judges
the money. The sim fails one model (``fail_model``) while its other models answer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from helpers import captured
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from agentguard import BudgetExceeded, ConfigError, RetryLimitExceeded
from agentguard.config import GuardConfig
from agentguard.guard import Guard
from agentguard.sim import SimServer

KEY = "sk-fallback-test-0001"
HELLO = [{"role": "user", "content": "Say hello."}]


def guard_for(store_url: str, *, limit: str = "1", **routing: Any) -> Guard:
    retries = routing.pop("max_retries", 1)
    return Guard(
        GuardConfig.from_mapping(
            {
                "store": {"url": store_url},
                "budgets": [{"key": "team", "limit_usd": limit, "window": "1d"}],
                "limits": {
                    "max_retries": retries,
                    "backoff_initial_s": 0.01,
                    "backoff_max_s": 0.02,
                },
                "routing": routing,
            },
            env={},
        )
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def models_sent(sim: SimServer) -> list[str]:
    return [str((r.body or {}).get("model")) for r in sim.requests if r.method == "POST"]


def judge(sim: SimServer, guard: Guard) -> tuple[Decimal, Decimal]:
    """The provider's bill and the ledger's spend, once every hold is settled."""
    assert sim.wait_idle(30)
    guard.close()
    status = guard.budget_status("team")
    assert status.reserved_usd == 0  # every hold settled, charged or given back
    return sim.billed_usd(), status.spent_usd


def call(api: str, guard: Guard, sim: SimServer, model: str, **options: Any) -> Any:
    """One call through a wrapped client of ``api``; returns the SDK's own object."""
    if api == "anthropic":
        claude = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=KEY, **options))
        return claude.messages.create(model=model, max_tokens=30, messages=HELLO)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=KEY, **options))
    if api == "responses":
        return client.responses.create(model=model, max_output_tokens=30, input="Say hello.")
    return client.chat.completions.create(model=model, max_tokens=30, messages=HELLO)


def test_a_model_that_keeps_failing_falls_back_after_its_retries(
    sim: SimServer, store: str
) -> None:
    guard = guard_for(store, fallbacks={"gpt-4o": ["gpt-4.1", "gpt-4o-mini"]}, max_retries=2)
    sim.fail_model("gpt-4o", status=503)
    with captured() as events, guard.session(budget_key="team") as session:
        answer = call("chat", guard, sim, "gpt-4o", max_retries=0)
    assert isinstance(answer, ChatCompletion) and answer.model == "gpt-4.1"
    assert models_sent(sim) == ["gpt-4o"] * 3 + ["gpt-4.1"]
    switches = [e for e in events if e["event"] == "fallback"]
    assert len(switches) == 1
    assert switches[0]["from_model"] == "gpt-4o" and switches[0]["model"] == "gpt-4.1"
    assert "HTTP 503 after 2 retries" in switches[0]["reason"]
    assert session.fallbacks == 1 and session.iterations == 1 and session.state.retries == 2
    billed, spent = judge(sim, guard)
    assert billed == spent == session.spent_usd > 0


@pytest.mark.parametrize("api", ["chat", "responses", "anthropic"])
@pytest.mark.parametrize(
    ("status", "reason"), [(529, "overloaded"), (404, "model_not_found")], ids=["529", "404"]
)
def test_an_overloaded_or_missing_model_falls_back_at_once_keeping_the_callers_types(
    sim: SimServer, store: str, api: str, status: int, reason: str
) -> None:
    first, second = (
        ("claude-sonnet-4-6", "claude-haiku-4-5") if api == "anthropic" else ("gpt-4o", "gpt-4.1")
    )
    guard = guard_for(store, fallbacks={first: [second]}, max_retries=3)
    sim.fail_model(first, status=status)
    with captured() as events, guard.session(budget_key="team") as session:
        answer = call(api, guard, sim, first, max_retries=0)
    expected = {"chat": ChatCompletion, "responses": Response, "anthropic": anthropic.types.Message}
    assert type(answer) is expected[api]
    assert answer.model == second
    assert models_sent(sim) == [first, second]  # no retries of a model that said it is gone
    assert [e["reason"] for e in events if e["event"] == "fallback"] == [reason]
    assert session.fallbacks == 1 and session.state.retries == 0
    billed, spent = judge(sim, guard)
    assert billed == spent == session.spent_usd > 0


def test_timed_out_attempts_stay_charged_and_the_fallback_reserves_its_own(
    sim: SimServer, store: str
) -> None:
    guard = guard_for(store, fallbacks={"gpt-4o": ["gpt-4o-mini"]}, max_retries=1)
    sim.timeout_next(2, seconds=1.0)
    with guard.session(budget_key="team") as session:
        answer = call("chat", guard, sim, "gpt-4o", max_retries=0, timeout=0.3)
    assert answer.model == "gpt-4o-mini" and session.fallbacks == 1
    billed, spent = judge(sim, guard)
    assert sim.billed_calls() == 3 == guard.budget_status("team").calls
    # The two attempts nobody read were billed all the same: charged at their worst case.
    assert billed <= spent == session.spent_usd


def test_a_fallback_the_budget_cannot_cover_is_never_sent(sim: SimServer, store: str) -> None:
    # Room for a gpt-4o-mini call's worst case, not for a gpt-4o one.
    guard = guard_for(store, limit="0.0002", fallbacks={"gpt-4o-mini": ["gpt-4o"]})
    sim.fail_model("gpt-4o-mini", status=529)
    with guard.session(budget_key="team"), pytest.raises(BudgetExceeded):
        call("chat", guard, sim, "gpt-4o-mini", max_retries=0)
    assert models_sent(sim) == ["gpt-4o-mini"]
    billed, spent = judge(sim, guard)
    assert billed == spent == 0


async def test_an_async_stream_falls_back_and_settles_from_its_usage(
    sim: SimServer, store: str
) -> None:
    guard = guard_for(store, fallbacks={"gpt-4o": ["gpt-4.1"]})
    sim.fail_model("gpt-4o", status=529)
    client = guard.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0))
    async with guard.session(budget_key="team") as session:
        stream = await client.chat.completions.create(
            model="gpt-4o", max_tokens=30, messages=HELLO, stream=True
        )
        models = {chunk.model async for chunk in stream}
    assert models == {"gpt-4.1"} and session.fallbacks == 1
    billed, spent = judge(sim, guard)
    assert billed == spent == session.spent_usd > 0


def test_a_chain_with_every_model_down_fails_as_before(sim: SimServer, store: str) -> None:
    guard = guard_for(store, fallbacks={"gpt-4o": ["gpt-4.1"]}, max_retries=1)
    sim.fail_model("gpt-4o", status=500)
    sim.fail_model("gpt-4.1", status=500)
    with guard.session(budget_key="team") as session, pytest.raises(RetryLimitExceeded):
        call("chat", guard, sim, "gpt-4o", max_retries=0)
    assert models_sent(sim) == ["gpt-4o", "gpt-4o", "gpt-4.1", "gpt-4.1"]
    assert session.fallbacks == 1
    billed, spent = judge(sim, guard)
    assert billed == spent == 0


def test_a_tier_chain_applies_to_the_tiers_model(sim: SimServer, store: str) -> None:
    guard = guard_for(
        store,
        tiers={"small": "gpt-4o-mini", "large": "gpt-4o"},
        fallbacks={"large": ["gpt-4.1"]},
        force_model="gpt-4o",
    )
    sim.fail_model("gpt-4o", status=404)
    with guard.session(budget_key="team"):
        answer = call("chat", guard, sim, "gpt-4o", max_retries=0)
    assert answer.model == "gpt-4.1"


@pytest.mark.parametrize(
    ("fallbacks", "message"),
    [
        ({"claude-sonnet-4-6": ["gpt-4.1"]}, "routing.fallbacks.claude-sonnet-4-6"),
        ({"gpt-4o": ["gpt-imaginary-9"]}, "routing.fallbacks.gpt-4o: model 'gpt-imaginary-9'"),
        ({"gpt-4o": ["gpt-4o"]}, "routing: fallbacks.gpt-4o: a chain names each model once"),
    ],
    ids=["cross-provider", "unpriced", "itself"],
)
def test_a_chain_that_cannot_work_is_refused_when_the_guard_is_built(
    store: str, fallbacks: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        guard_for(store, fallbacks=fallbacks)
    assert message in str(caught.value)


# -- cooldowns -------------------------------------------------------------------------------


def test_a_model_in_cooldown_is_skipped_then_probed(sim: SimServer, store: str) -> None:
    guard = guard_for(
        store,
        fallbacks={"gpt-4o": ["gpt-4.1"]},
        max_retries=2,
        cooldown_failures=3,
        cooldown="2s",
    )
    sim.fail_model("gpt-4o", status=503)
    with captured() as events, guard.session(budget_key="team") as session:
        call("chat", guard, sim, "gpt-4o", max_retries=0)  # three failures: a cooldown
        sim.clear()
        skipped = call("chat", guard, sim, "gpt-4o", max_retries=0)
        assert skipped.model == "gpt-4.1" and models_sent(sim) == ["gpt-4.1"]
        sim.heal_model("gpt-4o")
        time.sleep(2.2)  # the cooldown ends: the next call probes the model
        sim.clear()
        probed = call("chat", guard, sim, "gpt-4o", max_retries=0)
        assert probed.model == "gpt-4o" and models_sent(sim) == ["gpt-4o"]
        again = call("chat", guard, sim, "gpt-4o", max_retries=0)
        assert again.model == "gpt-4o"
    names = [e["event"] for e in events]
    assert names.count("cooldown") == 1 and "cooldown_over" in names
    assert [e["reason"] for e in events if e["event"] == "fallback"][1] == "cooldown"
    assert session.fallbacks == 2
    billed, spent = judge(sim, guard)
    assert billed == spent


async def test_an_async_client_shares_cooldowns_through_the_store(store_url: str) -> None:
    """Through the async driver (which hands the cooldown reads and writes to a worker thread
    on PostgreSQL), failures are counted and a cooling model skipped on both stores."""
    guard = guard_for(
        store_url, fallbacks={"gpt-4o": ["gpt-4.1"]}, max_retries=1, cooldown_failures=2
    )
    with SimServer() as sim:
        sim.fail_model("gpt-4o", status=503)
        client = guard.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0))
        async with guard.session(budget_key="team") as session:
            first = await client.chat.completions.create(
                model="gpt-4o", max_tokens=10, messages=HELLO
            )
            second = await client.chat.completions.create(
                model="gpt-4o", max_tokens=10, messages=HELLO
            )
        assert first.model == second.model == "gpt-4.1" and session.fallbacks == 2
        assert models_sent(sim) == ["gpt-4o", "gpt-4o", "gpt-4.1", "gpt-4.1"]
        billed, spent = judge(sim, guard)
    assert billed == spent > 0


FLEET = textwrap.dedent(
    """
    import os, sys, tempfile, openai
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard
    store, base_url = sys.argv[1], sys.argv[2]

    def run(store, calls):
        guard = Guard(GuardConfig.from_mapping({
            "store": {"url": store},
            "limits": {"max_retries": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.02},
            "routing": {"fallbacks": {"gpt-4o": ["gpt-4.1"]}, "cooldown": "1m"},
        }, env={}))
        client = guard.wrap(openai.OpenAI(base_url=base_url, api_key="sk-f", max_retries=0))
        answered = [client.chat.completions.create(
            model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ).model for _ in range(calls)]
        guard.close()
        return answered

    # The SDK, the tokenizer and the prices load once, before forking.
    run(f"sqlite:///{tempfile.mkdtemp()}/warm.db", 1)
    print("ready", flush=True)
    for line in sys.stdin:
        child = os.fork()
        if child == 0:
            print(",".join(run(store, int(line))), flush=True)
            os._exit(0)
        os.waitpid(child, 0)
    os._exit(0)  # nothing of its own to tidy up
    """
)


def test_processes_on_one_store_skip_a_model_another_put_in_cooldown(
    store_url: str, tmp_path: Path
) -> None:
    with SimServer() as sim:
        fleet = subprocess.Popen(
            [sys.executable, "-c", FLEET, store_url, sim.base_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "AGENTGUARD_HOME": str(tmp_path / "home")},
        )
        assert fleet.stdin is not None and fleet.stdout is not None
        try:
            assert fleet.stdout.readline().strip() == "ready"
            sim.fail_model("gpt-4o", status=503)
            sim.clear()
            fleet.stdin.write("1\n")
            fleet.stdin.flush()
            assert fleet.stdout.readline().strip() == "gpt-4.1"  # three failures, then its chain
            assert models_sent(sim) == ["gpt-4o"] * 3 + ["gpt-4.1"]
            sim.clear()
            fleet.stdin.write("2\n")  # a second process, which never saw gpt-4o fail
            fleet.stdin.flush()
            assert fleet.stdout.readline().strip() == "gpt-4.1,gpt-4.1"
            assert models_sent(sim) == ["gpt-4.1", "gpt-4.1"]  # it never called gpt-4o
        finally:
            fleet.stdin.close()
            fleet.wait(timeout=60)


# -- latency -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefer", ["latency", "cost"])
def test_the_preferred_model_of_a_tier_serves_it_and_no_other_tier_does(
    sim: SimServer, store: str, prefer: str
) -> None:
    guard = guard_for(
        store,
        tiers={"small": "gpt-4o-mini", "large": "gpt-4o"},
        equivalents={"small": ["gpt-4.1-nano"]},
        prefer=prefer,
    )
    # The cheaper model of the small tier is the slow one; the large tier is the fastest.
    sim.model_latency_s["gpt-4.1-nano"] = 1.0
    with guard.session(budget_key="team"):
        for _ in range(5):
            call("chat", guard, sim, "gpt-4o-mini", max_retries=0)
    sent = models_sent(sim)
    if prefer == "latency":
        # Each model is measured once, then the faster one keeps the tier.
        assert sent == ["gpt-4o-mini", "gpt-4.1-nano", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"]
        slow, fast = guard.model_latency("gpt-4.1-nano"), guard.model_latency("gpt-4o-mini")
        assert slow is not None and fast is not None
        assert slow.samples == 1 and fast.samples == 4
        assert slow.total_p95 >= 1.0 and slow.first_byte_p50 >= 1.0
    else:
        assert sent == ["gpt-4.1-nano"] * 5  # the cheapest by list price
    billed, spent = judge(sim, guard)
    assert billed == spent


def test_a_call_falling_back_to_the_callers_own_model_sends_that_model(
    sim: SimServer, store: str
) -> None:
    """The caller asked for gpt-4o-mini; the tier's cheaper equal model served first, failed,
    and the call went back to the model the caller's own request names."""
    guard = guard_for(
        store,
        tiers={"small": "gpt-4o-mini", "large": "gpt-4o"},
        equivalents={"small": ["gpt-4.1-nano"]},
    )
    sim.fail_model("gpt-4.1-nano", status=529)
    with guard.session(budget_key="team") as session:
        answer = call("chat", guard, sim, "gpt-4o-mini", max_retries=0)
    assert models_sent(sim) == ["gpt-4.1-nano", "gpt-4o-mini"]
    assert answer.model == "gpt-4o-mini" and session.fallbacks == 1
    billed, spent = judge(sim, guard)
    assert billed == spent > 0


def test_an_escalated_step_falls_back_along_the_chain_of_the_model_it_went_to(
    sim: SimServer, store: str
) -> None:
    from agentguard.sim import Reply

    sim.script.reply_fn = lambda body: Reply(content="" if body["model"] == "gpt-4o-mini" else None)
    guard = guard_for(
        store,
        tiers={"small": "gpt-4o-mini", "large": "gpt-4o"},
        classifier="learned",
        fallbacks={"small": ["gpt-4.1-mini"], "large": ["gpt-4.1"]},
    )
    sim.fail_model("gpt-4o", status=529)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0))
    with guard.session(budget_key="team") as session:
        answer = client.chat.completions.create(
            model="gpt-4o", max_tokens=30, messages=[{"role": "user", "content": EASY[0]}]
        )
    assert models_sent(sim) == ["gpt-4o-mini", "gpt-4o", "gpt-4.1"]
    assert answer.model == "gpt-4.1" and session.fallbacks == 1
    billed, spent = judge(sim, guard)
    assert billed == spent > 0


def test_the_sim_fails_a_model_a_number_of_times_then_answers(sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0)
    sim.fail_model("gpt-4o", status=529, n=2)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="gpt-4o", max_tokens=5, messages=HELLO)
        assert caught.value.status_code == 529
    other = client.chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=HELLO)
    assert other.model == "gpt-4o-mini"
    assert client.chat.completions.create(model="gpt-4o", max_tokens=5, messages=HELLO).model
    sim.fail_model("gpt-4o", status=404)
    sim.heal_model("gpt-4o")
    assert client.chat.completions.create(model="gpt-4o", max_tokens=5, messages=HELLO).model
    assert sim.billed_calls() == 3  # the errors were not billed


# -- outcomes ----------------------------------------------------------------------------------

TIERS = {"small": "gpt-4o-mini", "large": "gpt-4o"}
EASY = [
    "What's the capital of New Zealand?",
    'Classify the sentiment of this review as positive or negative: "Love it."',
    "Convert these durations to seconds: 1h 30m, 45m, 90s",
]
HARD = [
    "Prove that there are infinitely many primes p such that p + 2 is not prime, and derive a "
    "bound on their density. Show every step of the argument.",
    "Our job scheduler fires the same job twice every few days. We run two replicas behind a "
    "leader election. Find the race condition and design a fix across scheduler/lease.py, "
    "scheduler/worker.py and scheduler/store.py.",
]
TOOL_STEP = [
    {"role": "user", "content": "Read the config."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "x = 1"},
]


def record_traffic(
    sim: SimServer, store: str, log: Path, failing: str
) -> tuple[Guard, list[dict[str, Any]]]:
    """Routed steps written as JSON lines: the small model answers ``failing`` with nothing
    (escalated), fails once with 529 (a fallback), and one step is parked by a 429."""
    from agentguard import SessionParked, configure_logging
    from agentguard.sim import Reply

    def answer(body: dict[str, Any]) -> Reply:
        said = str(body["messages"][-1].get("content"))
        return Reply(content="") if body["model"] == TIERS["small"] and said == failing else Reply()

    sim.script.reply_fn = answer
    guard = guard_for(
        store,
        tiers=TIERS,
        classifier="learned",
        fallbacks={"small": ["gpt-4.1-mini"]},
    )
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0))

    def step(messages: list[dict[str, Any]]) -> None:
        with guard.session(budget_key="team"):
            client.chat.completions.create(model=TIERS["large"], messages=messages, max_tokens=20)

    with log.open("w", encoding="utf-8") as stream:
        configure_logging("info", json_lines=True, stream=stream)
        try:
            for text in [*EASY, *EASY, *HARD]:
                step([{"role": "user", "content": text}])
            step(TOOL_STEP)
            sim.fail_model(TIERS["small"], status=529, n=1)
            step([{"role": "user", "content": EASY[0]}])
            sim.rate_limit_next(retry_after=3600)
            with pytest.raises(SessionParked):
                step([{"role": "user", "content": EASY[0]}])
        finally:
            import logging

            logger = logging.getLogger("agentguard")
            for handler in list(logger.handlers):
                if getattr(handler, "_agentguard", False):
                    logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
    from typer.testing import CliRunner

    from agentguard.cli import app

    result = CliRunner().invoke(app, ["route", "report", "--events", str(log), "--json"])
    assert result.exit_code == 0, result.output
    import json

    return guard, json.loads(result.stdout)


def test_route_report_and_calibrate_read_recorded_outcomes(
    sim: SimServer, store: str, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from agentguard.cli import app

    probe = guard_for(store, tiers=TIERS, classifier="learned")
    scores = {
        t: probe.route(model=TIERS["large"], messages=[{"role": "user", "content": t}])
        for t in EASY
    }
    assert all(d.model == TIERS["small"] for d in scores.values())
    # The cheap step the small model fails is the hardest of them: the one calibration moves up.
    failing = max(EASY, key=lambda t: scores[t].score or 0.0)
    log = tmp_path / "events.jsonl"
    guard, rows = record_traffic(sim, store, log, failing)
    billed, spent = judge(sim, guard)
    assert billed == spent > 0
    by = {(row["tier"], row["kind"]): row for row in rows}
    small = by[("small", "first_step")]
    assert (small["steps"], small["escalated"], small["fell_back"], small["parked"]) == (8, 2, 1, 1)
    assert small["escalation_rate"] == 0.25 and small["failed"] == 0
    assert by[("large", "first_step")]["steps"] == 2
    assert by[("large", "first_step")]["escalated"] == 0
    assert by[("small", "tool_result")]["steps"] == 1

    runner = CliRunner()
    text = runner.invoke(app, ["route", "report", "--events", str(log)])
    assert text.exit_code == 0 and "escalated" in text.stdout and "2 (25%)" in text.stdout

    calibrated = runner.invoke(
        app,
        ["route", "calibrate", "--target-escalation-rate", "0", "--events", str(log), "--json"],
    )
    assert calibrated.exit_code == 0, calibrated.output
    result = json.loads(calibrated.stdout)
    assert result["escalation_rate"] == 0 and result["events"] == 11
    # Put in the config, the threshold sends the step the small model failed up a tier, and
    # keeps the others cheap.
    tuned = guard_for(store, tiers=TIERS, classifier="learned", threshold=result["threshold"])
    for text_ in EASY:
        chosen = tuned.route(model=TIERS["large"], messages=[{"role": "user", "content": text_}])
        assert chosen.model == (TIERS["large"] if text_ == failing else TIERS["small"])

    # The target can come from the config instead of the command line.
    config = tmp_path / "agentguard.toml"
    config.write_text("[routing]\ntarget_escalation_rate = 0.0\n")
    from_config = runner.invoke(
        app, ["route", "calibrate", "--events", str(log), "--config", str(config), "--json"]
    )
    assert from_config.exit_code == 0 and json.loads(from_config.stdout) == result


def test_a_tiers_equivalents_cannot_name_another_tiers_model(store: str) -> None:
    with pytest.raises(ConfigError, match=r"equivalents\.small: 'gpt-4o' is the model of another"):
        guard_for(
            store,
            tiers={"small": "gpt-4o-mini", "large": "gpt-4o"},
            equivalents={"small": ["gpt-4o"]},
        )
