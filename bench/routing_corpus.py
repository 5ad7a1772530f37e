"""Routing data, training and metrics shared by ``routing_train.py`` and ``routing_eval.py``.

Data sources (nothing third-party is committed; the weights' manifest records file hashes):

- RouteLLM's evaluation files (github.com/lm-sys/RouteLLM, Apache-2.0), directory
  ``routellm/evals/`` at commit ``ROUTELLM_COMMIT``: MT-Bench questions with GPT-4 judge scores
  for gpt-4-1106-preview (strong) and Mixtral-8x7B-Instruct (weak); GSM8K and MMLU with each
  model's correctness. RouteLLM's own contamination lists are applied, as its evaluation does.
  A row's label is "the strong model did better than the weak one".
- The project's labelled agent steps, ``bench/data/routing_steps.jsonl`` (easy/hard). Only its
  ``dev`` split is ever trained or tuned on; ``test`` is scored, never fitted.
- ``bench/data/routing_steps_translated_train.jsonl``: the latest user message of 55 ``dev``
  steps (5 per task class) translated by hand into German, Spanish and Chinese, the rest of the
  step unchanged. A translation shares its original's label and cross-validation fold.

Training is a weighted L2 logistic regression fitted with full-batch Adam in numpy (numpy is
needed to train and evaluate, not to route: the package scores in pure Python).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentguard.routing import extract_features  # noqa: E402
from agentguard.routing.learned import step_vector  # noqa: E402
from agentguard.routing.stage import new_input  # noqa: E402

csv.field_size_limit(1 << 24)

ROUTELLM_REPO = "https://github.com/lm-sys/RouteLLM"
ROUTELLM_COMMIT = "0b64fdafe049e596a3f5657c219329f24af24198"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
AGENT_STEPS = ROOT / "bench" / "data" / "routing_steps.jsonl"
AGENT_TRANSLATIONS = ROOT / "bench" / "data" / "routing_steps_translated_train.jsonl"
TEST_PERCENT = 30
OOF_CACHE = ROOT / "bench" / ".cache" / "routing_oof.json"
FOLDS = 5
BENCHMARKS = ("mt_bench", "gsm8k", "mmlu")
# Each source's share of the training weight: MMLU alone has 14k rows and would drown the rest.
SOURCE_SHARE = {"agent": 0.4, "mt_bench": 0.2, "gsm8k": 0.2, "mmlu": 0.2}
# Within a benchmark a row weighs what routing it right is worth: the gap between the two
# models' quality (MT-Bench judge points; 1 for a question only one model answered right).
# A tie is worth nothing to the ranking but still says "the small model does as well": it keeps
# this much weight.
TIE_WEIGHT = 0.3
# Agent steps that need the larger model weigh this much more than easy ones: sending a hard
# step to the small model costs a failed step, sending an easy one up only costs money.
HARD_STEP_WEIGHT = 1.5


@dataclass
class Row:
    """One labelled routing example.

    Attributes:
        id: unique id (source-prefixed).
        source: ``agent``, ``mt_bench``, ``gsm8k`` or ``mmlu``.
        messages: the chat messages of the step.
        tools: tools offered (agent steps only).
        label: 1 when the step needs the larger model.
        strong: quality of the strong model's answer (judge score or correctness).
        weak: quality of the weak model's answer.
        task_class: the agent step's task class (``""`` for benchmarks).
        split: ``dev`` or ``test`` for agent steps (``dev`` for benchmarks).
        vector: the scorer's feature vector (filled by :func:`vectorise`).
    """

    id: str
    source: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    label: int
    strong: float = 0.0
    weak: float = 0.0
    task_class: str = ""
    split: str = "dev"
    vector: dict[str, float] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The latest user message's text."""
        for message in reversed(self.messages):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                return str(message["content"])
        return ""


# --------------------------------------------------------------------------- loading


class RouteLLMFiles:
    """Reads ``routellm/evals/`` from a RouteLLM checkout or bare git directory, at the pinned
    commit, and records each file's sha256 for the manifest."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self.hashes: dict[str, str] = {}
        self.is_git = (location / "HEAD").is_file() and (location / "objects").is_dir()
        if not self.is_git and not (location / "routellm" / "evals").is_dir():
            raise SystemExit(
                f"--routellm {location}: not a RouteLLM checkout (no routellm/evals) nor a git dir"
            )

    def read(self, path: str) -> str:
        if self.is_git:
            data = subprocess.run(
                ["git", "--git-dir", str(self.location), "show", f"{ROUTELLM_COMMIT}:{path}"],
                check=True,
                capture_output=True,
            ).stdout
        else:
            data = (self.location / path).read_bytes()
        self.hashes[path] = hashlib.sha256(data).hexdigest()
        return data.decode("utf-8")

    def list_dir(self, path: str) -> list[str]:
        if self.is_git:
            out = subprocess.run(
                [
                    "git",
                    "--git-dir",
                    str(self.location),
                    "ls-tree",
                    "--name-only",
                    f"{ROUTELLM_COMMIT}:{path}",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            return sorted(out.split())
        return sorted(p.name for p in (self.location / path).iterdir())


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


def _correct(value: str) -> float:
    return 1.0 if value.strip() == "True" else 0.0


def load_mmlu(files: RouteLLMFiles) -> list[Row]:
    base = "routellm/evals/mmlu/"
    contaminated = {
        r["eval_prompt"] for r in _jsonl(files.read(base + "contaminated_prompts.jsonl"))
    }
    rows: list[Row] = []
    for name in files.list_dir(base + "responses"):
        for record in csv.DictReader(io.StringIO(files.read(base + "responses/" + name))):
            prompt = record["prompt"]
            if prompt in contaminated:
                continue
            strong, weak = _correct(record[STRONG]), _correct(record[WEAK])
            rows.append(
                Row(
                    f"mmlu-{len(rows)}",
                    "mmlu",
                    _user(prompt),
                    None,
                    int(strong > weak),
                    strong,
                    weak,
                    name.removeprefix("mmlu_").removesuffix(".csv"),
                )
            )
    return rows


def load_gsm8k(files: RouteLLMFiles) -> list[Row]:
    base = "routellm/evals/gsm8k/"
    contaminated = {
        r["eval_prompt"] for r in _jsonl(files.read(base + "contaminated_prompts.jsonl"))
    }
    rows: list[Row] = []
    for record in csv.DictReader(io.StringIO(files.read(base + "gsm8k_responses.csv"))):
        prompt = record["prompt"]
        if prompt in contaminated:
            continue
        strong, weak = _correct(record[STRONG]), _correct(record[WEAK])
        rows.append(
            Row(
                f"gsm8k-{len(rows)}", "gsm8k", _user(prompt), None, int(strong > weak), strong, weak
            )
        )
    return rows


def load_mt_bench(files: RouteLLMFiles) -> list[Row]:
    base = "routellm/evals/mt_bench/"
    contaminated = {
        r["eval_prompt"] for r in _jsonl(files.read(base + "contaminated_prompts.jsonl"))
    }
    scores: dict[tuple[int, str], list[float]] = {}
    for record in _jsonl(files.read(base + "judgements.jsonl")):
        scores.setdefault((record["question_id"], record["model"]), []).append(
            float(record["score"])
        )
    rows: list[Row] = []
    for question in _jsonl(files.read(base + "question.jsonl")):
        turns = question["turns"]
        if turns[0] in contaminated or turns[1] in contaminated:
            continue
        qid = question["question_id"]
        strong = sum(scores[(qid, STRONG)]) / len(scores[(qid, STRONG)])
        weak = sum(scores[(qid, WEAK)]) / len(scores[(qid, WEAK)])
        # RouteLLM routes MT-Bench on the first turn only.
        rows.append(
            Row(
                f"mt_bench-{qid}",
                "mt_bench",
                _user(turns[0]),
                None,
                int(strong > weak),
                strong,
                weak,
                question["category"],
            )
        )
    return rows


def split_of(step_id: str) -> str:
    """``test`` for the held-out 30% of agent steps, else ``dev`` (fixed by the id's hash)."""
    digest = int(hashlib.sha256(step_id.encode()).hexdigest(), 16)
    return "test" if digest % 100 < TEST_PERCENT else "dev"


def load_agent_steps(path: Path = AGENT_STEPS) -> list[Row]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        step = json.loads(line)
        hard = step["label"] == "hard"
        rows.append(
            Row(
                step["id"],
                "agent",
                step["messages"],
                step["tools"],
                int(hard),
                float(hard),
                0.0,
                step["task_class"],
                split_of(step["id"]),
            )
        )
    return rows


def load_agent_translations(steps: Sequence[Row], path: Path = AGENT_TRANSLATIONS) -> list[Row]:
    """The hand-translated ``dev`` steps: each a copy of its original with the latest user
    message replaced (id ``<original>@<lang>``). A translation of a ``test`` step is refused."""
    by_id = {row.id: row for row in steps}
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        original = by_id[item["id"]]
        if original.split != "dev":
            raise SystemExit(
                f"{path}:{number}: {item['id']} is a test step; only dev is trained on"
            )
        messages = [dict(m) for m in original.messages]
        for message in reversed(messages):
            if message.get("role") == "user":
                message["content"] = item["content"]
                break
        rows.append(
            Row(
                f"{original.id}@{item['lang']}",
                "agent",
                messages,
                original.tools,
                original.label,
                original.strong,
                original.weak,
                original.task_class,
                "dev",
            )
        )
    return rows


def training_rows(location: Path) -> tuple[dict[str, list[Row]], list[Row], dict[str, str]]:
    """The benchmarks, the agent training rows (``dev`` steps and their translations) and the
    benchmark files' hashes."""
    benchmarks, hashes = load_benchmarks(location)
    dev = [r for r in load_agent_steps() if r.split == "dev"]
    return benchmarks, dev + load_agent_translations(dev), hashes


def load_benchmarks(location: Path) -> tuple[dict[str, list[Row]], dict[str, str]]:
    files = RouteLLMFiles(location)
    data = {"mt_bench": load_mt_bench(files), "gsm8k": load_gsm8k(files), "mmlu": load_mmlu(files)}
    return data, files.hashes


def estimate_tokens(messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None) -> int:
    """Input tokens the router is given for a step, as the pipeline counts them: the new input
    (messages after the last assistant turn; see ``agentguard.routing.stage.new_input``), estimated as
    characters / 4."""
    chars = 0
    for message in new_input(list(messages)):
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
    return max(1, chars // 4)


def vectorise(rows: Iterable[Row]) -> None:
    for row in rows:
        if not row.vector:
            features = extract_features(
                row.messages, row.tools, input_tokens=estimate_tokens(row.messages, row.tools)
            )
            row.vector = step_vector(features)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- training


@dataclass
class Fitted:
    """A trained logistic regression over named features."""

    bias: float
    weights: dict[str, float]

    def log_odds(self, vector: dict[str, float]) -> float:
        get = self.weights.get
        return self.bias + sum(get(k, 0.0) * v for k, v in vector.items())

    def scores(self, rows: Sequence[Row]) -> np.ndarray:
        z = np.array([self.log_odds(r.vector) for r in rows])
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def sample_weights(rows: Sequence[Row]) -> np.ndarray:
    """Each source gets its ``SOURCE_SHARE`` of the weight; within a benchmark, rows weigh the
    quality gap between the two models (``TIE_WEIGHT`` for a tie); hard agent steps weigh
    ``HARD_STEP_WEIGHT``, easy ones 1."""
    raw = np.array(
        [
            (abs(r.strong - r.weak) or TIE_WEIGHT)
            if r.source != "agent"
            else (HARD_STEP_WEIGHT if r.label else 1.0)
            for r in rows
        ]
    )
    sources = np.array([r.source for r in rows])
    present = {s: SOURCE_SHARE[s] for s in set(sources.tolist())}
    total = sum(present.values())
    weights = np.zeros(len(rows))
    for source, share in present.items():
        mask = sources == source
        weights[mask] = raw[mask] * (share / total) / raw[mask].sum() * len(rows)
    return weights


def fit(
    rows: Sequence[Row],
    *,
    l2: float = 3e-4,
    iterations: int = 400,
    rate: float = 0.05,
    min_df: int = 2,
) -> Fitted:
    """Fit the weighted L2 logistic regression on ``rows`` (vectorised)."""
    df: Counter[str] = Counter()
    for row in rows:
        df.update(row.vector.keys())
    names = sorted(k for k, c in df.items() if c >= min_df or k.startswith("s:"))
    index = {name: i for i, name in enumerate(names)}
    cols: list[int] = []
    vals: list[float] = []
    lengths: list[int] = []
    for row in rows:
        kept = [(index[k], v) for k, v in row.vector.items() if k in index]
        lengths.append(len(kept))
        cols.extend(c for c, _ in kept)
        vals.extend(v for _, v in kept)
    col = np.array(cols, dtype=np.int64)
    val = np.array(vals, dtype=np.float64)
    length = np.array(lengths, dtype=np.int64)
    row_of = np.repeat(np.arange(len(rows)), length)
    y = np.array([r.label for r in rows], dtype=np.float64)
    sw = sample_weights(rows)
    sw = sw / sw.sum()
    w = np.zeros(len(names))
    b = 0.0
    m_w = np.zeros_like(w)
    v_w = np.zeros_like(w)
    m_b = v_b = 0.0
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, iterations + 1):
        z = np.bincount(row_of, weights=val * w[col], minlength=len(rows)) + b
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        r = (p - y) * sw
        g_w = np.bincount(col, weights=val * r[row_of], minlength=len(names)) + l2 * w
        g_b = float(r.sum())
        m_w = beta1 * m_w + (1 - beta1) * g_w
        v_w = beta2 * v_w + (1 - beta2) * g_w * g_w
        m_b = beta1 * m_b + (1 - beta1) * g_b
        v_b = beta2 * v_b + (1 - beta2) * g_b * g_b
        correction1 = 1 - beta1**step
        correction2 = 1 - beta2**step
        w -= rate * (m_w / correction1) / (np.sqrt(v_w / correction2) + eps)
        b -= rate * (m_b / correction1) / (math.sqrt(v_b / correction2) + eps)
    return Fitted(float(b), {name: float(w[i]) for i, name in enumerate(names)})


def prune(model: Fitted, keep: int, min_abs: float = 1e-3) -> Fitted:
    """The ``keep`` largest weights (by magnitude), rounded, for a small shipped file."""
    ranked = sorted(
        ((k, v) for k, v in model.weights.items() if abs(v) >= min_abs), key=lambda kv: -abs(kv[1])
    )
    return Fitted(round(model.bias, 4), {k: round(v, 4) for k, v in ranked[:keep]})


def fold_of(row_id: str, folds: int) -> int:
    """The cross-validation fold of a row; a translation (``<id>@<lang>``) shares its
    original's, so no fold is scored on a step whose translation it was trained on."""
    base = row_id.partition("@")[0]
    return int(hashlib.sha256(("fold:" + base).encode()).hexdigest(), 16) % folds


# --------------------------------------------------------------------------- metrics


def pgr_curve(scores: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """PGR after sending the k highest-scored prompts to the strong model, for k = 0..n.

    Ties are broken by position (callers pass a stable order); quality is the mean of the
    chosen model's quality per prompt, as in RouteLLM's evaluation.
    """
    order = np.argsort(-scores, kind="stable")
    gain = (strong - weak)[order]
    quality = weak.sum() + np.concatenate([[0.0], np.cumsum(gain)])
    q_weak, q_strong = weak.sum(), strong.sum()
    return (quality - q_weak) / (q_strong - q_weak)


def apgr(curve: np.ndarray) -> float:
    """Area under the PGR curve over the share of strong calls, 0..1 (trapezoids)."""
    n = len(curve) - 1
    return float((curve.sum() - (curve[0] + curve[-1]) / 2) / n)


def calls_saved(curve: np.ndarray, target: float = 0.95) -> float:
    """Share of calls kept off the strong model at the fewest strong calls reaching ``target``
    PGR (95% of the strong model's gain over the weak one)."""
    n = len(curve) - 1
    reached = np.nonzero(curve >= target - 1e-12)[0]
    return 1.0 - float(reached[0]) / n


def pgr_at(
    scores: np.ndarray, strong: np.ndarray, weak: np.ndarray, threshold: float
) -> dict[str, float]:
    """PGR and the share of strong calls when prompts scoring >= ``threshold`` go strong."""
    up = scores >= threshold
    quality = np.where(up, strong, weak).sum()
    pgr = (quality - weak.sum()) / (strong.sum() - weak.sum())
    return {"pgr": float(pgr), "strong_share": float(up.mean())}


def random_apgr(
    strong: np.ndarray, weak: np.ndarray, draws: int = 200, seed: int = 7
) -> dict[str, float]:
    """Mean APGR and calls saved of random routing."""
    rng = np.random.default_rng(seed)
    areas, saved = [], []
    for _ in range(draws):
        curve = pgr_curve(rng.random(len(strong)), strong, weak)
        areas.append(apgr(curve))
        saved.append(calls_saved(curve))
    return {"apgr": float(np.mean(areas)), "calls_saved_95": float(np.mean(saved))}
