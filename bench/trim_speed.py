"""How long counting and trimming a long agent history takes.

History: a coding agent's session of about 200k tokens (o200k_base, as for gpt-4o): a ~3k-token
system prompt, the task, then steps of a short assistant message with a tool call and its
result: file reads of 2-8k tokens (Python standard library sources), short listings and grep
results (50-400 tokens), and now and then a user follow-up with an assistant reply. Built
deterministically from a seed.

Measured (median of ``--repetitions`` runs, each on a fresh copy of the state it needs):

- ``count_cold``: ``count_messages`` of the whole history with an empty per-message cache
  (vocabularies already loaded: that one-off load is reported separately);
- ``count_warm``: the same counter, the history plus one new message;
- ``trim_cold``: ``trim_messages`` to ``--max-tokens`` with an empty cache;
- ``trim_warm``: the same counter, the history plus one new message;
- ``trimmer_reapply``: ``Trimmer.fit`` with the previous call's state, one new message
  appended: the cut is re-applied (the usual per-call path inside a session);
- ``trimmer_retrim``: ``Trimmer.fit`` when the previous cut no longer fits and a new one is
  planned (warm cache).

Writes ``bench/results/trim_speed.json`` with machine information. Run:
``python bench/trim_speed.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _machine import machine_info  # noqa: E402

from agentguard.config import TrimmingConfig  # noqa: E402
from agentguard.tokens import TokenCounter  # noqa: E402
from agentguard.trimming import Trimmer, trim_messages, validate_messages  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "trim_speed.json"
MODEL = "gpt-4o"

Message = dict[str, Any]


def source_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        path
        for path in stdlib.glob("*.py")
        if path.stat().st_size > 40_000  # long enough for an 8k-token read
    )
    if not files:
        raise SystemExit(f"no standard library sources found under {stdlib}")
    return files


def build_history(target_tokens: int, seed: int, counter: TokenCounter) -> list[Message]:
    rng = random.Random(seed)
    files = source_files()
    system = (
        "You are a senior software engineer working in a repository through tools. "
        "Read before you write; keep changes minimal; run the tests after each change.\n\n"
        + files[0].read_text(encoding="utf-8", errors="replace")
    )
    history: list[Message] = [
        {"role": "system", "content": counter.truncate_text(system, 3000, MODEL)},
        {
            "role": "user",
            "content": "The CSV export drops rows whose last field is empty. Find the cause, "
            "fix it and add a regression test.",
        },
    ]
    total = counter.count_messages(history, MODEL)
    step = 0
    while total < target_tokens:
        step += 1
        kind = rng.random()
        if kind < 0.08:
            added: list[Message] = [
                {
                    "role": "assistant",
                    "content": "I found where rows are filtered; checking "
                    "whether the empty-field case is intended before changing it.",
                },
                {"role": "user", "content": "It is not intended. Also keep the header row."},
            ]
        else:
            call_id = f"call_{step:04d}"
            if kind < 0.42:
                path = rng.choice(files)
                text = path.read_text(encoding="utf-8", errors="replace")
                start = rng.randrange(0, max(len(text) // 3, 1))
                output = counter.truncate_text(text[start:], rng.randint(2000, 8000), MODEL)
                name, arguments = "read_file", {"path": f"lib/{path.name}"}
                note = f"Reading {path.name} to see how rows are written."
            else:
                sample = rng.sample(files, k=min(len(files), rng.randint(3, 25)))
                output = "\n".join(
                    f"lib/{p.name}:{rng.randint(1, 3000)}:    row = next(reader, None)"
                    for p in sample
                )
                name, arguments = "grep", {"pattern": "next(reader", "path": "lib"}
                note = "Searching for other places that read rows."
            added = [
                {
                    "role": "assistant",
                    "content": note,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call_id, "content": output},
            ]
        history += added
        total = counter.count_messages(history, MODEL)
    return history


def new_message(step: int) -> Message:
    return {
        "role": "user",
        "content": f"Status check {step}: what have you changed so far, and what is left?",
    }


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    value = function()
    return (time.perf_counter() - start) * 1000.0, value


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_ms": round(statistics.median(samples), 3),
        "min_ms": round(min(samples), 3),
        "max_ms": round(max(samples), 3),
        "samples_ms": [round(sample, 3) for sample in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history-tokens", type=int, default=200_000)
    parser.add_argument("--max-tokens", type=int, default=32_000)
    parser.add_argument("--repetitions", type=int, default=9)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--no-write", action="store_true", help="don't write the results file")
    args = parser.parse_args()

    load_start = time.perf_counter()
    builder = TokenCounter()
    builder.count_text("warm up", MODEL)  # loads the vocabulary once for the whole process
    load_ms = (time.perf_counter() - load_start) * 1000.0

    history = build_history(args.history_tokens, args.seed, builder)
    validate_messages(history)
    tokens = builder.count_messages(history, MODEL)
    chars = sum(len(json.dumps(message)) for message in history)
    config = TrimmingConfig(max_context_tokens=args.max_tokens)
    options = {
        "max_tokens": args.max_tokens,
        "model": MODEL,
        "keep_last_turns": config.keep_last_turns,
        "tool_output_max_tokens": config.tool_output_max_tokens,
    }

    samples: dict[str, list[float]] = {
        name: []
        for name in (
            "count_cold",
            "count_warm",
            "trim_cold",
            "trim_warm",
            "trimmer_reapply",
            "trimmer_retrim",
        )
    }
    trimmed: list[Message] = []
    reapply: Any = None
    for repetition in range(args.repetitions):
        grown = [*history, new_message(repetition)]

        counter = TokenCounter()
        elapsed, _ = timed(partial(counter.count_messages, history, MODEL))
        samples["count_cold"].append(elapsed)
        elapsed, _ = timed(partial(counter.count_messages, grown, MODEL))
        samples["count_warm"].append(elapsed)

        counter = TokenCounter()
        elapsed, trimmed = timed(partial(trim_messages, history, counter=counter, **options))
        samples["trim_cold"].append(elapsed)
        elapsed, _ = timed(partial(trim_messages, grown, counter=counter, **options))
        samples["trim_warm"].append(elapsed)

        # A session: the first call trims (to the low watermark), the next re-applies the cut.
        trimmer = Trimmer(config, counter)
        first = trimmer.fit(history, model=MODEL)
        elapsed, reapply = timed(partial(trimmer.fit, grown, model=MODEL, state=first.state))
        samples["trimmer_reapply"].append(elapsed)
        assert not reapply.retrimmed and reapply.prefix_reused

        # The same state under a smaller budget: the cut no longer fits and a new one is planned.
        elapsed, retrim = timed(
            partial(
                trimmer.fit,
                grown,
                model=MODEL,
                state=first.state,
                max_tokens=first.tokens_after - 1,
            )
        )
        samples["trimmer_retrim"].append(elapsed)
        assert retrim.retrimmed

    validate_messages(trimmed)
    after = builder.count_messages(trimmed, MODEL)
    results = {
        "benchmark": "trim_speed",
        "machine": machine_info(),
        "history": {
            "model": MODEL,
            "messages": len(history),
            "tokens": tokens,
            "json_chars": chars,
            "tool_outputs": sum(message["role"] == "tool" for message in history),
            "seed": args.seed,
        },
        "trim": {
            "max_tokens": args.max_tokens,
            "keep_last_turns": config.keep_last_turns,
            "tool_output_max_tokens": config.tool_output_max_tokens,
            "low_watermark": config.low_watermark,
            "trim_messages_tokens_after": after,
            "trim_messages_messages_after": len(trimmed),
            "trimmer_tokens_after": reapply.tokens_after,
            "trimmer_elided_tool_outputs": reapply.elided_tool_outputs,
            "trimmer_dropped_messages": reapply.dropped_messages,
            "trim_state_json_bytes": len(reapply.state.model_dump_json()),
        },
        "vocabulary_load_ms": round(load_ms, 1),
        "repetitions": args.repetitions,
        "results": {name: summary(values) for name, values in samples.items()},
    }

    print(
        f"history: {len(history)} messages, {tokens} tokens ({MODEL}), "
        f"{results['history']['tool_outputs']} tool outputs; "
        f"trimmed to {args.max_tokens}: {after} tokens, {len(trimmed)} messages"
    )
    print(
        f"Trimmer (low watermark {config.low_watermark}): {reapply.tokens_after} tokens, "
        f"{reapply.elided_tool_outputs} outputs elided, {reapply.dropped_messages} messages "
        f"dropped, state {results['trim']['trim_state_json_bytes']} bytes of JSON"
    )
    print(f"vocabulary load (once per process): {load_ms:.1f} ms")
    print(f"median of {args.repetitions} runs:")
    for name, values in results["results"].items():
        print(f"  {name:<16} {values['median_ms']:>9.2f} ms   (min {values['min_ms']:.2f})")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
