"""Trimming the Responses API's input items and Anthropic's messages: valid requests out (no
call without its output, no reasoning item without its call, no tool_use without its
tool_result), within the room as each dialect counts it, the prompts, the task and the last
item kept, and the same cut re-applied byte for byte while a session grows."""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
from collections.abc import Callable, Mapping
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentguard.config import TrimmingConfig
from agentguard.dialects.anthropic_history import validate_anthropic_messages
from agentguard.dialects.anthropic_messages import ANTHROPIC_MESSAGES
from agentguard.dialects.openai_responses import OPENAI_RESPONSES
from agentguard.dialects.responses_history import validate_input_items
from agentguard.errors import ContextTooLarge
from agentguard.tokens import TokenCounter
from agentguard.trimming import Trimmer, TrimState

GPT = "gpt-4o"
CLAUDE = "claude-sonnet-4-6"
COUNTER = TokenCounter()  # shared: its cache keeps the property tests fast
RESPONSES_HISTORY = OPENAI_RESPONSES.trim_view
ANTHROPIC_HISTORY = ANTHROPIC_MESSAGES.trim_view

Item = dict[str, Any]
CUT_MARKER = re.compile(r"\[agentguard: (\d+) tokens cut from the middle of this message")
ELIDED_MARKER = re.compile(r"\[agentguard: (\d+) tokens of output from tool \S+ elided\]$")
MARKER_ONLY = (
    "[agentguard: 999999 tokens cut from the middle of this message to fit the context window]"
)
NOTE_START = "[agentguard:"


def _corpus() -> tuple[str, list[int]]:
    rng = random.Random(11)
    vocabulary = ["agent", "budget", "token", "window", "cache", "prefix", "parse", "retry"]
    pieces = [rng.choice(vocabulary) + ("\n" if n % 13 == 12 else " ") for n in range(40_000)]
    starts = [0]
    for piece in pieces:
        starts.append(starts[-1] + len(piece))
    return "".join(pieces), starts


CORPUS, STARTS = _corpus()


def text(count: int, seed: int) -> str:
    """``count`` words (at most 30,000), the same for the same seed."""
    start = seed % (len(STARTS) - 1 - count)
    return CORPUS[STARTS[start] : STARTS[start + count]].rstrip()


BUDGETS = st.integers(0, 1000).map(lambda k: int(2000 * 16 ** (k / 1000)))
"""Targets from 2k to 32k tokens, log-uniform: as many tight ones as loose ones."""


def output_words() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(10, 400), st.integers(400, 6000))


# -- the Responses API ------------------------------------------------------------------------

RESPONSES_TOOLS = [
    {
        "type": "function",
        "name": "read_file",
        "description": "Read a file of the repository.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]


def responses_step(
    step: int,
    outputs: list[str],
    order: list[int],
    *,
    reasoning: bool,
    said: str | None,
    custom: bool = False,
) -> list[Item]:
    """One response that called tools in parallel, then their outputs in ``order``."""
    items: list[Item] = []
    if reasoning:
        items.append(
            {
                "type": "reasoning",
                "id": f"rs_{step}",
                "summary": [{"type": "summary_text", "text": text(30, step)}],
            }
        )
    if said is not None:
        items.append(
            {
                "type": "message",
                "id": f"msg_{step}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": said, "annotations": []}],
            }
        )
    kind = "custom_tool_call" if custom else "function_call"
    for n in range(len(outputs)):
        call: Item = {"type": kind, "call_id": f"call_{step}_{n}", "name": "read_file"}
        if custom:
            call["input"] = f"src/{step}_{n}.py"
        else:
            call["arguments"] = json.dumps({"path": f"src/{step}_{n}.py"})
        items.append(call)
    for n in order:
        output: Any = outputs[n]
        if n % 3 == 2 and not custom:
            output = [{"type": "input_text", "text": outputs[n]}]
        items.append({"type": f"{kind}_output", "call_id": f"call_{step}_{n}", "output": output})
    return items


@st.composite
def responses_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Responses bodies: instructions, prompts, a task, then responses with reasoning and
    parallel function or custom tool calls with outputs of 10-6,000 words, replies and
    follow-ups; ending on an output or a user message."""
    seed = draw(st.integers(0, 10**6))
    body: dict[str, Any] = {"model": GPT, "max_output_tokens": 200}
    if draw(st.booleans()):
        body["instructions"] = text(draw(st.integers(1, 1500)), seed)
    items: list[Item] = []
    if draw(st.booleans()):
        items.append({"role": "developer", "content": text(draw(st.integers(1, 300)), seed + 1)})
    task = text(draw(st.integers(1, 400)), seed + 7)
    if draw(st.booleans()):
        items.append({"role": "user", "content": task})
    else:
        items.append(
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": task}]}
        )
    for step in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["tools", "tools", "tools", "custom", "reply", "user"]))
        if kind == "user":
            items.append({"role": "user", "content": text(draw(st.integers(1, 300)), step)})
        elif kind == "reply":
            items += responses_step(
                step,
                [],
                [],
                reasoning=draw(st.booleans()),
                said=text(draw(st.integers(1, 300)), seed + step),
            )
        else:
            sizes = draw(st.lists(output_words(), min_size=1, max_size=4))
            outputs = [text(size, seed + 31 * step + n) for n, size in enumerate(sizes)]
            said = draw(st.one_of(st.none(), st.integers(1, 80)))
            items += responses_step(
                step,
                outputs,
                list(draw(st.permutations(range(len(sizes))))),
                reasoning=draw(st.booleans()),
                said=None if said is None else text(said, step),
                custom=kind == "custom",
            )
    if RESPONSES_HISTORY.is_reply(items[-1]):
        items.append({"role": "user", "content": text(draw(st.integers(1, 200)), seed + 3)})
    if len(items) == 1 and draw(st.booleans()):
        body["input"] = task  # a plain string input
    else:
        body["input"] = items
    if draw(st.booleans()):
        body["tools"] = RESPONSES_TOOLS
    return body


def responses_tokens(body: Mapping[str, Any]) -> int:
    return OPENAI_RESPONSES.count_input(body, GPT, COUNTER)


def marker_only(view: Any, entry: Item) -> Item:
    """The entry cut down to its marker (what the last resort can bring it to), if it has text."""
    return entry if view.text(entry) is None else view.with_text(entry, MARKER_ONLY)


def last_unit(view: Any, entries: list[Item]) -> list[Item]:
    """The group the last entry belongs to, its other outputs cut down to their markers."""
    start = view.units(entries)[-1][0]
    unit = entries[start:]
    return [
        marker_only(view, entry) if view.is_tool_output(entry) and entry is not unit[-1] else entry
        for entry in unit
    ]


def must_keep(view: Any, entries: list[Item]) -> list[Item]:
    """The prompts, the task and the last group (a result cannot stand without its call)."""
    prompts = 0
    while view.is_prompt(entries[prompts]):
        prompts += 1
    first_user = next(i for i in range(prompts, len(entries)) if view.is_user(entries[i]))
    kept = entries[: first_user + 1]
    tail = last_unit(view, entries)
    start = len(entries) - len(tail)
    return kept + tail[max(0, first_user + 1 - start) :]


def kept_or_cut(view: Any, original: Item, entry: Item) -> bool:
    if entry == original:
        return True
    cut = view.text(entry)
    return cut is not None and CUT_MARKER.search(cut) is not None


def check_history(
    view: Any,
    original: list[Item],
    out: list[Item],
    sources: list[int | None],
) -> None:
    """The prompts, the task and the last entry kept (or cut in the middle, the last resort),
    every entry an original, an elision or a cut of one, in order, or the one note."""
    prompts = 0
    while view.is_prompt(original[prompts]):
        prompts += 1
    first_user = next(i for i in range(prompts, len(original)) if view.is_user(original[i]))
    for index in range(first_user + 1):
        assert sources[index] == index and kept_or_cut(view, original[index], out[index])
    assert sources[-1] == len(original) - 1 and kept_or_cut(view, original[-1], out[-1])
    notes = [entry for entry, source in zip(out, sources, strict=True) if source is None]
    assert len(notes) <= 1
    assert all(str(note["content"]).startswith(NOTE_START) for note in notes)
    placed = [source for source in sources if source is not None]
    assert placed == sorted(set(placed))
    for entry, source in zip(out, sources, strict=True):
        if source is None or entry is original[source] or entry == original[source]:
            continue
        changed = view.text(entry) if not view.is_tool_output(entry) else view.output_text(entry)
        assert CUT_MARKER.search(changed or "") or ELIDED_MARKER.search(changed or ""), entry


def fit_responses(
    body: dict[str, Any], trimmer: Trimmer, budget: int, state: TrimState | None = None
) -> tuple[dict[str, Any], Any]:
    entries = RESPONSES_HISTORY.read(body)
    assert entries is not None
    result = trimmer.fit(
        entries,
        model=GPT,
        max_tokens=budget,
        state=state,
        tools=body.get("tools"),
        view=RESPONSES_HISTORY,
    )
    sent = dict(body)
    RESPONSES_HISTORY.write(sent, result.messages, result.sources)
    return sent, result


def check_responses(body: dict[str, Any], sent: dict[str, Any], result: Any, budget: int) -> None:
    """What goes to the provider: valid, within the room as the dialect counts it."""
    items = sent["input"]
    validate_input_items([{"role": "user", "content": items}] if isinstance(items, str) else items)
    assert responses_tokens(sent) <= budget
    assert responses_tokens(sent) <= result.tokens_after
    entries = RESPONSES_HISTORY.read(body)
    assert entries is not None
    check_history(RESPONSES_HISTORY, entries, result.messages, result.sources)


TRIMMER_OPTIONS = st.fixed_dictionaries(
    {
        "keep_last_turns": st.integers(0, 6),
        "tool_output_max_tokens": st.sampled_from([100, 500, 2000]),
        "strategy": st.sampled_from(["elide", "window"]),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=responses_requests(), budget=BUDGETS, options=TRIMMER_OPTIONS)
def test_responses_input_always_fits_when_the_must_keep_part_does(
    body: dict[str, Any], budget: int, options: dict[str, Any]
) -> None:
    before = copy.deepcopy(body)
    entries = RESPONSES_HISTORY.read(body)
    assert entries is not None
    validate_input_items(entries)
    trimmer = Trimmer(TrimmingConfig(**options), COUNTER)
    try:
        sent, result = fit_responses(body, trimmer, budget)
    except ContextTooLarge as error:
        event("context too large")
        kept = {**body, "instructions": None, "input": must_keep(RESPONSES_HISTORY, entries)}
        assert responses_tokens(kept) > budget
        assert error.tokens > budget and body == before
        return
    assert body == before
    if responses_tokens(body) <= budget:
        event("fits as is")
    else:
        event("dropped" if None in result.sources else "elided or cut")
        assert result.trimmed
    check_responses(body, sent, result, budget)


def complete_lengths(items: list[Item], validate: Callable[[list[Item]], None]) -> list[int]:
    lengths = []
    for length in range(1, len(items) + 1):
        try:
            validate(items[:length])
        except ValueError:
            continue
        lengths.append(length)
    return lengths


def wire(items: list[Item]) -> list[str]:
    return [json.dumps(item, sort_keys=True) for item in items]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=responses_requests(),
    budget=BUDGETS,
    strategy=st.sampled_from(["elide", "window", "summarize"]),
)
def test_responses_trimmer_keeps_the_sent_prefix_as_a_session_grows(
    body: dict[str, Any], budget: int, strategy: Any
) -> None:
    if isinstance(body["input"], str):
        return
    trimmer = Trimmer(
        TrimmingConfig(strategy=strategy, keep_last_turns=2, tool_output_max_tokens=500),
        COUNTER,
        summarizer=lambda dropped: text(3 * len(dropped), len(dropped)),
    )
    items: list[Item] = body["input"]
    first_user = next(i for i, item in enumerate(items) if RESPONSES_HISTORY.is_user(item))
    state: TrimState | None = None
    previous: list[Item] | None = None
    for length in complete_lengths(items, validate_input_items):
        if length <= first_user:
            continue
        step = {**body, "input": items[:length]}
        try:
            sent, result = fit_responses(step, trimmer, budget, state)
        except ContextTooLarge:
            event("context too large")
            return
        check_responses(step, sent, result, budget)
        if previous is not None and not result.retrimmed:
            event("cut re-applied")
            assert wire(sent["input"][: len(previous)]) == wire(previous)
        state = TrimState.model_validate_json(result.state.model_dump_json())
        previous = sent["input"]


def test_a_reasoning_item_stays_with_the_call_it_precedes() -> None:
    items: list[Item] = [{"role": "user", "content": "Fix the parser."}]
    for step in range(12):
        items += responses_step(
            step, [text(1500, step), text(40, step + 1)], [1, 0], reasoning=True, said="Reading."
        )
    body = {"model": GPT, "instructions": "You are a careful agent.", "input": items}
    sent, result = fit_responses(body, Trimmer(TrimmingConfig(keep_last_turns=2), COUNTER), 6000)
    assert result.dropped_messages
    validate_input_items(sent["input"])
    kinds = [item.get("type") or item["role"] for item in sent["input"]]
    for index, kind in enumerate(kinds):
        if kind == "reasoning":
            assert kinds[index + 1] == "message" and kinds[index + 2] == "function_call"
    assert sent["instructions"] == body["instructions"]
    assert sent["input"][-1] is items[-1]


def test_a_string_input_too_long_is_cut_and_stays_a_string() -> None:
    body = {"model": GPT, "instructions": "Be brief.", "input": text(6000, 5)}
    sent, result = fit_responses(body, Trimmer(TrimmingConfig(), COUNTER), 2000)
    assert isinstance(sent["input"], str) and CUT_MARKER.search(sent["input"])
    assert sent["instructions"] == "Be brief." and result.truncated_messages == 1
    assert responses_tokens(sent) <= 2000


def test_a_continued_response_is_not_trimmed() -> None:
    body = {
        "model": GPT,
        "previous_response_id": "resp_1",
        "input": [{"role": "user", "content": "x"}],
    }
    assert RESPONSES_HISTORY.read(body) is None
    assert RESPONSES_HISTORY.read({"model": GPT, "conversation": "conv_1", "input": "x"}) is None


# -- Anthropic Messages -----------------------------------------------------------------------

ANTHROPIC_TOOLS = [
    {
        "name": "read_file",
        "description": "Read a file of the repository.",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]


def anthropic_step(
    step: int,
    outputs: list[Any],
    order: list[int],
    *,
    thinking: bool,
    said: str | None,
    then: str | None = None,
) -> list[Item]:
    """An assistant message calling tools in parallel, then a user message with the results
    in ``order`` (and, optionally, more text after them)."""
    blocks: list[Item] = []
    if thinking:
        blocks.append({"type": "thinking", "thinking": text(40, step), "signature": f"sig{step}"})
    if said is not None:
        blocks.append({"type": "text", "text": said})
    for n in range(len(outputs)):
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_{step}_{n}",
                "name": "read_file",
                "input": {"path": f"src/{step}_{n}.py"},
            }
        )
    results: list[Item] = []
    for n in order:
        content = outputs[n]
        if n % 3 == 2:
            content = [{"type": "text", "text": outputs[n]}]
        results.append(
            {"type": "tool_result", "tool_use_id": f"toolu_{step}_{n}", "content": content}
        )
    if then is not None:
        results.append({"type": "text", "text": then})
    return [{"role": "assistant", "content": blocks}, {"role": "user", "content": results}]


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Messages bodies: a system prompt (text or blocks, maybe a cache breakpoint), a task,
    then steps of parallel tool calls with thinking and results of 10-6,000 words, replies and
    follow-ups; ending on a user message."""
    seed = draw(st.integers(0, 10**6))
    body: dict[str, Any] = {"model": CLAUDE, "max_tokens": 200}
    system = draw(st.sampled_from(["none", "text", "blocks"]))
    if system == "text":
        body["system"] = text(draw(st.integers(1, 1500)), seed)
    elif system == "blocks":
        body["system"] = [
            {
                "type": "text",
                "text": text(draw(st.integers(1, 1500)), seed),
                "cache_control": {"type": "ephemeral"},
            }
        ]
    messages: list[Item] = [{"role": "user", "content": text(draw(st.integers(1, 400)), seed + 7)}]
    for step in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["tools", "tools", "tools", "reply"]))
        if kind == "reply" or messages[-1]["role"] == "assistant":
            if messages[-1]["role"] == "assistant":
                messages.append({"role": "user", "content": text(draw(st.integers(1, 300)), step)})
            messages.append(
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": text(draw(st.integers(1, 300)), step)}],
                }
            )
            continue
        sizes = draw(st.lists(output_words(), min_size=1, max_size=4))
        outputs = [text(size, seed + 31 * step + n) for n, size in enumerate(sizes)]
        said = draw(st.one_of(st.none(), st.integers(1, 80)))
        then = draw(st.one_of(st.none(), st.integers(1, 100)))
        messages += anthropic_step(
            step,
            outputs,
            list(draw(st.permutations(range(len(sizes))))),
            thinking=draw(st.booleans()),
            said=None if said is None else text(said, step),
            then=None if then is None else text(then, seed + step),
        )
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": text(draw(st.integers(1, 200)), seed + 3)})
    body["messages"] = messages
    if draw(st.booleans()):
        body["tools"] = ANTHROPIC_TOOLS
    return body


def anthropic_tokens(body: Mapping[str, Any]) -> int:
    return ANTHROPIC_MESSAGES.count_input(body, CLAUDE, COUNTER)


def fit_anthropic(
    body: dict[str, Any], trimmer: Trimmer, budget: int, state: TrimState | None = None
) -> tuple[dict[str, Any], Any]:
    entries = ANTHROPIC_HISTORY.read(body)
    assert entries is not None
    result = trimmer.fit(
        entries,
        model=CLAUDE,
        max_tokens=budget,
        state=state,
        tools=body.get("tools"),
        view=ANTHROPIC_HISTORY,
    )
    sent = dict(body)
    ANTHROPIC_HISTORY.write(sent, result.messages, result.sources)
    return sent, result


def check_anthropic(body: dict[str, Any], sent: dict[str, Any], result: Any, budget: int) -> None:
    messages = sent["messages"]
    validate_anthropic_messages(messages)
    assert messages[0]["role"] == "user"
    assert anthropic_tokens(sent) <= budget
    assert anthropic_tokens(sent) <= result.tokens_after
    entries = ANTHROPIC_HISTORY.read(body)
    assert entries is not None
    check_history(ANTHROPIC_HISTORY, entries, result.messages, result.sources)
    # Thinking blocks stay with their assistant message, which is sent as it was given.
    originals = [m for m in body["messages"] if m["role"] == "assistant"]
    for message in messages:
        if message["role"] == "assistant" and any(
            block.get("type") == "thinking" for block in message["content"]
        ):
            assert any(message is original for original in originals)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=anthropic_requests(), budget=BUDGETS, options=TRIMMER_OPTIONS)
def test_anthropic_messages_always_fit_when_the_must_keep_part_does(
    body: dict[str, Any], budget: int, options: dict[str, Any]
) -> None:
    before = copy.deepcopy(body)
    entries = ANTHROPIC_HISTORY.read(body)
    assert entries is not None
    validate_anthropic_messages(body["messages"])
    trimmer = Trimmer(TrimmingConfig(**options), COUNTER)
    try:
        sent, result = fit_anthropic(body, trimmer, budget)
    except ContextTooLarge as error:
        event("context too large")
        kept = must_keep(ANTHROPIC_HISTORY, entries)
        assert (
            sum(ANTHROPIC_HISTORY.counts(kept, CLAUDE, COUNTER))
            + ANTHROPIC_HISTORY.overhead(CLAUDE, COUNTER, body.get("tools"))
            > budget
        )
        assert error.tokens > budget and body == before
        return
    assert body == before
    if anthropic_tokens(body) <= budget:
        event("fits as is")
    else:
        event("dropped" if None in result.sources else "elided or cut")
    check_anthropic(body, sent, result, budget)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=anthropic_requests(),
    budget=BUDGETS,
    strategy=st.sampled_from(["elide", "window", "summarize"]),
)
def test_anthropic_trimmer_keeps_the_sent_prefix_as_a_session_grows(
    body: dict[str, Any], budget: int, strategy: Any
) -> None:
    trimmer = Trimmer(
        TrimmingConfig(strategy=strategy, keep_last_turns=2, tool_output_max_tokens=500),
        COUNTER,
        summarizer=lambda dropped: text(3 * len(dropped), len(dropped)),
    )
    messages: list[Item] = body["messages"]
    state: TrimState | None = None
    previous: list[Item] | None = None
    for length in complete_lengths(messages, validate_anthropic_messages):
        if messages[length - 1]["role"] != "user":
            continue
        step = {**body, "messages": messages[:length]}
        try:
            sent, result = fit_anthropic(step, trimmer, budget, state)
        except ContextTooLarge:
            event("context too large")
            return
        check_anthropic(step, sent, result, budget)
        if previous is not None and not result.retrimmed:
            event("cut re-applied")
            assert wire(sent["messages"][: len(previous)]) == wire(previous)
        state = TrimState.model_validate_json(result.state.model_dump_json())
        previous = sent["messages"]


def long_anthropic_session(steps: int) -> list[Item]:
    messages: list[Item] = [{"role": "user", "content": "Fix the failing test in the parser."}]
    for step in range(steps):
        messages += anthropic_step(
            step, [text(900, step), text(30, step + 1)], [0, 1], thinking=True, said="Reading."
        )
    return messages


def with_moving_breakpoint(messages: list[Item]) -> list[Item]:
    """The newest message marked for caching, as agents do on every call."""
    last = messages[-1]
    content = last["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    marked = [*blocks[:-1], {**blocks[-1], "cache_control": {"type": "ephemeral"}}]
    return [*messages[:-1], {**last, "content": marked}]


def without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_cache_control(item) for item in value]
    return value


def test_a_moving_breakpoint_does_not_force_a_new_cut() -> None:
    history = long_anthropic_session(30)
    trimmer = Trimmer(TrimmingConfig(keep_last_turns=3), COUNTER)
    budget = 12_000
    state = None
    previous: list[Item] | None = None
    retrims = reused = 0
    for length in range(3, len(history) + 1, 2):
        body = {
            "model": CLAUDE,
            "max_tokens": 100,
            "system": "Be careful.",
            "messages": with_moving_breakpoint(history[:length]),
        }
        sent, result = fit_anthropic(body, trimmer, budget, state)
        check_anthropic(body, sent, result, budget)
        marks = [
            b
            for m in sent["messages"]
            if isinstance(m["content"], list)
            for b in m["content"]
            if "cache_control" in b
        ]
        assert marks == [sent["messages"][-1]["content"][-1]]  # only the caller's breakpoint
        if previous is not None and not result.retrimmed:
            reused += 1
            assert without_cache_control(
                sent["messages"][: len(previous)]
            ) == without_cache_control(previous)
        retrims += result.retrimmed
        state, previous = result.state, sent["messages"]
    assert retrims >= 2 and reused >= 10


def test_an_elided_tool_result_keeps_its_fields() -> None:
    history = long_anthropic_session(12)
    result_block = history[2]["content"][0]
    history[2] = {
        "role": "user",
        "content": [
            {**result_block, "is_error": True, "cache_control": {"type": "ephemeral"}},
            *history[2]["content"][1:],
        ],
    }
    body = {"model": CLAUDE, "max_tokens": 100, "messages": history}
    trimmer = Trimmer(TrimmingConfig(keep_last_turns=12, tool_output_max_tokens=200), COUNTER)
    sent, result = fit_anthropic(body, trimmer, 14_000)
    assert not result.dropped_messages and result.elided_tool_outputs
    elided = sent["messages"][2]["content"][0]
    assert {k: v for k, v in elided.items() if k != "content"} == {
        k: v for k, v in history[2]["content"][0].items() if k != "content"
    }
    assert ELIDED_MARKER.search(elided["content"])
    assert elided["content"].startswith(result_block["content"][:100])
    assert sent["messages"][2]["content"][1] is history[2]["content"][1]  # its sibling, as given
    validate_anthropic_messages(sent["messages"])


def test_a_dropped_breakpoint_moves_to_the_note() -> None:
    history = long_anthropic_session(20)
    history[4] = with_moving_breakpoint(history[:5])[4]  # an old breakpoint, later dropped
    body = {"model": CLAUDE, "max_tokens": 100, "messages": history}
    sent, result = fit_anthropic(body, Trimmer(TrimmingConfig(keep_last_turns=2), COUNTER), 8000)
    assert result.dropped_messages
    note = sent["messages"][1]
    assert note["content"][0]["text"].startswith(NOTE_START)
    assert note["content"][0]["cache_control"] == {"type": "ephemeral"}
    marks = [
        b
        for m in sent["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if isinstance(b, dict) and "cache_control" in b
    ]
    assert len(marks) == 1


# -- through the guard, over the sim ------------------------------------------------------------


def test_a_guarded_responses_call_is_trimmed_and_accepted(
    sim: Any, make_guard: Callable[..., Any]
) -> None:
    room = 6000
    guard = make_guard(trimming={"max_context_tokens": room + 100})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-resp", max_retries=0))
    instructions = "You are a careful coding agent. " + text(200, 1)
    items: list[Item] = [{"role": "user", "content": "Fix the failing test in the parser."}]
    for step in range(10):
        items += responses_step(
            step, [text(1200, step), text(50, step + 1)], [1, 0], reasoning=True, said=None
        )
    sent_inputs = []
    with guard.session():
        for grow in range(3):
            history = items + [
                item
                for n in range(grow)
                for item in responses_step(20 + n, [text(300, n)], [0], reasoning=False, said=None)
            ]
            response = client.responses.create(
                model=GPT,
                instructions=instructions,
                input=history,
                tools=RESPONSES_TOOLS,
                max_output_tokens=100,
            )
            assert response.usage.input_tokens <= room  # as the provider counted it
            (sent,) = [r.body for r in sim.requests[-1:] if r.path == "/v1/responses"]
            sent_inputs.append(sent["input"])
            validate_input_items(sent["input"])
            assert responses_tokens(sent) <= room
            assert sent["instructions"] == instructions
            assert sent["input"][0] == history[0] and sent["input"][-1] == history[-1]
            assert len(sent["input"]) < len(history)
        # The same cut on the calls after the first: the provider's cache sees one prefix.
        for earlier, later in itertools.pairwise(sent_inputs):
            assert later[: len(earlier)] == earlier

        # A continued response carries context the guard cannot cut: sent as given.
        sim.clear()
        client.responses.create(
            model=GPT,
            previous_response_id=response.id,
            input=[{"role": "user", "content": text(200, 9)}],
            max_output_tokens=100,
        )
        (continued,) = [r.body for r in sim.requests if r.path == "/v1/responses"]
        assert continued["input"] == [{"role": "user", "content": text(200, 9)}]


def test_a_guarded_anthropic_call_is_trimmed_and_accepted(
    sim: Any, make_guard: Callable[..., Any]
) -> None:
    room = 8000
    guard = make_guard(trimming={"max_context_tokens": room + 200})
    client = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test-0001"))
    system = [
        {"type": "text", "text": "Rules. " + text(1200, 3), "cache_control": {"type": "ephemeral"}}
    ]
    history = long_anthropic_session(16)
    sent_messages = []
    with guard.session():
        for length in (len(history) - 4, len(history) - 2, len(history)):
            messages = with_moving_breakpoint(history[:length])
            response = client.messages.create(
                model=CLAUDE,
                max_tokens=200,
                system=system,
                messages=messages,
                tools=ANTHROPIC_TOOLS,
            )
            assert (
                response.usage.input_tokens
                + response.usage.cache_read_input_tokens
                + (response.usage.cache_creation_input_tokens)
                <= room
            )
            sent = [r.body for r in sim.requests if r.path == "/v1/messages"][-1]
            validate_anthropic_messages(sent["messages"])
            assert anthropic_tokens(sent) <= room
            assert sent["system"] == system
            assert sent["messages"][0] == messages[0] and sent["messages"][-1] == messages[-1]
            assert len(sent["messages"]) < len(messages)
            for message in sent["messages"]:
                if message["role"] == "assistant":
                    assert message in messages  # thinking and tool_use blocks as given
            sent_messages.append(sent["messages"])
    for earlier, later in itertools.pairwise(sent_messages[1:]):
        assert without_cache_control(later[: len(earlier)]) == without_cache_control(earlier)


@pytest.mark.parametrize("orphan", ["result", "call"])
def test_the_sim_refuses_what_the_providers_refuse(sim: Any, orphan: str) -> None:
    """The end-to-end tests above lean on it: the sim answers an orphaned call or result with
    the provider's 400."""
    step = anthropic_step(0, ["out"], [0], thinking=False, said=None)
    messages = [{"role": "user", "content": "task"}, *step]
    messages = [messages[0], messages[2]] if orphan == "result" else messages[:2]
    client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test-0001", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="tool_"):
        client.messages.create(model=CLAUDE, max_tokens=50, messages=messages)
    items = responses_step(0, ["out"], [0], reasoning=True, said=None)
    items = [items[0], items[2]] if orphan == "result" else items[:2]
    responses = openai.OpenAI(base_url=sim.base_url, api_key="sk-resp", max_retries=0).responses
    with pytest.raises(openai.BadRequestError, match=r"call|reasoning"):
        responses.create(model=GPT, input=[{"role": "user", "content": "task"}, *items])
