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


def out_of_fold(rows: list[corpus.Row], folds: int) -> dict[str, float]:
    """Scores of every row from a model that did not see it (``folds``-fold)."""
    scores: dict[str, float] = {}
    for fold in range(folds):
        train = [r for r in rows if corpus.fold_of(r.id, folds) != fold]
        held = [r for r in rows if corpus.fold_of(r.id, folds) == fold]
        model = corpus.fit(train)
        scores.update(zip((r.id for r in held), model.scores(held), strict=True))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routellm", type=Path, required=True, help="RouteLLM checkout or git dir")
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args()

    started = time.monotonic()
    benchmarks, agent_rows, hashes = corpus.training_rows(args.routellm)
    # The threshold is chosen on the English dev steps (the translations are their copies).
    agent = [r for r in agent_rows if "@" not in r.id]
    rows = [r for rows in benchmarks.values() for r in rows] + agent_rows
    corpus.vectorise(rows)

    oof = out_of_fold(rows, FOLDS)
    threshold, at_threshold = choose_threshold(
        np.array([oof[r.id] for r in agent]), np.array([r.label for r in agent])
    )
    final = corpus.prune(corpus.fit(rows), KEEP_WEIGHTS)
    manifest = {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "trainer": "bench/routing_train.py",
        "model": "weighted L2 logistic regression over word, word-pair and character-trigram "
        "features of the latest user message, tool-output words and step structure",
        "sources": {
            "routellm": {
                "repository": corpus.ROUTELLM_REPO,
                "commit": corpus.ROUTELLM_COMMIT,
                "licence": "Apache-2.0",
                "files_sha256": dict(sorted(hashes.items())),
                "rows": {name: len(b) for name, b in benchmarks.items()},
                "label": "strong model (gpt-4-1106-preview) did better than the weak one "
                "(Mixtral-8x7B-Instruct)",
            },
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
        "source_share": corpus.SOURCE_SHARE,
        "tie_weight": corpus.TIE_WEIGHT,
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
                "scores": {k: float(v) for k, v in oof.items()},
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
