"""Trimming: valid requests out, within budget, stable prefixes across a session's calls."""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentguard.config import TrimmingConfig
from agentguard.errors import ContextTooLarge
from agentguard.tokens import TokenCounter
from agentguard.trimming import (
    NOTE_ROLE,
    Trimmer,
    TrimState,
    trim_messages,
    validate_messages,
)

MODEL = "gpt-4o"
COUNTER = TokenCounter()  # shared: its cache keeps the property tests fast

Message = dict[str, Any]
WORDS = [
    "agent",
    "budget",
    "token",
    "window",
    "cache",
    "prefix",
    "trim",
    "elide",
    "tool",
    "output",
    "file",
    "read",
    "parse",
    "config",
    "session",
    "retry",
    "limit",
    "model",
    "route",
    "price",
    "ledger",
    "reserve",
    "settle",
    "park",
    "resume",
    "query",
    "result",
]


def words(count: int, seed: int) -> str:
    return " ".join(WORDS[(seed + i * 7 + i // 5) % len(WORDS)] for i in range(count))


def count(messages: list[Message]) -> int:
    return COUNTER.count_messages(messages, MODEL)


def tool_step(step: int, outputs: list[str], name: str = "read_file") -> list[Message]:
    calls = [
        {
            "id": f"call_{step}_{n}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"path": f"src/{step}_{n}.py"})},
        }
        for n in range(len(outputs))
    ]
    results = [
        {"role": "tool", "tool_call_id": f"call_{step}_{n}", "content": output}
        for n, output in enumerate(outputs)
    ]
    return [{"role": "assistant", "content": None, "tool_calls": calls}, *results]


def agent_history(steps: int, output_words: int = 600) -> list[Message]:
    history: list[Message] = [
        {"role": "system", "content": "You are a careful coding agent. " + words(200, 1)},
        {"role": "user", "content": "Fix the failing test in the parser."},
    ]
    for step in range(steps):
        history += tool_step(step, [words(output_words, step)])
    return history


def is_note(message: Message) -> bool:
    """The note that stands in for dropped messages (a summary starts the same way)."""
    first_line = str(message.get("content")).split("\n", 1)[0]
    return (
        message.get("role") == NOTE_ROLE
        and first_line.startswith("[agentguard:")
        and "earlier message" in first_line
    )


# -- validate_messages ----------------------------------------------------------------------------


def test_validate_accepts_a_valid_agent_history() -> None:
    validate_messages(agent_history(3))
    validate_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "empty"),
        ("hello", "list"),
        ([{"role": "robot", "content": "x"}], "role"),
        ([{"role": "user"}], "no content"),
        ([{"role": "user", "content": 3}], "string or a list"),
        ([{"role": "tool", "tool_call_id": "a", "content": "x"}], "does not follow"),
        ([{"role": "user", "content": "x"}, {"role": "tool", "content": "x"}], "tool_call_id"),
        ([{"role": "assistant", "content": None}], "no content"),
        ([{"role": "assistant", "content": None, "tool_calls": []}], "non-empty"),
        (tool_step(1, ["a", "b"])[:2], "do not follow"),
        (
            [*tool_step(1, ["a"]), {"role": "tool", "tool_call_id": "call_1_0", "content": "x"}],
            "answered already",
        ),
        (
            [*tool_step(1, ["a"]), {"role": "tool", "tool_call_id": "other", "content": "x"}],
            "did not make",
        ),
        (
            [
                *tool_step(1, ["a", "b"])[:2],
                {"role": "user", "content": "x"},
                tool_step(1, ["a", "b"])[2],
            ],
            "do not follow",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "f"}},
                        {"id": "a", "type": "function", "function": {"name": "f"}},
                    ],
                }
            ],
            "repeats",
        ),
    ],
)
def test_validate_names_the_violation(messages: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        validate_messages(messages)


# -- trim_messages ------------------------------------------------------------------------------


def test_history_that_fits_is_returned_unchanged() -> None:
    history = agent_history(3)
    out = trim_messages(history, max_tokens=count(history), model=MODEL, counter=COUNTER)
    assert out == history
    assert all(a is b for a, b in zip(out, history, strict=True))
    assert out is not history


def test_old_tool_outputs_are_elided_first_oldest_first() -> None:
    history = agent_history(12)
    before = copy.deepcopy(history)
    budget = count(history) - 1500
    out = trim_messages(
        history, max_tokens=budget, model=MODEL, tool_output_max_tokens=300, counter=COUNTER
    )
    assert history == before
    validate_messages(out)
    assert count(out) <= budget
    assert len(out) == len(history)  # eliding was enough: nothing dropped
    elided = [i for i, m in enumerate(out) if "tokens of output from tool" in str(m["content"])]
    assert elided == [3, 5, 7][: len(elided)] and elided  # the oldest, and only as many as needed
    content = out[3]["content"]
    assert content.endswith(" tokens of output from tool read_file elided]")
    assert content.startswith(history[3]["content"][:40])  # the head of the output is kept
    tokens_cut = int(content.rsplit("[agentguard: ", 1)[1].split()[0])
    assert tokens_cut > 300
    assert out[3]["tool_call_id"] == history[3]["tool_call_id"]


def test_turns_are_dropped_when_eliding_is_not_enough() -> None:
    history = agent_history(20)
    out = trim_messages(history, max_tokens=6000, model=MODEL, keep_last_turns=3, counter=COUNTER)
    validate_messages(out)
    assert count(out) <= 6000
    assert out[:2] == history[:2]
    assert out[-6:] == history[-6:]  # the last 3 turns, whole
    notes = [m for m in out if is_note(m)]
    assert len(notes) == 1 and out[2] is notes[0]
    dropped = len(history) - (len(out) - 1)
    assert notes[0]["content"] == (
        f"[agentguard: {dropped} earlier messages of this conversation were dropped to fit the "
        "context window]"
    )


def test_window_strategy_only_drops() -> None:
    history = agent_history(20)
    out = trim_messages(
        history,
        max_tokens=8000,
        model=MODEL,
        keep_last_turns=2,
        strategy="window",
        tool_output_max_tokens=100,
        counter=COUNTER,
    )
    validate_messages(out)
    assert not any("tokens of output" in str(m["content"]) for m in out)
    assert all(m is o for m, o in zip(out[3:], history[-len(out) + 3 :], strict=True))


def test_parallel_tool_calls_stay_with_their_results() -> None:
    history = agent_history(0)
    for step in range(10):
        history += tool_step(step, [words(300, step), words(200, step + 1), words(100, step)])
    out = trim_messages(history, max_tokens=5000, model=MODEL, keep_last_turns=2, counter=COUNTER)
    validate_messages(out)
    assert count(out) <= 5000


def test_chat_turns_keep_the_last_user_message() -> None:
    history: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First task: " + words(50, 0)},
    ]
    for turn in range(15):
        history.append({"role": "assistant", "content": words(300, turn)})
        if turn == 4:
            history.append({"role": "user", "content": "Actually, also handle the edge case."})
    history += tool_step(99, [words(50, 3)])
    last_user = history[7]
    assert last_user["content"].startswith("Actually")
    out = trim_messages(history, max_tokens=2500, model=MODEL, keep_last_turns=2, counter=COUNTER)
    validate_messages(out)
    assert count(out) <= 2500
    assert any(m is last_user for m in out)
    assert out[0] is history[0] and out[1] is history[1]


def test_the_newest_turn_is_kept_even_with_keep_last_turns_zero() -> None:
    history = agent_history(10)
    out = trim_messages(history, max_tokens=2500, model=MODEL, keep_last_turns=0, counter=COUNTER)
    validate_messages(out)
    assert out[-2:] == history[-2:]


def test_long_outputs_in_kept_turns_are_elided_only_as_a_last_resort() -> None:
    # Six kept turns of big file reads do not fit; failing the call would help nobody.
    history = agent_history(8, output_words=2500)
    budget = 12_000
    out = trim_messages(history, max_tokens=budget, model=MODEL, counter=COUNTER)
    validate_messages(out)
    assert count(out) <= budget
    assert out[-1] is history[-1]  # the newest turn's output is never elided
    elided_kept = [m for m in out[-12:] if "tokens of output" in str(m.get("content"))]
    assert elided_kept


def test_outputs_of_kept_turns_are_elided_oldest_first_the_newest_turns_last() -> None:
    history = agent_history(3, output_words=2500)
    history += tool_step(3, [words(2500, 5), words(2500, 6), words(2500, 7)])
    kept_outputs = [i for i, m in enumerate(history) if m["role"] == "tool"]
    # All six turns are kept ones: making room means eliding their outputs, here more than
    # the three older turns hold, so the first of the newest turn's outputs goes too.
    budget = count(history) - 3 * 2400 - 1000
    out = trim_messages(history, max_tokens=budget, model=MODEL, counter=COUNTER)
    validate_messages(out)
    assert count(out) <= budget
    assert len(out) == len(history) and not any(is_note(m) for m in out)
    elided = [i for i in kept_outputs if out[i] is not history[i]]
    assert elided == kept_outputs[:4]
    assert out[-1] is history[-1]


def test_fewer_turns_are_kept_before_any_message_is_cut() -> None:
    history: list[Message] = [
        {"role": "system", "content": words(300, 1)},
        {"role": "user", "content": "Write the release notes."},
    ]
    for turn in range(8):
        history.append({"role": "user", "content": words(100, turn)})
        history.append({"role": "assistant", "content": words(400, turn)})
    history.append({"role": "user", "content": "Now shorten them."})
    budget = 2000
    out = trim_messages(history, max_tokens=budget, model=MODEL, keep_last_turns=6, counter=COUNTER)
    validate_messages(out)
    assert count(out) <= budget
    assert out[:2] == history[:2] and out[-1] is history[-1]
    assert is_note(out[2])
    assert not any(CUT_MARKER.search(str(m["content"])) for m in out)
    assert len(out) - 3 < 2 * 6  # fewer than the six turns asked for


def test_the_largest_message_is_cut_in_the_middle_as_a_last_resort() -> None:
    history = [
        {"role": "system", "content": words(3000, 0)},
        {"role": "user", "content": "Summarise the policy above."},
    ]
    out = trim_messages(history, max_tokens=1000, model=MODEL, counter=COUNTER)
    validate_messages(out)
    assert 1000 - 20 <= count(out) <= 1000  # cut only as far as needed
    assert out[1] is history[1]
    assert is_cut_of(history[0], out[0])
    marker = CUT_MARKER.search(out[0]["content"])
    assert marker is not None
    assert abs(int(marker.group(1)) - (count(history) - count(out))) < 40


def test_the_last_message_is_cut_only_when_nothing_else_makes_room() -> None:
    def history(last_output_words: int) -> list[Message]:
        return [
            {"role": "system", "content": words(1500, 1)},
            {"role": "user", "content": "Fix the parser."},
            *tool_step(0, [words(last_output_words, 2)]),
        ]

    # Cutting the system prompt makes room: the step's input stays whole.
    fits_without = history(1500)
    out = trim_messages(fits_without, max_tokens=2000, model=MODEL, counter=COUNTER)
    assert out[-1] is fits_without[-1] and is_cut_of(fits_without[0], out[0])
    check_trimmed(fits_without, out, 2000)
    # Nothing else can: the output is cut, and the system prompt is left whole.
    too_long = history(6000)
    out = trim_messages(too_long, max_tokens=2000, model=MODEL, counter=COUNTER)
    assert out[0] is too_long[0] and is_cut_of(too_long[-1], out[-1])
    check_trimmed(too_long, out, 2000)


def test_a_cut_last_message_is_reapplied_byte_for_byte() -> None:
    history = [
        {"role": "system", "content": words(500, 1)},
        {"role": "user", "content": "Fix the parser."},
        *tool_step(0, [words(9000, 2)]),
    ]
    trimmer = Trimmer(TrimmingConfig(), COUNTER)
    first = trimmer.fit(history, model=MODEL, max_tokens=4000)
    assert first.truncated_messages == 1 and first.trimmed
    history += [
        {"role": "assistant", "content": "The file is long; reading the parser part."},
        {"role": "user", "content": "Go on."},
    ]
    second = trimmer.fit(history, model=MODEL, max_tokens=4000, state=first.state)
    assert not second.retrimmed and second.prefix_reused
    assert [json.dumps(m) for m in second.messages[: len(first.messages)]] == [
        json.dumps(m) for m in first.messages
    ]


def test_context_too_large_names_the_sizes() -> None:
    history = [
        {"role": "system", "content": words(3000, 0)},
        {"role": "user", "content": words(20, 1)},
        *agent_history(3)[2:],
        {"role": "user", "content": words(400, 2)},
    ]
    # Even cut down to a marker each, the prompt, the task and the last message take more
    # than 60 tokens.
    with pytest.raises(ContextTooLarge) as caught:
        trim_messages(history, max_tokens=60, model=MODEL, counter=COUNTER)
    error = caught.value
    assert error.max_tokens == 60
    assert error.tokens > 60
    message = str(error)
    assert "60 allowed" in message and str(error.tokens) in message
    assert f"take {count(history)} tokens" in message
    assert f"the task take {count(history[:2]) - 3} tokens" in message
    assert f"the last message {count(history[-1:]) - 3}" in message


def test_tools_count_against_the_budget() -> None:
    history = agent_history(10)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": words(400, 1),
                "parameters": {"type": "object"},
            },
        }
    ]
    budget = count(history) - 200
    options: dict[str, Any] = {
        "max_tokens": budget,
        "model": MODEL,
        "counter": COUNTER,
        "tool_output_max_tokens": 100,
    }
    without = trim_messages(history, **options)
    with_tools = trim_messages(history, tools=tools, **options)
    assert count(with_tools) + COUNTER.count_tools(tools, MODEL) <= budget
    assert count(with_tools) < count(without)


def test_empty_input() -> None:
    assert trim_messages([], max_tokens=10, model=MODEL) == []


# -- property-based -------------------------------------------------------------------------------

CUT_MARKER = re.compile(
    r"\[agentguard: (\d+) tokens cut from the middle of this message to fit the context window\]"
)
ELIDED_MARKER = re.compile(r"\[agentguard: (\d+) tokens of output from tool \S+ elided\]$")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the repository.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]


def _corpus() -> tuple[str, list[int]]:
    """A long text of words and line breaks, with each word's start (texts are slices of it)."""
    rng = random.Random(7)
    pieces = []
    for n in range(40_000):
        pieces.append(rng.choice(WORDS) + ("\n" if n % 13 == 12 else " "))
    text = "".join(pieces)
    starts = [0]
    for piece in pieces:
        starts.append(starts[-1] + len(piece))
    return text, starts


CORPUS, CORPUS_STARTS = _corpus()


def text(count: int, seed: int) -> str:
    """``count`` words (at most 30,000), the same for the same seed, fast for long texts."""
    start = seed % (len(CORPUS_STARTS) - 1 - count)
    return CORPUS[CORPUS_STARTS[start] : CORPUS_STARTS[start + count]].rstrip()


def tool_unit(
    step: int, outputs: list[str], order: list[int], content: str | None
) -> list[Message]:
    """An assistant message calling tools in parallel, then their results in ``order``."""
    call, *results = tool_step(step, outputs)
    call["content"] = content
    return [call, *(results[i] for i in order)]


@st.composite
def agent_conversations(draw: st.DrawFn) -> list[Message]:
    """Agent histories: prompts, a task, then steps of parallel tool calls with outputs of
    10-6,000 words, replies and follow-ups; ending, as a request does, on a result or a user."""
    seed = draw(st.integers(0, 10**6))
    messages: list[Message] = []
    for n in range(draw(st.integers(0, 2))):
        role = "system" if n == 0 else draw(st.sampled_from(["system", "developer"]))
        messages.append({"role": role, "content": text(draw(st.integers(1, 1500)), seed + n)})
    messages.append({"role": "user", "content": text(draw(st.integers(1, 400)), seed + 7)})
    for step in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["tools", "tools", "tools", "reply", "user"]))
        if kind == "user":
            messages.append({"role": "user", "content": text(draw(st.integers(1, 300)), step)})
        elif kind == "reply":
            messages.append(
                {"role": "assistant", "content": text(draw(st.integers(1, 300)), seed + step)}
            )
        else:
            sizes = draw(
                st.lists(
                    st.one_of(st.integers(10, 400), st.integers(400, 6000)), min_size=1, max_size=4
                )
            )
            outputs = [text(size, seed + 31 * step + n) for n, size in enumerate(sizes)]
            order = draw(st.permutations(range(len(sizes))))
            words_said = draw(st.one_of(st.none(), st.integers(1, 80)))
            content = None if words_said is None else text(words_said, step)
            messages += tool_unit(step, outputs, order, content)
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": text(draw(st.integers(1, 200)), seed + 3)})
    return messages


def random_agent_conversation(rng: random.Random) -> list[Message]:
    """The same kind of history as :func:`agent_conversations`, from a seeded generator."""
    messages: list[Message] = [
        {"role": "system", "content": text(rng.randint(50, 1500), rng.randrange(10**6))},
        {"role": "user", "content": text(rng.randint(10, 300), rng.randrange(10**6))},
    ]
    for step in range(rng.randint(1, 25)):
        roll = rng.random()
        if roll < 0.15:
            messages.append({"role": "user", "content": text(rng.randint(5, 200), step)})
        if roll < 0.3:
            messages.append({"role": "assistant", "content": text(rng.randint(5, 300), step)})
            continue
        # Output sizes log-uniform over 10-6,000 words: mostly short, some very long.
        outputs = [
            text(int(10 * 600 ** rng.random()), rng.randrange(10**6))
            for _ in range(rng.randint(1, 4))
        ]
        order = rng.sample(range(len(outputs)), len(outputs))
        content = text(rng.randint(1, 80), step) if rng.random() < 0.5 else None
        messages += tool_unit(step, outputs, order, content)
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": text(rng.randint(1, 200), 5)})
    return messages


def must_keep(messages: list[Message]) -> list[Message]:
    """What trimming may never drop: the prompts, the task and the last message (with, for a
    tool result, the assistant message that called it: a result cannot stand alone)."""
    prompts = 0
    while messages[prompts]["role"] in ("system", "developer"):
        prompts += 1
    kept = messages[: prompts + 1]
    last = messages[-1]
    if last["role"] == "tool":
        kept.append(next(m for m in reversed(messages) if m["role"] == "assistant"))
    if last is not kept[-1] and last is not messages[prompts]:
        kept.append(last)
    return kept


def must_keep_tokens(messages: list[Message], tools: list[Message] | None = None) -> int:
    return count(must_keep(messages)) + COUNTER.count_tools(tools, MODEL)


def is_cut_of(original: Message, message: Message) -> bool:
    """``message`` is ``original`` with the middle of its text cut out (and marked)."""
    if {k: v for k, v in message.items() if k != "content"} != {
        k: v for k, v in original.items() if k != "content"
    }:
        return False
    content = str(message["content"])
    marker = CUT_MARKER.search(content)
    if marker is None:
        return False
    head = content[: marker.start()].removesuffix("\n")
    tail = content[marker.end() :].removeprefix("\n")
    text = str(original["content"])
    return (
        text.startswith(head)
        and text.endswith(tail)
        and len(head) + len(tail) < len(text)
        and int(marker.group(1)) > 0
    )


def is_elision_of(original: Message, message: Message) -> bool:
    content = str(message["content"])
    marker = ELIDED_MARKER.search(content)
    return (
        message.get("tool_call_id") == original.get("tool_call_id") is not None
        and marker is not None
        and str(original["content"]).startswith(content[: marker.start()].removesuffix("\n"))
    )


def kept_or_cut(original: Message, message: Message) -> bool:
    return message is original or is_cut_of(original, message)


def smallest_possible(message: Message) -> int:
    """A bound on what cutting could bring one trimmed message down to."""
    if is_note(message) or not isinstance(message.get("content"), str):
        return count([message])
    return min(
        count([message]),
        count([{**message, "content": CUT_MARKER.pattern.replace(r"(\d+)", "999999")}]),
    )


def check_trimmed(
    original: list[Message], out: list[Message], budget: int, tools: list[Message] | None = None
) -> None:
    """Valid, within budget, the must-keep part kept (cut only as the last resort), and every
    message an original, an elision or a cut of one (in order), or the one note."""
    validate_messages(out)
    assert count(out) + COUNTER.count_tools(tools, MODEL) <= budget
    prompts = 0
    while original[prompts]["role"] in ("system", "developer"):
        prompts += 1
    for position in range(prompts + 1):
        assert kept_or_cut(original[position], out[position])
    assert kept_or_cut(original[-1], out[-1])
    if out[-1] is not original[-1]:
        # The last message was cut: even every other message cut down to its marker, with the
        # last one whole, would not have fitted.
        others = sum(smallest_possible(m) for m in out[:-1])
        assert others + count([original[-1]]) + COUNTER.count_tools(tools, MODEL) > budget
    position = 0
    notes = 0
    for message in out:
        if is_note(message):
            notes += 1
            continue
        while not (
            message is original[position]
            or is_cut_of(original[position], message)
            or is_elision_of(original[position], message)
        ):
            position += 1  # an IndexError here: a message that is not from the original
        position += 1
    assert notes <= 1


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=agent_conversations(),
    budget=st.integers(2000, 32_000),
    keep_last_turns=st.integers(0, 6),
    tool_output_max_tokens=st.sampled_from([100, 500, 2000]),
    strategy=st.sampled_from(["elide", "window"]),
    tools=st.sampled_from([None, TOOLS]),
)
def test_trim_messages_always_fits_when_the_must_keep_part_does(
    messages: list[Message],
    budget: int,
    keep_last_turns: int,
    tool_output_max_tokens: int,
    strategy: Any,
    tools: list[Message] | None,
) -> None:
    validate_messages(messages)
    before = copy.deepcopy(messages)
    total = count(messages) + COUNTER.count_tools(tools, MODEL)
    try:
        out = trim_messages(
            messages,
            max_tokens=budget,
            model=MODEL,
            keep_last_turns=keep_last_turns,
            tool_output_max_tokens=tool_output_max_tokens,
            strategy=strategy,
            counter=COUNTER,
            tools=tools,
        )
    except ContextTooLarge as error:
        event("context too large")
        assert must_keep_tokens(messages, tools) > budget
        assert (error.max_tokens, messages) == (budget, before)
        assert error.tokens > budget
        return
    assert messages == before
    if total <= budget:
        event("fits as is")
        assert out == messages
    elif any(CUT_MARKER.search(str(m.get("content"))) for m in out):
        event("cut in the middle")
    else:
        event("dropped turns" if any(is_note(m) for m in out) else "elided only")
    check_trimmed(messages, out, budget, tools)


def complete_prefixes(messages: list[Message]) -> list[int]:
    """Lengths at which the history is a valid request (no tool call awaits its result)."""
    lengths = []
    for length in range(1, len(messages) + 1):
        try:
            validate_messages(messages[:length])
        except ValueError:
            continue
        lengths.append(length)
    return lengths


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=agent_conversations(),
    budget=st.integers(2000, 32_000),
    strategy=st.sampled_from(["elide", "window", "summarize"]),
)
def test_trimmer_fits_and_keeps_the_prefix_as_a_session_grows(
    messages: list[Message], budget: int, strategy: Any
) -> None:
    trimmer = Trimmer(
        TrimmingConfig(strategy=strategy, keep_last_turns=2, tool_output_max_tokens=500),
        COUNTER,
        summarizer=lambda dropped: words(3 * len(dropped), len(dropped)),
    )
    state: TrimState | None = None
    previous: list[Message] | None = None
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    for length in complete_prefixes(messages):
        if length <= first_user:
            continue  # a session starts with its task
        history = messages[:length]
        before = copy.deepcopy(history)
        try:
            result = trimmer.fit(history, model=MODEL, max_tokens=budget, state=state)
        except ContextTooLarge as error:
            event("context too large")
            assert must_keep_tokens(history) > budget
            assert error.tokens > budget
            return
        event("re-trimmed" if result.retrimmed else "cut re-applied")
        assert history == before
        check_trimmed(history, result.messages, budget)
        assert result.tokens_after == count(result.messages)
        if previous is not None and not result.retrimmed:
            # Byte for byte: what the provider cached for the previous call is reused.
            assert result.prefix_reused
            assert [json.dumps(m) for m in result.messages[: len(previous)]] == [
                json.dumps(m) for m in previous
            ]
        state = TrimState.model_validate_json(result.state.model_dump_json())
        previous = result.messages


def test_300_random_agent_conversations_never_fail_while_the_must_keep_part_fits() -> None:
    rng = random.Random(300)
    failed = must_keep_too_large = cut = 0
    for _ in range(300):
        messages = random_agent_conversation(rng)
        budget = int(2000 * 16 ** rng.random())  # 2k to 32k, log-uniform
        try:
            out = trim_messages(messages, max_tokens=budget, model=MODEL, counter=COUNTER)
        except ContextTooLarge:
            if must_keep_tokens(messages) <= budget:
                failed += 1
            else:
                must_keep_too_large += 1
            continue
        check_trimmed(messages, out, budget)
        cut += any(CUT_MARKER.search(str(m.get("content"))) for m in out)
    print(
        f"\n300 conversations: {failed} ContextTooLarge while the must-keep part fits, "
        f"{must_keep_too_large} where it does not, {cut} fitted by cutting a message's middle"
    )
    assert failed == 0


# -- Trimmer --------------------------------------------------------------------------------------


def run_session(trimmer: Trimmer, history: list[Message], budget: int, start: int = 4) -> list[Any]:
    results = []
    state = None
    for length in complete_prefixes(history):
        if length < start:
            continue
        result = trimmer.fit(history[:length], model=MODEL, max_tokens=budget, state=state)
        results.append(result)
        state = result.state
    return results


def test_trimmer_keeps_the_prefix_byte_identical_between_trims() -> None:
    history = agent_history(60, output_words=900)
    budget = 16_000
    trimmer = Trimmer(TrimmingConfig(max_context_tokens=budget, keep_last_turns=3), COUNTER)
    results = run_session(trimmer, history, budget)
    previous_json = None
    reused = 0
    for result in results:
        validate_messages(result.messages)
        assert result.tokens_after <= budget
        encoded = [json.dumps(m, sort_keys=True) for m in result.messages]
        if previous_json is not None and not result.retrimmed:
            assert encoded[: len(previous_json)] == previous_json
            assert result.prefix_reused
            reused += 1
        if result.retrimmed:
            # Trimmed with headroom, down to the low watermark.
            assert result.tokens_after <= 0.7 * budget
            assert not result.prefix_reused
        previous_json = encoded
    retrims = sum(result.retrimmed for result in results)
    share = reused / (len(results) - 1)
    print(f"\n{len(results)} calls, {retrims} re-trims, prefix reused on {share:.0%} of calls")
    assert retrims >= 3
    assert share >= 0.75
    assert results[-1].state.trims == retrims


def test_trim_state_round_trips_and_is_small() -> None:
    history = agent_history(40)
    trimmer = Trimmer(TrimmingConfig(keep_last_turns=2), COUNTER)
    first = trimmer.fit(history[:60], model=MODEL, max_tokens=6000)
    assert first.retrimmed and first.dropped_messages > 0
    stored = first.state.model_dump_json()
    assert len(stored) < 2000
    restored = TrimState.model_validate_json(stored)
    assert restored == first.state
    later = trimmer.fit(history[:62], model=MODEL, max_tokens=6000, state=restored)
    assert not later.retrimmed and later.prefix_reused
    assert later.messages[: len(first.messages)] == first.messages


def test_a_rewritten_history_gets_a_fresh_cut() -> None:
    history = agent_history(40)
    trimmer = Trimmer(TrimmingConfig(keep_last_turns=2), COUNTER)
    first = trimmer.fit(history, model=MODEL, max_tokens=6000)
    edited = copy.deepcopy(history)
    edited[5]["content"] = "edited"
    second = trimmer.fit(edited, model=MODEL, max_tokens=6000, state=first.state)
    validate_messages(second.messages)
    assert second.retrimmed
    assert second.tokens_after <= 6000


def test_state_from_a_passthrough_call_is_reused() -> None:
    history = agent_history(3)
    trimmer = Trimmer(TrimmingConfig(), COUNTER)
    first = trimmer.fit(history[:4], model=MODEL, max_tokens=100_000)
    second = trimmer.fit(history, model=MODEL, max_tokens=100_000, state=first.state)
    assert second.messages == history and second.prefix_reused and not second.retrimmed
    assert (second.elided_tool_outputs, second.dropped_messages) == (0, 0)
    assert second.tokens_before == second.tokens_after == count(history)


def test_disabled_or_unlimited_trimmer_passes_through() -> None:
    history = agent_history(20)
    assert (
        Trimmer(TrimmingConfig(enabled=False), COUNTER)
        .fit(history, model=MODEL, max_tokens=10)
        .messages
        == history
    )
    assert Trimmer(TrimmingConfig(), COUNTER).fit(history, model=MODEL).messages == history
    limited = Trimmer(TrimmingConfig(max_context_tokens=5000, keep_last_turns=2), COUNTER)
    assert limited.fit(history, model=MODEL).tokens_after <= 5000


def summarizer_spy(
    text: str = "The agent read the parser sources.",
) -> tuple[Callable[[list[Message]], str], list[int]]:
    calls: list[int] = []

    def summarize(messages: list[Message]) -> str:
        validate_messages([{"role": "user", "content": "x"}, *messages])
        calls.append(len(messages))
        return text

    return summarize, calls


def test_summarize_replaces_the_dropped_span_once_per_span() -> None:
    history = agent_history(50)
    summarize, calls = summarizer_spy()
    trimmer = Trimmer(
        TrimmingConfig(strategy="summarize", keep_last_turns=2), COUNTER, summarizer=summarize
    )
    results = run_session(trimmer, history, 8000)
    retrims = [r for r in results if r.retrimmed and r.dropped_messages]
    assert retrims
    assert len(calls) == len(retrims)  # reused on every call between trims
    for result in results:
        validate_messages(result.messages)
        assert result.tokens_after <= 8000
    last = results[-1]
    summary = next(m for m in last.messages if is_note(m))
    assert summary["content"].startswith(
        f"[agentguard: summary of {last.dropped_messages} earlier messages"
    )
    assert summary["content"].endswith("The agent read the parser sources.")
    assert calls[-1] == last.dropped_messages


def test_a_long_summary_is_cut_and_a_failing_one_falls_back_to_the_note() -> None:
    history = agent_history(30)
    long_summary, _calls = summarizer_spy(words(5000, 3))
    trimmer = Trimmer(
        TrimmingConfig(strategy="summarize", keep_last_turns=2),
        COUNTER,
        summarizer=long_summary,
        summary_max_tokens=100,
    )
    result = trimmer.fit(history, model=MODEL, max_tokens=6000)
    summary = next(m for m in result.messages if is_note(m))
    assert COUNTER.count_text(summary["content"], MODEL) < 150

    def failing(messages: list[Message]) -> str:
        raise RuntimeError("summarizer is down")

    trimmer = Trimmer(
        TrimmingConfig(strategy="summarize", keep_last_turns=2), COUNTER, summarizer=failing
    )
    result = trimmer.fit(history, model=MODEL, max_tokens=6000)
    note = next(m for m in result.messages if is_note(m))
    assert "were dropped to fit the context window" in note["content"]


def test_summarize_without_summarizer_behaves_as_elide() -> None:
    history = agent_history(30)
    elide = Trimmer(TrimmingConfig(strategy="elide", keep_last_turns=2), COUNTER)
    summarize = Trimmer(TrimmingConfig(strategy="summarize", keep_last_turns=2), COUNTER)
    assert (
        elide.fit(history, model=MODEL, max_tokens=6000).messages
        == summarize.fit(history, model=MODEL, max_tokens=6000).messages
    )


def test_unknown_model_elisions_stay_identical_when_calibration_moves() -> None:
    counter = TokenCounter()
    history = agent_history(30)
    trimmer = Trimmer(TrimmingConfig(keep_last_turns=2, tool_output_max_tokens=200), counter)
    first = trimmer.fit(history[:50], model="acme-1", max_tokens=9000)
    assert first.elided_tool_outputs
    counter.observe("acme-1", 1000, 1100)  # the estimate factor changes between calls
    second = trimmer.fit(history[:52], model="acme-1", max_tokens=9000, state=first.state)
    assert not second.retrimmed and second.prefix_reused
    assert second.messages[: len(first.messages)] == first.messages


def provider_bills(requests: list[list[Message]], cached_input_ratio: float) -> list[float]:
    """Each request's input cost (in uncached-token units), billed as the simulated provider
    bills: its own token counts and its prompt cache."""
    from agentguard.sim.tokens import PrefixCache
    from agentguard.sim.tokens import TokenCounter as ProviderCounter

    provider = ProviderCounter()
    cache = PrefixCache()
    costs = []
    for request in requests:
        prompt = provider.prompt(request, None, MODEL)
        cached = cache.lookup_and_store(b"test", prompt)
        costs.append(prompt.total - cached + cached_input_ratio * cached)
    return costs


def session_requests(
    history: list[Message], cached_input_ratio: float, keep_last_turns: int
) -> tuple[list[list[Message]], list[list[Message]], TrimState | None]:
    """The untrimmed and the trimmed request of every call of a growing session."""
    trimmer = Trimmer(TrimmingConfig(keep_last_turns=keep_last_turns), COUNTER)
    untrimmed: list[list[Message]] = []
    trimmed: list[list[Message]] = []
    state = None
    for length in complete_prefixes(history)[1:]:
        untrimmed.append(history[:length])
        result = trimmer.fit(
            history[:length],
            model=MODEL,
            max_tokens=16_000,
            state=state,
            cached_input_ratio=cached_input_ratio,
        )
        assert result.tokens_after <= 16_000
        state = result.state
        trimmed.append(result.messages)
    return untrimmed, trimmed, state


@pytest.mark.parametrize("cached_input_ratio", [0.5, 0.25, 0.1])
def test_a_cache_aware_cut_costs_no_more_than_the_untrimmed_call(
    cached_input_ratio: float,
) -> None:
    # Long outputs the cut may elide: the break-even size is reachable at every new cut.
    history = agent_history(0)
    for step in range(30):
        history += tool_step(step, [words(2200 + (step * 397) % 900, step)])
    untrimmed, trimmed, state = session_requests(history, cached_input_ratio, keep_last_turns=2)
    assert state is not None and state.trims >= 2
    costs = provider_bills(trimmed, cached_input_ratio)
    bases = provider_bills(untrimmed, cached_input_ratio)
    for call, (cost, base) in enumerate(zip(costs, bases, strict=True)):
        assert cost <= base, f"call {call} costs {cost:.0f} trimmed, {base:.0f} untrimmed"


@pytest.mark.parametrize("cached_input_ratio", [0.5, 0.25, 0.1])
def test_a_cache_aware_session_costs_no_more_than_the_untrimmed_one(
    cached_input_ratio: float,
) -> None:
    # Short and long outputs in the kept turns: a new cut may not reach the break-even size
    # without giving up the kept turns, so one call may cost more; the session does not.
    history = agent_history(0)
    for step in range(40):
        history += tool_step(step, [words(300 + (step * 397) % 2500, step)])
    untrimmed, trimmed, state = session_requests(history, cached_input_ratio, keep_last_turns=3)
    assert state is not None and state.trims >= 2
    cost = sum(provider_bills(trimmed, cached_input_ratio))
    base = sum(provider_bills(untrimmed, cached_input_ratio))
    assert cost <= base


# -- in the pipeline, over the sim ----------------------------------------------------------------


def test_a_guarded_call_whose_last_message_is_too_long_is_cut_and_sent(
    sim: Any, make_guard: Callable[..., Any]
) -> None:
    import openai

    guard = make_guard(trimming={"max_context_tokens": 3000})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    messages = [
        {"role": "system", "content": "You are a careful coding agent. " + words(300, 1)},
        {"role": "user", "content": "Fix the failing test in the parser."},
        *tool_step(0, [words(6000, 2)]),
    ]
    with guard.session():
        response = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=100)
    (sent,) = [request.body for request in sim.requests if request.body]
    validate_messages(sent["messages"])
    assert count(sent["messages"]) <= 3000 - 100  # the room: the context less the output
    assert response.usage.prompt_tokens < 3000  # as the provider counted it
    assert sent["messages"][:3] == messages[:3]
    assert is_cut_of(messages[-1], sent["messages"][-1])


def test_a_summary_shorter_than_planned_leaves_the_last_message_whole() -> None:
    """A counterexample the property test above found: parallel tool results end the
    conversation, and the summary of the dropped turns is planned at its longest. It came out
    at 76 tokens, and the last result had been cut to 1,290 of its 1,994 tokens in a 2,298
    budget where it fits whole: the plan is made again with the summary's real size."""
    case = json.loads(
        (Path(__file__).parent / "fixtures" / "trim-summary-shorter-than-planned.json").read_text()
    )
    messages, budget = case["messages"], case["budget"]
    trimmer = Trimmer(
        TrimmingConfig(strategy="summarize", keep_last_turns=2, tool_output_max_tokens=500),
        COUNTER,
        summarizer=lambda dropped: words(3 * len(dropped), len(dropped)),
    )
    state: TrimState | None = None
    for length in complete_prefixes(messages):
        if length <= 2:
            continue
        history = messages[:length]
        result = trimmer.fit(history, model=MODEL, max_tokens=budget, state=state)
        check_trimmed(history, result.messages, budget)
        state = result.state


def test_the_count_trimming_hands_to_pricing_is_the_chat_dialects_own() -> None:
    # Pricing reuses the trimming stage's count of a chat request instead of counting again:
    # the two must agree, tools included, or the reserved worst case would be off.
    from agentguard.dialects.openai_chat import OPENAI_CHAT
    from agentguard.tokens import TokenCounter
    from agentguard.trimming.chat import CHAT_VIEW

    counter = TokenCounter()
    tools = [{"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}]
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Read a.py " * 50},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "read", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "print('x')\n" * 40},
        ],
        "tools": tools,
    }
    for model in ("gpt-4o", "claude-sonnet-4-6", "some-unknown-model"):
        entries = CHAT_VIEW.read(body)
        assert entries is not None
        reused = sum(CHAT_VIEW.counts(entries, model, counter)) + CHAT_VIEW.overhead(
            model, counter, tools
        )
        assert reused == OPENAI_CHAT.count_input(body, model, counter)
