"""Evaluate the step router: on RouteLLM's public benchmarks and on labelled agent steps.

Run: ``python bench/routing_eval.py --routellm PATH`` (a RouteLLM checkout or its git dir;
see ``routing_train.py``). Writes ``bench/results/routing_eval.json``.

**RouteLLM benchmarks** (MT-Bench, GSM8K, MMLU: gpt-4-1106-preview vs Mixtral-8x7B, RouteLLM's
contamination lists applied). For each, the learned scorer is scored

- *cross-validated*: 5 folds over all training rows (the three benchmarks, the agent ``dev``
  steps and their translations), nested: each test fold is scored with the training recipe
  chosen on the other folds alone (``routing_corpus.cross_validate``); every prompt is scored by
  a model that was not trained on it; with the spread of APGR per test fold and over prompts
  resampled with replacement;
- *leave-one-benchmark-out*: the shipped recipe trained on the other two benchmarks and the
  agent training rows;

against random routing (mean of 200 draws), prompt length alone (longer goes up) and the
older heuristic classifier. Metrics: APGR (area under the performance-gap-recovered curve
over the share of strong calls, 0..1; random is 0.5), PGR and strong-call share at the
default threshold (baselines: PGR at the same strong share as the learned scorer), and the
share of calls kept off the strong model while reaching 95% of its quality.

**Agent steps** (``bench/data/routing_steps.jsonl``, easy/hard): the ``test`` split
(``sha256(id) % 100 < 30``) is never trained or tuned on; the shipped weights were fitted on
``dev`` (and the benchmarks) and the threshold chosen on ``dev`` out-of-fold scores. Each step
goes through the real :class:`Router` with two tiers, ``small = gpt-4o-mini`` and ``large =
gpt-4o``; the agent asks for ``gpt-4o``. Metrics: accuracy, hard-sent-cheap (hard steps routed
small), easy-sent-frontier, frontier share, and cost share (routed cost / all-frontier cost;
input tokens = characters / 4, ``--output-tokens`` per step, genai-prices).

**Non-English**: ``bench/data/routing_steps_translated.jsonl`` holds the latest user message of
test-split steps translated by hand (the rest of the step unchanged); the same metrics are
reported per language next to the same steps in English. With ``--routellm``, the hand-translated
``dev`` steps the scorer trains on are also scored cross-validated (a step and its translations
share a fold), per language next to their English originals.

**Cascade**: the LLM classifier is *simulated*: an oracle answers the true label, flipped with a
given error rate (deterministically per step), through the real :class:`LLMClassifier`; it is
asked only for steps in the learned scorer's uncertain band, and each ask is priced at small
model rates (its prompt + 3 output tokens) and included in the cost share.
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

import numpy as np  # noqa: E402
import routing_corpus as corpus  # noqa: E402
from _machine import machine_info  # noqa: E402

from agentguard.config import RoutingConfig  # noqa: E402
from agentguard.routing import (  # noqa: E402
    CLASSIFIER_REQUEST_OPTIONS,
    CascadeClassifier,
    Classifier,
    HeuristicClassifier,
    LearnedClassifier,
    LLMClassifier,
    Router,
    extract_features,
    load_model,
)

DATA = ROOT / "bench" / "data" / "routing_steps.jsonl"
TRANSLATED = ROOT / "bench" / "data" / "routing_steps_translated.jsonl"
RESULTS = ROOT / "bench" / "results" / "routing_eval.json"
SMALL, LARGE = "gpt-4o-mini", "gpt-4o"
TEST_PERCENT = 30
LLM_ERROR_RATES = (0.0, 0.10, 0.20, 0.30)
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
        if not chosen:
            continue
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
            routed_cost += cost_usd(prices, decision.model, step["cost_tokens"], output_tokens)
            frontier_cost += cost_usd(prices, LARGE, step["cost_tokens"], output_tokens)
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


def text_length(row: corpus.Row) -> float:
    return float(len(row.prompt))


def heuristic_score(row: corpus.Row) -> float:
    features = extract_features(
        row.messages, row.tools, input_tokens=corpus.estimate_tokens(row.messages, row.tools)
    )
    return HeuristicClassifier()(features).score


def benchmark_metrics(
    rows: list[corpus.Row], scores: np.ndarray, threshold: float | None, share: float | None
) -> dict[str, float]:
    """APGR, PGR at the threshold (or at ``share`` strong calls), calls saved at 95%."""
    strong = np.array([r.strong for r in rows])
    weak = np.array([r.weak for r in rows])
    curve = corpus.pgr_curve(scores, strong, weak)
    result = {
        "apgr": round(corpus.apgr(curve), 4),
        "calls_saved_at_95pct_quality": round(saved_at_quality(scores, strong, weak), 4),
    }
    if threshold is not None:
        at = corpus.pgr_at(scores, strong, weak, threshold)
        result["pgr_at_threshold"] = round(at["pgr"], 4)
        result["strong_share_at_threshold"] = round(at["strong_share"], 4)
    elif share is not None:
        k = round(share * len(rows))
        result["pgr_at_same_strong_share"] = round(float(curve[k]), 4)
    return result


def saved_at_quality(scores: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> float:
    """Share of calls kept off the strong model at the fewest strong calls whose mean quality
    reaches 95% of the strong model's."""
    order = np.argsort(-scores, kind="stable")
    quality = (weak.sum() + np.concatenate([[0.0], np.cumsum((strong - weak)[order])])) / len(
        strong
    )
    target = 0.95 * strong.mean()
    reached = np.nonzero(quality >= target - 1e-12)[0]
    return 1.0 - float(reached[0]) / len(strong)


def cached_cross_validation(folds: int) -> dict[str, Any] | None:
    """The nested cross-validation ``routing_train.py`` ran for the shipped weights, if the
    cache is there and belongs to them (same weights file, same folds)."""
    if not corpus.OOF_CACHE.exists():
        return None
    cache = json.loads(corpus.OOF_CACHE.read_text())
    weights = ROOT / "agentguard" / "routing" / "weights.json"
    if cache.get("weights_sha256") != corpus.sha256_file(weights) or cache.get("folds") != folds:
        return None
    return dict(cache)


def apgr_of(rows: list[corpus.Row], scores: np.ndarray) -> float:
    strong = np.array([r.strong for r in rows])
    weak = np.array([r.weak for r in rows])
    return corpus.apgr(corpus.pgr_curve(scores, strong, weak))


def spread(
    rows: list[corpus.Row], learned: np.ndarray, length: np.ndarray, folds: int, draws: int = 500
) -> dict[str, Any]:
    """How much the cross-validated APGR moves: per test fold (each fold's prompts ranked by the
    model that did not see them), and over prompts resampled with replacement (a 95% interval,
    and how often the scorer beats length alone on the same resample)."""
    fold = np.array([corpus.fold_of(r.id, folds) for r in rows])
    per_fold = [
        apgr_of([r for r, f in zip(rows, fold, strict=True) if f == k], learned[fold == k])
        for k in range(folds)
    ]
    strong = np.array([r.strong for r in rows])
    weak = np.array([r.weak for r in rows])
    rng = np.random.default_rng(5)
    areas, wins = [], 0
    for _ in range(draws):
        pick = rng.integers(0, len(rows), len(rows))
        if strong[pick].sum() == weak[pick].sum():
            continue
        area = corpus.apgr(corpus.pgr_curve(learned[pick], strong[pick], weak[pick]))
        baseline = corpus.apgr(corpus.pgr_curve(length[pick], strong[pick], weak[pick]))
        areas.append(area)
        wins += area > baseline
    return {
        "per_fold_apgr": [round(a, 4) for a in per_fold],
        "per_fold_mean": round(float(np.mean(per_fold)), 4),
        "per_fold_sd": round(float(np.std(per_fold, ddof=1)), 4),
        "bootstrap_95pct": [round(float(np.percentile(areas, q)), 4) for q in (2.5, 97.5)],
        "bootstrap_sd": round(float(np.std(areas, ddof=1)), 4),
        "bootstrap_share_above_length_only": round(wins / len(areas), 3),
    }


def routellm_section(
    location: Path, folds: int, threshold: float, recipe_name: str, refit: bool
) -> dict[str, Any]:
    data = corpus.training_rows(location)
    benchmarks, agent_rows = data.benchmarks, data.agent
    rows = data.rows
    corpus.vectorise(rows)
    design = corpus.Design(rows)
    cache = None if refit else cached_cross_validation(folds)
    if cache is None:
        cv = corpus.cross_validate(design, corpus.RECIPES, folds)
        cache = {
            "recipe": cv.recipe,
            "scores": cv.scores,
            "plain": cv.plain,
            "chosen_per_fold": cv.chosen_per_fold,
            "inner": cv.inner,
            "overall": cv.overall,
        }
    cross: dict[str, float] = cache["scores"]
    recipe = corpus.recipe_named(recipe_name)
    section: dict[str, Any] = {
        "source": {
            "repository": corpus.ROUTELLM_REPO,
            "commit": corpus.ROUTELLM_COMMIT,
            "licence": "Apache-2.0",
            "files_sha256": dict(sorted(data.hashes.items())),
        },
        "threshold": threshold,
        "folds": folds,
        "cross_validated_scores": (
            "from routing_train.py's run (same folds, same rows)" if not refit else "refitted here"
        )
        + "; nested: each test fold is scored with the recipe chosen on the other folds",
        "recipe_shipped": recipe.name,
        "recipe_chosen_per_test_fold": cache["chosen_per_fold"],
        "recipe_selection_score_per_test_fold": [
            {name: round(v, 4) for name, v in inner.items()} for inner in cache["inner"]
        ],
        "recipes_plain_cross_validated_apgr": {
            name: {
                bench: round(apgr_of(bench_rows, np.array([scores[r.id] for r in bench_rows])), 4)
                for bench, bench_rows in benchmarks.items()
            }
            for name, scores in cache["plain"].items()
        },
        "benchmarks": {},
    }
    for name, bench_rows in benchmarks.items():
        others = np.array(
            [
                i
                for i, r in enumerate(rows)
                if r.source != name and (recipe.follow_ups or r.turn == 1)
            ]
        )
        chosen = np.array([design.position[r.id] for r in bench_rows])
        held_out = design.scores(chosen, *design.fit(others, recipe))
        learned = np.array([cross[r.id] for r in bench_rows])
        length = np.array([text_length(r) for r in bench_rows])
        cv_metrics = benchmark_metrics(bench_rows, learned, threshold, None)
        share = cv_metrics["strong_share_at_threshold"]
        strong = np.array([r.strong for r in bench_rows])
        weak = np.array([r.weak for r in bench_rows])
        rng = np.random.default_rng(11)
        random_saved = np.mean(
            [saved_at_quality(rng.random(len(bench_rows)), strong, weak) for _ in range(200)]
        )
        section["benchmarks"][name] = {
            "prompts": len(bench_rows),
            "strong_quality": round(float(strong.mean()), 4),
            "weak_quality": round(float(weak.mean()), 4),
            "learned_cross_validated": cv_metrics,
            "learned_cross_validated_spread": spread(bench_rows, learned, length, folds),
            "learned_leave_benchmark_out": benchmark_metrics(bench_rows, held_out, threshold, None),
            "length_only": benchmark_metrics(bench_rows, length, None, share),
            "heuristic": benchmark_metrics(
                bench_rows, np.array([heuristic_score(r) for r in bench_rows]), None, share
            ),
            "random": {
                "apgr": round(corpus.random_apgr(strong, weak)["apgr"], 4),
                "calls_saved_at_95pct_quality": round(float(random_saved), 4),
                "pgr_at_same_strong_share": round(share, 4),
            },
        }
    section["translated_dev_steps_out_of_fold"] = translated_out_of_fold(
        agent_rows, cross, threshold
    )
    return section


def translated_out_of_fold(
    agent_rows: list[corpus.Row], cross: dict[str, float], threshold: float
) -> dict[str, dict[str, float]]:
    """Accuracy and hard-sent-cheap per language on the hand-translated ``dev`` steps and their
    English originals, from the cross-validated scores (a step and its translations share a
    fold, so none is scored by a model that saw it in any language). No session overrides."""
    by_lang: dict[str, list[corpus.Row]] = defaultdict(list)
    originals = {r.id.partition("@")[0] for r in agent_rows if "@" in r.id}
    for row in agent_rows:
        if "@" in row.id:
            by_lang[row.id.partition("@")[2]].append(row)
        elif row.id in originals:
            by_lang["en"].append(row)
    result = {}
    for lang, rows in sorted(by_lang.items()):
        up = np.array([cross[r.id] >= threshold for r in rows])
        hard = np.array([r.label == 1 for r in rows])
        result[lang] = {
            "steps": len(rows),
            "accuracy": round(float((up == hard).mean()), 4),
            "hard_sent_cheap_rate": round(float((~up & hard).sum() / hard.sum()), 4),
        }
    return result


def load_translations() -> list[dict[str, Any]]:
    if not TRANSLATED.exists():
        return []
    return [
        json.loads(line)
        for line in TRANSLATED.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def translated_steps(
    steps: list[dict[str, Any]], translations: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Per language, the translated steps (the latest user message replaced), and ``en`` for
    the same steps in English."""
    by_id = {s["id"]: s for s in steps}
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in translations:
        step = by_id[item["id"]]
        messages = [dict(m) for m in step["messages"]]
        for message in reversed(messages):
            if message["role"] == "user":
                message["content"] = item["content"]
                break
        out[item["lang"]].append(
            {
                **step,
                "messages": messages,
                "input_tokens": corpus.estimate_tokens(messages, step["tools"]),
            }
        )
    ids = {item["id"] for item in translations}
    out["en"] = [s for s in steps if s["id"] in ids]
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routellm", type=Path, help="RouteLLM checkout or git dir")
    parser.add_argument("--folds", type=int, default=corpus.FOLDS)
    parser.add_argument(
        "--refit", action="store_true", help="refit the folds even if routing_train.py cached them"
    )
    parser.add_argument(
        "--output-tokens", type=int, default=300, help="output tokens assumed per step"
    )
    parser.add_argument("--no-write", action="store_true", help="don't write the results file")
    args = parser.parse_args()

    model = load_model()
    steps = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    for step in steps:
        step["split"] = split_of(step["id"])
        step["input_tokens"] = corpus.estimate_tokens(step["messages"], step["tools"])
        step["cost_tokens"] = estimate_tokens(step["messages"], step["tools"])
        step["step_index"] = sum(m["role"] == "assistant" for m in step["messages"])
    prices, price_source = load_prices()

    def learned(step: dict[str, Any], prompt_log: list[int]) -> Classifier:
        return LearnedClassifier()

    def heuristic(step: dict[str, Any], prompt_log: list[int]) -> Classifier:
        return HeuristicClassifier()

    def cascade(error_rate: float) -> Any:
        def make(step: dict[str, Any], prompt_log: list[int]) -> Classifier:
            ask = oracle_ask(step["label"], step["id"], error_rate, prompt_log)
            return CascadeClassifier(LearnedClassifier(), LLMClassifier(ask))

        return make

    runs = {
        "learned": evaluate(steps, learned, prices, args.output_tokens),
        "heuristic": evaluate(steps, heuristic, prices, args.output_tokens),
    }
    for rate in LLM_ERROR_RATES:
        runs[f"cascade_sim_llm_error_{rate:.2f}"] = evaluate(
            steps, cascade(rate), prices, args.output_tokens
        )
    languages = {
        lang: evaluate(lang_steps, learned, prices, args.output_tokens)["all"]
        for lang, lang_steps in translated_steps(steps, load_translations()).items()
    }
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "scorer": {
            "weights_file": "agentguard/routing/weights.json",
            "weights": len(model.weights),
            "default_threshold": model.threshold,
            "trained_on": model.manifest.get("sources"),
        },
        "data": {
            "file": str(DATA.relative_to(ROOT)),
            "steps": len(steps),
            "labels": dict(Counter(s["label"] for s in steps)),
            "task_classes": dict(sorted(Counter(s["task_class"] for s in steps).items())),
            "split_rule": f"sha256(id) % 100 < {TEST_PERCENT} -> test (never trained or tuned "
            "on), else dev",
            "split_sizes": dict(Counter(s["split"] for s in steps)),
        },
        "setup": {
            "tiers": {"small": SMALL, "large": LARGE},
            "caller_model": LARGE,
            "input_tokens": "router: characters / 4 of the new input; cost: characters / 4 of "
            "message contents, tool calls and tool schemas",
            "output_tokens_per_step": args.output_tokens,
            "prices_per_mtok_usd": {
                m: {"input": str(i), "output": str(o)} for m, (i, o) in prices.items()
            },
            "price_source": price_source,
            "cascade": (
                "SIMULATED LLM classifier: oracle true label flipped with the stated error "
                "rate, asked only in the learned scorer's uncertain band; classifier calls "
                "priced at small-model rates and included in cost_share"
            ),
        },
        "targets": {
            "routellm_apgr_min": {"mt_bench": 0.65, "gsm8k": 0.60, "mmlu": 0.60},
            "agent_test_accuracy_min": 0.85,
            "agent_test_hard_sent_cheap_max": 0.10,
            "non_english_accuracy_within": 0.05,
        },
        "decide_timing_learned": time_decide(steps),
        "runs": runs,
        "languages": languages,
    }
    if args.routellm:
        report["routellm"] = routellm_section(
            args.routellm,
            args.folds,
            model.threshold,
            str(model.manifest.get("recipe", corpus.RECIPES[0].name)),
            args.refit,
        )
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    print(
        f"agent steps {report['data']['split_sizes']}; prices from {report['setup']['price_source']}"
    )
    print(
        f"{'run':34} {'split':5} {'acc':>6} {'hard->cheap':>11} {'easy->large':>11} "
        f"{'large share':>11} {'asked LLM':>9} {'cost vs 4o':>10}"
    )
    rows = [
        (name, split, per[split])
        for name, per in report["runs"].items()
        for split in ("dev", "test")
    ]
    rows += [(f"language {lang}", "test", r) for lang, r in report["languages"].items()]
    for name, split, r in rows:
        print(
            f"{name:34} {split:5} {r['accuracy']:6.1%} {r['hard_sent_cheap_rate']:11.1%} "
            f"{r['easy_sent_frontier_rate']:11.1%} {r['frontier_share']:11.1%} "
            f"{r['llm_asked_share']:9.1%} {r['cost_share_vs_all_frontier']:10.1%}"
        )
    timing = report["decide_timing_learned"]
    print(
        f"decide() with the learned scorer: median {timing['median_us']} µs, p95 {timing['p95_us']} µs"
    )
    section = report.get("routellm")
    if section:
        print(f"\n{'RouteLLM':10} {'router':28} {'APGR':>6} {'saved@95%':>9} {'PGR@thr':>8}")
        for bench, result in section["benchmarks"].items():
            for router in (
                "learned_cross_validated",
                "learned_leave_benchmark_out",
                "length_only",
                "heuristic",
                "random",
            ):
                r = result[router]
                pgr = r.get("pgr_at_threshold", r.get("pgr_at_same_strong_share"))
                print(
                    f"{bench:10} {router:28} {r['apgr']:6.3f} {r['calls_saved_at_95pct_quality']:9.1%} {pgr:8.3f}"
                )
            s = result["learned_cross_validated_spread"]
            print(
                f"{bench:10} {'  per fold / bootstrap':28} {s['per_fold_mean']:.3f} ± "
                f"{s['per_fold_sd']:.3f}; 95% {s['bootstrap_95pct']}; above length in "
                f"{s['bootstrap_share_above_length_only']:.0%} of resamples"
            )
        print(f"recipe per test fold: {section['recipe_chosen_per_test_fold']}")
        for name, areas in section["recipes_plain_cross_validated_apgr"].items():
            print(f"  plain k-fold (not nested) {name}: {areas}")
        for lang, r in section.get("translated_dev_steps_out_of_fold", {}).items():
            print(
                f"translated dev steps, cross-validated, {lang}: accuracy {r['accuracy']:.1%}, "
                f"hard->cheap {r['hard_sent_cheap_rate']:.1%} ({r['steps']} steps)"
            )
    if not report.get("no_write"):
        print(f"results: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
