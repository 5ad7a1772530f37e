"""Under the async clients the guard never blocks the event loop: nested model calls (an LLM
classifier asking the small tier) and store work run off it. A heartbeat on the loop measures
the longest stall while a guarded call runs against a sim that takes seconds to answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import openai
import pytest

from agentguard import Guard
from agentguard.sim import SimServer

LATENCY_S = 2.0
TIERS = {"small": "gpt-4o-mini", "large": "gpt-4o"}
MESSAGES = [{"role": "user", "content": "Plan the migration of the billing database."}]


async def longest_stall(work: Callable[[], object]) -> tuple[float, object]:
    """Run ``work()`` (a coroutine) with a 10 ms heartbeat; return the longest gap seen
    between beats, and the work's result."""
    longest = 0.0
    done = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal longest
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.05)  # the heartbeat is beating before the work starts
    try:
        result = await work()  # type: ignore[misc]
    finally:
        done.set()
        await beat
    return longest, result


@pytest.mark.parametrize("classifier", ["llm", "cascade"])
def test_a_nested_classifier_call_never_blocks_the_loop(
    make_guard: Callable[..., Guard], classifier: str
) -> None:
    with SimServer(latency_s=LATENCY_S) as sim:
        guard = make_guard(
            budgets=[{"key": "work", "limit_usd": 5, "window": "1h"}],
            routing={
                "tiers": TIERS,
                "classifier": classifier,
                "uncertain_band": 0.49,  # cascade: every step is uncertain, so it asks
                "pressure": [[0.5, "small"]],
            },
        )
        # The classifier asks the small tier through the application's sync client.
        guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-loop", max_retries=0))
        client = guard.wrap(
            openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-loop", max_retries=0)
        )

        async def call() -> object:
            async with guard.session("planner", budget_key="work"):
                return await client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, max_tokens=40
                )

        async def run() -> tuple[float, object]:
            # A first call loads what loads once (tokenizer, scorer): not what is measured.
            await call()
            return await longest_stall(call)

        stall, response = asyncio.run(run())
        paths = [request.path for request in sim.requests]
    assert response is not None
    # Each step is a classification and the step itself: model calls of LATENCY_S each.
    assert paths == ["/v1/chat/completions"] * 4
    # Run on the loop, the nested call would have stopped the heartbeat for LATENCY_S.
    assert stall < LATENCY_S / 2, f"the event loop stalled for {stall:.2f} s"
