"""What trimming costs or saves once the provider's prompt cache is priced in.

A trimmed session sends fewer input tokens, but every new cut changes the request after the
system prompt and the task, so the provider serves that call mostly uncached; an untrimmed
session is served almost wholly from the cache. With a cheap cache (gpt-5 bills cached input at
10% of the input price) a shallow cut can therefore cost more than it saves. This benchmark
replays seeded agent sessions call by call, untrimmed and through :class:`Trimmer` (the
session's state carried from call to call, as the pipeline does), and bills each request as the
simulated provider does: its prompt cache (OpenAI's rule: the longest prefix an earlier request
sent, from 1,024 tokens, in steps of 128) and real prices from genai-prices (cached input at the
model's cached rate). The replies (output tokens) are the same in every variant.

Variants: ``untrimmed``; ``watermark`` (trim to ``low_watermark`` of the room, the cut kept
until it no longer fits); ``cache_aware`` (the same, and a new cut goes deep enough that the
call costs no more than the untrimmed request would with its cache: the pipeline's default).

Sessions: a ~1-4k-token system prompt, a task, then 20-60 steps of an assistant message with
1-3 parallel tool calls whose outputs are 10-6,000 words (log-uniform), and now and then a
follow-up from the user. Every request is checked to be valid and to fit the room.

With ``--api responses`` the same sessions are sent as the Responses API's ``instructions``
and ``input`` items (a reply's text as an assistant message item, each call a
``function_call``, each result a ``function_call_output``) and trimmed through that dialect's
history view; the provider bills the conversation they amount to.

Run: ``python bench/trim_cost.py`` (``--sessions``, ``--seed``, ``--api chat|responses``).
Writes ``bench/results/trim_cost.json`` (``trim_cost_responses.json`` for the Responses API).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _machine import machine_info  # noqa: E402

from agentguard.config import TrimmingConfig  # noqa: E402
from agentguard.dialects.openai_responses import OPENAI_RESPONSES  # noqa: E402
from agentguard.pricing import Usage, default_pricer  # noqa: E402
from agentguard.sim.responses import input_messages as provider_messages  # noqa: E402
from agentguard.sim.tokens import PrefixCache  # noqa: E402
from agentguard.sim.tokens import TokenCounter as ProviderCounter  # noqa: E402
from agentguard.tokens import TokenCounter  # noqa: E402
from agentguard.trimming import Trimmer, TrimState, validate_messages  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "trim_cost.json"
API = "chat"
"""The wire API the sessions speak (``--api``)."""
MODELS = ("gpt-4o", "gpt-4.1", "gpt-5")  # cached input at 50%, 25% and 10% of the input price
ROOMS = (16_000, 32_000)
WORDS = [
    "def",
    "return",
    "value",
    "self",
    "config",
    "path",
    "file",
    "read",
    "write",
    "parse",
    "token",
    "budget",
    "window",
    "cache",
    "prefix",
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
    "error",
    "test",
    "assert",
    "import",
    "class",
    "for",
    "in",
    "if",
    "else",
    "while",
    "try",
    "except",
    "raise",
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
    for name, description in (("read_file", "Read a file"), ("run_tests", "Run the tests"))
]

Message = dict[str, Any]


class Corpus:
    """Slices of one long seeded text: fast to make, realistic enough to tokenize."""

    def __init__(self, seed: int, words: int = 60_000) -> None:
        rng = random.Random(seed)
        pieces = [rng.choice(WORDS) + ("\n" if n % 11 == 10 else " ") for n in range(words)]
        self.text = "".join(pieces)
        self.starts = [0]
        for piece in pieces:
            self.starts.append(self.starts[-1] + len(piece))

    def words(self, count: int, rng: random.Random) -> str:
        start = rng.randrange(len(self.starts) - 1 - count)
        return self.text[self.starts[start] : self.starts[start + count]].rstrip()


def session(rng: random.Random, corpus: Corpus) -> list[list[Message]]:
    """One agent session as its steps: each step is the reply, then what follows it."""
    head: list[Message] = [
        {"role": "system", "content": corpus.words(rng.randint(800, 3500), rng)},
        {"role": "user", "content": corpus.words(rng.randint(20, 200), rng)},
    ]
    steps: list[list[Message]] = [head]
    for step in range(rng.randint(20, 60)):
        calls = [
            {
                "id": f"call_{step}_{n}",
                "type": "function",
                "function": {
                    "name": rng.choice(["read_file", "run_tests"]),
                    "arguments": json.dumps({"path": f"src/module_{rng.randrange(99)}.py"}),
                },
            }
            for n in range(rng.choice([1, 1, 1, 2, 3]))
        ]
        reply: Message = {
            "role": "assistant",
            "content": corpus.words(rng.randint(10, 200), rng),
            "tool_calls": calls,
        }
        results: list[Message] = [
            {
                "role": "tool",
                "tool_call_id": call["id"],
                "content": corpus.words(int(10 * 600 ** rng.random()), rng),
            }
            for call in calls
        ]
        follow_up: list[Message] = []
        if rng.random() < 0.05:
            follow_up = [{"role": "user", "content": corpus.words(rng.randint(5, 80), rng)}]
        steps.append([reply, *results, *follow_up])
    return steps


def as_items(messages: list[Message]) -> list[Message]:
    """Chat messages as Responses ``input`` items."""
    items: list[Message] = []
    for message in messages:
        if message["role"] == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message["tool_call_id"],
                    "output": message["content"],
                }
            )
            continue
        if message["role"] != "assistant":
            items.append({"role": message["role"], "content": message["content"]})
            continue
        if message.get("content"):
            part = {"type": "output_text", "text": message["content"], "annotations": []}
            items.append({"type": "message", "role": "assistant", "content": [part]})
        for call in message.get("tool_calls") or ():
            function = call["function"]
            items.append(
                {
                    "type": "function_call",
                    "call_id": call["id"],
                    "name": function["name"],
                    "arguments": function["arguments"],
                }
            )
    return items


def responses_requests(
    steps: list[list[Message]], room: int | None, counter: TokenCounter, ratio: float | None
) -> list[tuple[list[Message], Message]]:
    """:func:`requests` through the Responses API: the chat conversation each trimmed
    Responses request amounts to (as the provider reads it), and the reply it gets."""
    view = OPENAI_RESPONSES.trim_view
    trimmer = Trimmer(TrimmingConfig(max_context_tokens=room), counter)
    system, *rest = steps[0]
    items = as_items(rest)
    state: TrimState | None = None
    tools = [{"type": "function", **tool["function"]} for tool in TOOLS]
    calls = []
    for step in steps[1:]:
        body: dict[str, Any] = {"instructions": system["content"], "input": list(items)}
        if room is not None:
            entries = view.read(body)
            assert entries is not None
            result = trimmer.fit(
                entries,
                model="gpt-4o",
                state=state,
                tools=tools,
                cached_input_ratio=ratio,
                view=view,
            )
            state = result.state
            view.write(body, result.messages, result.sources)
            if OPENAI_RESPONSES.count_input({**body, "tools": tools}, "gpt-4o", counter) > room:
                raise AssertionError("a trimmed request does not fit its room")
        view.validate(body["input"])
        sent = [{"role": "developer", "content": body["instructions"]}]
        sent += provider_messages(body["input"])
        validate_messages(sent)
        calls.append((sent, step[0]))
        items += as_items(step)
    return calls


def requests(
    steps: list[list[Message]], room: int | None, counter: TokenCounter, ratio: float | None
) -> list[tuple[list[Message], Message]]:
    """Each call's request (trimmed or not) and the reply it gets."""
    if API == "responses":
        return responses_requests(steps, room, counter, ratio)
    trimmer = Trimmer(TrimmingConfig(max_context_tokens=room), counter)
    history: list[Message] = list(steps[0])
    state: TrimState | None = None
    calls = []
    for step in steps[1:]:
        if room is None:
            sent = list(history)
        else:
            result = trimmer.fit(
                history, model="gpt-4o", state=state, tools=TOOLS, cached_input_ratio=ratio
            )
            state = result.state
            sent = result.messages
            if result.tokens_after > room:
                raise AssertionError(f"a trimmed request takes {result.tokens_after} > {room}")
        validate_messages(sent)
        calls.append((sent, step[0]))
        history += step
    return calls


def bill(
    calls: list[tuple[list[Message], Message]], model: str, provider: ProviderCounter
) -> tuple[Decimal, Usage]:
    """What the provider bills for the calls, in order, with its prompt cache."""
    cache = PrefixCache()
    pricer = default_pricer()
    total = Decimal(0)
    usage_total = Usage()
    for sent, reply in calls:
        prompt = provider.prompt(sent, TOOLS, model)
        cached = cache.lookup_and_store(b"bench", prompt)
        output = provider.prompt([reply], None, model).total - 3
        usage = Usage(input_tokens=prompt.total, cached_input_tokens=cached, output_tokens=output)
        total += pricer.cost(model, usage)
        usage_total = usage_total + usage
    return total, usage_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-write", action="store_true", help="don't write the results file")
    parser.add_argument("--api", choices=["chat", "responses"], default="chat")
    args = parser.parse_args()
    global API
    API = args.api

    started = time.perf_counter()
    rng = random.Random(args.seed)
    corpus = Corpus(args.seed)
    counter = TokenCounter()
    provider = ProviderCounter()
    pricer = default_pricer()
    ratios = {
        model: float(pricer.price(model).cached_input / pricer.price(model).input)
        for model in MODELS
    }
    # (model, room, variant) -> per-session (trimmed cost, untrimmed cost)
    costs: dict[tuple[str, int, str], list[tuple[Decimal, Decimal]]] = {}
    tokens: dict[tuple[str, int, str], list[tuple[int, int]]] = {}
    session_tokens = []
    for _ in range(args.sessions):
        steps = session(rng, corpus)
        untrimmed = requests(steps, None, counter, None)
        session_tokens.append(counter.count_messages(untrimmed[-1][0], "gpt-4o"))
        untrimmed_bills = {model: bill(untrimmed, model, provider) for model in MODELS}
        for room in ROOMS:
            watermark = requests(steps, room, counter, None)
            for model in MODELS:
                base, base_usage = untrimmed_bills[model]
                aware = requests(steps, room, counter, ratios[model])
                for variant, calls in (("watermark", watermark), ("cache_aware", aware)):
                    cost, usage = bill(calls, model, provider)
                    costs.setdefault((model, room, variant), []).append((cost, base))
                    tokens.setdefault((model, room, variant), []).append(
                        (usage.input_tokens, base_usage.input_tokens)
                    )

    rows = []
    for (model, room, variant), pairs in costs.items():
        trimmed = sum((cost for cost, _ in pairs), Decimal(0))
        base = sum((base for _, base in pairs), Decimal(0))
        ratios_run = [float(cost / base) for cost, base in pairs]
        input_pairs = tokens[(model, room, variant)]
        rows.append(
            {
                "model": model,
                "cached_input_ratio": round(ratios[model], 3),
                "room_tokens": room,
                "variant": variant,
                "sessions": len(pairs),
                "untrimmed_usd": str(base.quantize(Decimal("0.0001"))),
                "trimmed_usd": str(trimmed.quantize(Decimal("0.0001"))),
                "saving": round(1 - float(trimmed / base), 3),
                "sessions_costing_more": sum(cost > base for cost, base in pairs),
                "worst_session_cost_ratio": round(max(ratios_run), 3),
                "input_tokens_ratio": round(
                    sum(t for t, _ in input_pairs) / sum(b for _, b in input_pairs), 3
                ),
            }
        )
    result = {
        "benchmark": "trim_cost",
        "api": args.api,
        "sessions": args.sessions,
        "seed": args.seed,
        "session_final_tokens": {
            "min": min(session_tokens),
            "median": sorted(session_tokens)[len(session_tokens) // 2],
            "max": max(session_tokens),
        },
        "trimming": {"keep_last_turns": 6, "tool_output_max_tokens": 2000, "low_watermark": 0.7},
        "prompt_cache": "OpenAI rule: longest previously sent prefix, >= 1024 tokens, steps of 128",
        "rows": rows,
        "target": "no session costs more trimmed (cache_aware) than untrimmed",
        "target_met": all(
            row["sessions_costing_more"] == 0 for row in rows if row["variant"] == "cache_aware"
        ),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_info(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for row in rows:
        print(
            f"{row['model']:<8} room {row['room_tokens']:>6} {row['variant']:<12} "
            f"untrimmed ${row['untrimmed_usd']:>8} trimmed ${row['trimmed_usd']:>8} "
            f"saving {row['saving']:>6.1%}  sessions costing more "
            f"{row['sessions_costing_more']:>2}/{row['sessions']} (worst x{row['worst_session_cost_ratio']})"
            f"  input tokens x{row['input_tokens_ratio']}"
        )
    print("sessions' final size (tokens):", result["session_final_tokens"])
    print("target met:", result["target_met"], f"({result['seconds']} s)")
    if not args.no_write:
        path = RESULTS if args.api == "chat" else RESULTS.with_name(f"trim_cost_{args.api}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
