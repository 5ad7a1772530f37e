"""Train the learned step scorer and write ``agentguard/routing/weights.json``.

One command::

    git clone https://github.com/lm-sys/RouteLLM /tmp/RouteLLM   # Apache-2.0
    python bench/routing_train.py --routellm /tmp/RouteLLM

``--routellm`` is a RouteLLM checkout or its bare git directory; the files are read at the
pinned commit (``routing_corpus.ROUTELLM_COMMIT``) and their sha256 go into the weights'
manifest, with the agent-step file's. Training data: RouteLLM's MT-Bench, GSM8K and MMLU
evaluation files, the ``dev`` split of ``bench/data/routing_steps.jsonl`` (the ``test``
split is never fitted or tuned on) and hand translations of 55 of those ``dev`` steps
(``bench/data/routing_steps_translated_train.jsonl``).

MT-Bench's second turns (RouteLLM's per-turn judge scores) can be training rows too; whether
they are, how MT-Bench rows are labelled and how much weight each source gets is a *recipe*
(``routing_corpus.RECIPES``, fixed before any was scored). The recipe is chosen by
cross-validation inside the training rows: the shipped one has the best mean APGR over the three
benchmarks out-of-fold (5-fold over all training rows). The cross-validated scores
``routing_eval.py`` reports are nested: each test fold is scored with the recipe chosen on the
other four folds alone (``routing_corpus.cross_validate``), so neither a score nor the recipe
behind it saw the prompt. A question's two turns always share a fold.

``--arena`` (an Arena-Hard-Auto checkout or bare git directory, read at
``routing_corpus.ARENA_COMMIT``) adds that repository's first prompt set as training rows for
the recipes that give it weight (``--candidates fifth``); they are never scored.

The default threshold is chosen on out-of-fold scores of the agent ``dev`` steps (k-fold, the
scorer never scores a step it was trained on): the highest accuracy with at most 10% of hard
steps sent to the small tier.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import routing_corpus as corpus

from agentguard.routing.learned import WEIGHTS_PATH

MAX_HARD_TO_SMALL = 0.10
KEEP_WEIGHTS = 12_000
FOLDS = corpus.FOLDS


def choose_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """The threshold with the best accuracy among those sending at most 10% of hard steps to
    the small tier (ties: the lower threshold, the safer side)."""
    best: tuple[float, float, dict[str, float]] | None = None
    for threshold in np.round(np.arange(0.05, 0.951, 0.01), 2):
        up = scores >= threshold
        hard_small = float((~up & (labels == 1)).sum() / max(1, (labels == 1).sum()))
        accuracy = float((up == (labels == 1)).mean())
        if hard_small > MAX_HARD_TO_SMALL:
            continue
        if best is None or accuracy > best[1]:
            best = (float(threshold), accuracy, {"accuracy": accuracy, "hard_to_small": hard_small})
    if best is None:
        raise SystemExit("no threshold keeps hard->small under 10% on the dev steps")
    return best[0], best[2]


def print_cross_validation(cv: corpus.CrossValidation, benchmarks: dict[str, list[Any]]) -> None:
    """Each candidate's plain out-of-fold APGR per benchmark, and the nested APGR of the whole
    procedure (the recipe chosen inside each test fold's training folds)."""

    def areas(scores: dict[str, float]) -> str:
        return " / ".join(
            f"{corpus.apgr(corpus.pgr_curve(*benchmark_arrays(rows, scores))):.4f}"
            for rows in benchmarks.values()
        )

    print(f"APGR {' / '.join(benchmarks)}")
    for name, scores in cv.plain.items():
        print(f"  plain {FOLDS}-fold, {name}: {areas(scores)}")
    print(f"  nested (recipe per test fold: {', '.join(cv.chosen_per_fold)}): {areas(cv.scores)}")
    base = cv.plain.get(corpus.RECIPES[0].name)
    for name, rows in benchmarks.items():
        print(f"  {name}: {resampled(rows, cv.scores, base)}")


def resampled(
    rows: list[Any], scores: dict[str, float], base: dict[str, float] | None, draws: int = 500
) -> str:
    """The nested APGR's 95% interval over prompts resampled with replacement, how often it
    reaches 0.65, and its paired difference from ``base`` (the shipped recipe's plain
    out-of-fold scores) on the same resamples."""
    nested, strong, weak = benchmark_arrays(rows, scores)
    shipped = benchmark_arrays(rows, base)[0] if base is not None else None
    rng = np.random.default_rng(5)
    areas, gaps = [], []
    for _ in range(draws):
        pick = rng.integers(0, len(rows), len(rows))
        if strong[pick].sum() == weak[pick].sum():
            continue
        area = corpus.apgr(corpus.pgr_curve(nested[pick], strong[pick], weak[pick]))
        areas.append(area)
        if shipped is not None:
            gaps.append(
                area - corpus.apgr(corpus.pgr_curve(shipped[pick], strong[pick], weak[pick]))
            )
    low, high = np.percentile(areas, (2.5, 97.5))
    text = f"95% {low:.3f}-{high:.3f}, >= 0.65 in {np.mean(np.array(areas) >= 0.65):.0%}"
    if gaps:
        g_low, g_high = np.percentile(gaps, (2.5, 97.5))
        text += (
            f"; vs shipped recipe {np.mean(gaps):+.3f} (95% {g_low:+.3f} to {g_high:+.3f}, "
            f"higher in {np.mean(np.array(gaps) > 0):.0%})"
        )
    return text


def benchmark_arrays(
    rows: list[Any], scores: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A benchmark's scores, strong-model and weak-model quality, in row order."""
    return (
        np.array([scores[r.id] for r in rows]),
        np.array([r.strong for r in rows]),
        np.array([r.weak for r in rows]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routellm", type=Path, required=True, help="RouteLLM checkout or git dir")
    parser.add_argument(
        "--arena", type=Path, help="Arena-Hard-Auto checkout or git dir (extra training rows)"
    )
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    parser.add_argument(
        "--candidates",
        choices=sorted(corpus.CANDIDATE_SETS),
        default="shipped",
        help="the recipes to choose among (only 'shipped' reproduces the shipped weights)",
    )
    args = parser.parse_args()
    if args.candidates == "fifth" and args.arena is None:
        parser.error("--candidates fifth: needs --arena (the Arena-Hard-Auto rows it weighs)")

    started = time.monotonic()
    data = corpus.training_rows(args.routellm, args.arena)
    if args.arena is not None:
        print(
            f"Arena-Hard-Auto: {len(data.arena)} training rows, {data.arena_dropped} dropped as "
            "evaluation prompts"
        )
    benchmarks, agent_rows, hashes = data.benchmarks, data.agent, data.hashes
    # The threshold is chosen on the English dev steps (the translations are their copies).
    agent = [r for r in agent_rows if "@" not in r.id]
    rows = data.rows
    corpus.vectorise(rows)
    design = corpus.Design(rows)
    print(f"{len(rows)} rows, {len(design.names)} features; nested {FOLDS}-fold over recipes")
    cv = corpus.cross_validate(design, corpus.CANDIDATE_SETS[args.candidates], FOLDS)
    print_cross_validation(cv, benchmarks)
    recipe = corpus.recipe_named(cv.recipe)
    oof = cv.plain[recipe.name]
    threshold, at_threshold = choose_threshold(
        np.array([oof[r.id] for r in agent]), np.array([r.label for r in agent])
    )
    usable = np.nonzero(corpus.usable_rows(rows, recipe))[0]
    final = corpus.prune(design.named(*design.fit(usable, recipe)), KEEP_WEIGHTS)
    manifest = {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "trainer": "bench/routing_train.py",
        "model": "weighted L2 logistic regression over word, word-pair and character-trigram "
        "features of the latest user message, tool-output words and step structure"
        + (", with dense difficulty markers" if "d:" in recipe.groups else ""),
        "feature_groups": list(recipe.groups),
        "sources": {
            "routellm": {
                "repository": corpus.ROUTELLM_REPO,
                "commit": corpus.ROUTELLM_COMMIT,
                "licence": "Apache-2.0",
                "files_sha256": dict(sorted(hashes.items())),
                "rows": {name: len(b) for name, b in benchmarks.items()},
                "mt_bench_follow_up_rows": len(data.follow_ups) if recipe.follow_ups else 0,
                "label": "strong model (gpt-4-1106-preview) did better than the weak one "
                "(Mixtral-8x7B-Instruct)"
                + (", soft on MT-Bench: sigmoid(judge-score gap)" if recipe.soft_mt_bench else ""),
            },
            **(
                {
                    "arena_hard_auto": {
                        "repository": corpus.ARENA_REPO,
                        "commit": corpus.ARENA_COMMIT,
                        "licence": "Apache-2.0",
                        "files_sha256": dict(sorted(data.arena_hashes.items())),
                        "rows": len(data.arena),
                        "dropped_as_evaluation_prompts": data.arena_dropped,
                        "label": "strong model (gpt-4-1106-preview) graded higher than the weak "
                        "one (Mixtral-8x7B-Instruct) by the GPT-4 judge",
                    }
                }
                if dict(recipe.source_share).get("arena")
                else {}
            ),
            "agent_steps": {
                "file": str(corpus.AGENT_STEPS.relative_to(corpus.ROOT)),
                "sha256": corpus.sha256_file(corpus.AGENT_STEPS),
                "split_used": "dev",
                "rows": len(agent),
                "label": "hard",
            },
            "agent_step_translations": {
                "file": str(corpus.AGENT_TRANSLATIONS.relative_to(corpus.ROOT)),
                "sha256": corpus.sha256_file(corpus.AGENT_TRANSLATIONS),
                "rows": len(agent_rows) - len(agent),
                "languages": sorted({r.id.partition("@")[2] for r in agent_rows if "@" in r.id}),
                "label": "the original dev step's",
            },
        },
        "recipe": recipe.name,
        "recipe_choice": {
            "rule": "highest mean APGR over the three benchmarks, out-of-fold "
            f"({FOLDS}-fold over all training rows)",
            "candidates": {name: round(v, 4) for name, v in cv.overall.items()},
        },
        "source_share": dict(recipe.source_share),
        "tie_weight": recipe.tie_weight,
        "l2": recipe.l2,
        "hard_step_weight": corpus.HARD_STEP_WEIGHT,
        "threshold_choice": {
            "rule": f"best out-of-fold accuracy on agent dev steps with hard->small <= "
            f"{MAX_HARD_TO_SMALL:.0%}",
            **{k: round(v, 4) for k, v in at_threshold.items()},
        },
        "weights_kept": min(KEEP_WEIGHTS, len(final.weights)),
    }
    payload = {
        "bias": final.bias,
        "threshold": threshold,
        "manifest": manifest,
        "weights": final.weights,
    }
    args.out.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n")
    # The out-of-fold scores are the cross-validated scores routing_eval.py reports; kept (not
    # committed) so the evaluation need not refit the same folds.
    corpus.OOF_CACHE.parent.mkdir(parents=True, exist_ok=True)
    corpus.OOF_CACHE.write_text(
        json.dumps(
            {
                "weights_sha256": corpus.sha256_file(args.out),
                "folds": FOLDS,
                "recipe": cv.recipe,
                "scores": cv.scores,
                "plain": cv.plain,
                "chosen_per_fold": cv.chosen_per_fold,
                "inner": cv.inner,
                "overall": cv.overall,
            }
        )
    )
    print(
        f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB, {len(final.weights)} weights); "
        f"threshold {threshold} (out-of-fold agent dev: {at_threshold}); "
        f"{time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
