"""Evaluate the step router on a labeled set of agent steps.

Data: ``bench/data/routing_steps.jsonl``, one agent step per line: ``id``, ``task_class``,
``label`` (``easy`` | ``hard``), ``messages`` (system prompt, user task, sometimes earlier
turns and tool results), ``tools`` (or null) and a ``note`` on what makes the step tricky.

Split: a step is in the held-out **test** split when ``sha256(id) % 100 < 30``, else in
**dev**. The heuristic's weights were set looking at dev only; test is reported as is.

Routing setup: two tiers, ``small = gpt-4o-mini`` and ``large = gpt-4o``; the agent asks for
``gpt-4o`` on every step. A step routed to ``large`` counts as "predicted hard".

Metrics per split:

- accuracy of the easy/hard prediction;
- hard-sent-cheap: share of hard steps routed to the small tier (the costly mistake);
- easy-sent-frontier: share of easy steps routed to the large tier (the wasteful one);
- frontier share: share of all calls sent to the large tier;
- cost share: routed cost / cost of sending every step to gpt-4o. Input tokens are estimated
  as characters / 4 of the messages and tool schemas; every step is assumed to produce
  ``--output-tokens`` output tokens (default 300). Prices come from genai-prices.

Cascade: the LLM classifier is **simulated**. An oracle answers the true label, flipped with a
given error rate (deterministically per step), through the real :class:`LLMClassifier`
(prompt building and answer parsing included). The cost of each classifier call (its prompt
at small-model input price, plus 3 output tokens) is added to the cascade's cost. Real small
models are not oracles: read these rows as "what the cascade adds if the LLM is right
(1 - error rate) of the time on the steps it is asked about".

Run: ``python bench/routing_eval.py`` (``--show-errors`` lists dev misclassifications only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _machine import machine_info  # noqa: E402

from agentguard.config import RoutingConfig  # noqa: E402
from agentguard.routing import (  # noqa: E402
    CLASSIFIER_REQUEST_OPTIONS,
    CascadeClassifier,
    Classifier,
    HeuristicClassifier,
    LLMClassifier,
    Router,
)

DATA = ROOT / "bench" / "data" / "routing_steps.jsonl"
RESULTS = ROOT / "bench" / "results" / "routing_eval.json"
SMALL, LARGE = "gpt-4o-mini", "gpt-4o"
TEST_PERCENT = 30
LLM_ERROR_RATES = (0.0, 0.05, 0.10, 0.20)
# Used only if genai-prices cannot be imported; dollars per million tokens (OpenAI list prices).
FALLBACK_PRICES = {
    SMALL: (Decimal("0.15"), Decimal("0.60")),
    LARGE: (Decimal("2.50"), Decimal("10.00")),
}


def split_of(step_id: str) -> str:
    digest = int(hashlib.sha256(step_id.encode()).hexdigest(), 16)
    return "test" if digest % 100 < TEST_PERCENT else "dev"


def estimate_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        for call in message.get("tool_calls") or ():
            chars += len(json.dumps(call))
        chars += 16  # role and message framing
    if tools:
        chars += len(json.dumps(tools))
    return max(1, chars // 4)


def load_prices() -> tuple[dict[str, tuple[Decimal, Decimal]], str]:
    try:
        from genai_prices import Usage, calc_price
    except ImportError:
        return FALLBACK_PRICES, "fallback list prices"
    prices = {}
    for model in (SMALL, LARGE):
        million = 1_000_000
        price = calc_price(
            Usage(input_tokens=million, output_tokens=million),
            model_ref=model,
            provider_id="openai",
        )
        prices[model] = (Decimal(price.input_price), Decimal(price.output_price))
    return prices, "genai-prices"


def cost_usd(
    prices: dict[str, tuple[Decimal, Decimal]], model: str, input_tokens: int, output_tokens: int
) -> Decimal:
    input_price, output_price = prices[model]
    return (input_price * input_tokens + output_price * output_tokens) / 1_000_000


def oracle_ask(label: str, step_id: str, error_rate: float, prompt_log: list[int]) -> Any:
    """A stand-in for the small model: the true label, wrong with probability ``error_rate``."""
    draw = int(hashlib.sha256(f"{step_id}:{error_rate}".encode()).hexdigest(), 16) % 10_000 / 10_000

    def ask(messages: list[dict[str, Any]]) -> str:
        prompt_log.append(sum(len(m["content"]) for m in messages) // 4)
        wrong = draw < error_rate
        says_hard = (label == "hard") != wrong
        return "HARD" if says_hard else "EASY"

    return ask


def evaluate(
    steps: list[dict[str, Any]],
    make_classifier: Any,
    prices: dict[str, tuple[Decimal, Decimal]],
    output_tokens: int,
) -> dict[str, Any]:
    config = RoutingConfig(tiers={"small": SMALL, "large": LARGE})
    per_split: dict[str, dict[str, Any]] = {}
    for split in ("dev", "test", "all"):
        chosen = [s for s in steps if split == "all" or s["split"] == split]
        correct = hard_cheap = easy_frontier = frontier = asked = 0
        routed_cost = frontier_cost = classifier_cost = Decimal(0)
        per_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        errors = []
        for step in chosen:
            prompt_log: list[int] = []
            router = Router(config, make_classifier(step, prompt_log))
            decision = router.decide(
                model=LARGE,
                messages=step["messages"],
                tools=step["tools"],
                input_tokens=step["input_tokens"],
                step_index=step["step_index"],
            )
            predicted = "hard" if decision.model == LARGE else "easy"
            ok = predicted == step["label"]
            correct += ok
            per_class[step["task_class"]][0] += ok
            per_class[step["task_class"]][1] += 1
            hard_cheap += step["label"] == "hard" and predicted == "easy"
            easy_frontier += step["label"] == "easy" and predicted == "hard"
            frontier += predicted == "hard"
            routed_cost += cost_usd(prices, decision.model, step["input_tokens"], output_tokens)
            frontier_cost += cost_usd(prices, LARGE, step["input_tokens"], output_tokens)
            for prompt_tokens in prompt_log:
                asked += 1
                classifier_cost += cost_usd(
                    prices, SMALL, prompt_tokens, CLASSIFIER_REQUEST_OPTIONS["max_tokens"]
                )
            if not ok:
                errors.append(
                    {
                        "id": step["id"],
                        "label": step["label"],
                        "score": decision.score,
                        "reasons": list(decision.reasons),
                    }
                )
        n = len(chosen)
        hard_n = sum(s["label"] == "hard" for s in chosen)
        easy_n = n - hard_n
        per_split[split] = {
            "steps": n,
            "hard_steps": hard_n,
            "accuracy": round(correct / n, 4),
            "hard_sent_cheap_rate": round(hard_cheap / hard_n, 4) if hard_n else None,
            "easy_sent_frontier_rate": round(easy_frontier / easy_n, 4) if easy_n else None,
            "frontier_share": round(frontier / n, 4),
            "llm_asked_share": round(asked / n, 4),
            "cost_share_vs_all_frontier": round(
                float((routed_cost + classifier_cost) / frontier_cost), 4
            ),
            "classifier_cost_share": round(float(classifier_cost / frontier_cost), 5),
            "per_class_accuracy": {c: round(k / t, 3) for c, (k, t) in sorted(per_class.items())},
            "errors": errors,
        }
    return per_split


def time_decide(steps: list[dict[str, Any]], rounds: int = 5) -> dict[str, float]:
    router = Router(RoutingConfig(tiers={"small": SMALL, "large": LARGE}))
    samples = []
    for _ in range(rounds):
        for step in steps:
            start = time.perf_counter_ns()
            router.decide(
                model=LARGE,
                messages=step["messages"],
                tools=step["tools"],
                input_tokens=step["input_tokens"],
                step_index=step["step_index"],
            )
            samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return {
        "calls": len(samples),
        "median_us": round(samples[len(samples) // 2], 1),
        "p95_us": round(samples[int(len(samples) * 0.95)], 1),
        "max_us": round(samples[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-tokens", type=int, default=300, help="output tokens assumed per step"
    )
    parser.add_argument(
        "--show-errors", action="store_true", help="print dev-split misclassifications"
    )
    parser.add_argument("--no-write", action="store_true", help="don't write the results file")
    parser.add_argument(
        "--dev-only",
        action="store_true",
        help="print dev rows only and write nothing (for tuning without seeing test)",
    )
    args = parser.parse_args()
    if args.dev_only:
        args.no_write = True

    steps = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    for step in steps:
        step["split"] = split_of(step["id"])
        step["input_tokens"] = estimate_tokens(step["messages"], step["tools"])
        step["step_index"] = sum(m["role"] == "assistant" for m in step["messages"])
    prices, price_source = load_prices()

    def heuristic(step: dict[str, Any], prompt_log: list[int]) -> Classifier:
        return HeuristicClassifier()

    def cascade(error_rate: float) -> Any:
        def make(step: dict[str, Any], prompt_log: list[int]) -> Classifier:
            ask = oracle_ask(step["label"], step["id"], error_rate, prompt_log)
            return CascadeClassifier(HeuristicClassifier(), LLMClassifier(ask))

        return make

    runs = {"heuristic": evaluate(steps, heuristic, prices, args.output_tokens)}
    for rate in LLM_ERROR_RATES:
        runs[f"cascade_sim_llm_error_{rate:.2f}"] = evaluate(
            steps, cascade(rate), prices, args.output_tokens
        )

    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "data": {
            "file": str(DATA.relative_to(ROOT)),
            "steps": len(steps),
            "labels": dict(Counter(s["label"] for s in steps)),
            "task_classes": dict(sorted(Counter(s["task_class"] for s in steps).items())),
            "split_rule": f"sha256(id) % 100 < {TEST_PERCENT} -> test, else dev",
            "split_sizes": dict(Counter(s["split"] for s in steps)),
        },
        "setup": {
            "tiers": {"small": SMALL, "large": LARGE},
            "caller_model": LARGE,
            "input_tokens": "characters / 4 of message contents, tool calls and tool schemas",
            "output_tokens_per_step": args.output_tokens,
            "prices_per_mtok_usd": {
                m: {"input": str(i), "output": str(o)} for m, (i, o) in prices.items()
            },
            "price_source": price_source,
            "cascade": (
                "SIMULATED LLM classifier: oracle true label flipped with the stated error "
                "rate; classifier calls priced at small-model rates and included in cost_share"
            ),
        },
        "targets": {"heuristic_accuracy_min": 0.85, "heuristic_hard_sent_cheap_max": 0.10},
        "decide_timing_heuristic": time_decide(steps),
        "runs": runs,
    }
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{len(steps)} steps ({report['data']['split_sizes']}), prices from {price_source}")
    header = (
        f"{'run':34} {'split':5} {'acc':>6} {'hard->cheap':>11} {'easy->large':>11} "
        f"{'large share':>11} {'asked LLM':>9} {'cost vs 4o':>10}"
    )
    print(header)
    for name, per_split in runs.items():
        for split in ("dev",) if args.dev_only else ("dev", "test"):
            r = per_split[split]
            print(
                f"{name:34} {split:5} {r['accuracy']:6.1%} {r['hard_sent_cheap_rate']:11.1%} "
                f"{r['easy_sent_frontier_rate']:11.1%} {r['frontier_share']:11.1%} "
                f"{r['llm_asked_share']:9.1%} {r['cost_share_vs_all_frontier']:10.1%}"
            )
    timing = report["decide_timing_heuristic"]
    print(
        f"decide() with the heuristic: median {timing['median_us']} µs, p95 {timing['p95_us']} µs"
    )
    if not args.no_write:
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    if args.show_errors:
        print("\ndev misclassifications (heuristic):")
        for error in runs["heuristic"]["dev"]["errors"]:
            print(
                f"  {error['id']:28} true={error['label']:4} score={error['score']}  "
                f"{error['reasons'][0][:160]}"
            )


if __name__ == "__main__":
    main()
