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
- Optionally (``routing_train.py --arena``), Arena-Hard-Auto's first prompt set
  (github.com/lmarena/arena-hard-auto, Apache-2.0), ``data/arena-bench-v1/`` at commit
  ``ARENA_COMMIT``: 300 open-ended prompts of MT-Bench's kind, each answer graded 1-10 by a
  GPT-4 judge against a reference answer, for the same two models RouteLLM's MT-Bench files
  compare (gpt-4-1106-preview and Mixtral-8x7B-Instruct). Training rows only (source
  ``arena``): never scored, and a prompt that is also an evaluation prompt is dropped.

Training is a weighted L2 logistic regression fitted with full-batch Adam in numpy (numpy is
needed to train and evaluate, not to route: the package scores in pure Python).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import subprocess
import sys
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
ARENA_REPO = "https://github.com/lmarena/arena-hard-auto"
ARENA_COMMIT = "4a705dd6963f777aba2ae79259e3013934e6e012"
ARENA_BASE = "data/arena-bench-v1/"
# The judge's grades of each model's answers (the strong model is filed as gpt-4-turbo).
ARENA_STRONG_FILE = "model_judgment/gpt-4-turbo.jsonl"
ARENA_WEAK_FILE = "model_judgment/Mixtral-8x7B-Instruct-v0.1.jsonl"
AGENT_STEPS = ROOT / "bench" / "data" / "routing_steps.jsonl"
AGENT_TRANSLATIONS = ROOT / "bench" / "data" / "routing_steps_translated_train.jsonl"
TEST_PERCENT = 30
OOF_CACHE = ROOT / "bench" / ".cache" / "routing_oof.json"
# The code that turns a step into its feature vector.
FEATURE_CODE = (
    ROOT / "agentguard" / "routing" / "learned.py",
    ROOT / "agentguard" / "routing" / "__init__.py",
)
# Fold scores per recipe (a rerun with the same rows and recipe reads them instead of refitting).
CV_CACHE = ROOT / "bench" / ".cache" / "routing_cv"
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
        turn: 2 for an MT-Bench follow-up row (a training row only; see
            :func:`load_mt_bench`), else 1.
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
    turn: int = 1
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

    commit = ROUTELLM_COMMIT
    flag = "--routellm"
    required = "routellm/evals"

    def __init__(self, location: Path) -> None:
        self.location = location
        self.hashes: dict[str, str] = {}
        self.is_git = (location / "HEAD").is_file() and (location / "objects").is_dir()
        if not self.is_git and not (location / self.required).is_dir():
            raise SystemExit(
                f"{self.flag} {location}: neither a checkout (no {self.required}) nor a git dir"
            )

    def read(self, path: str) -> str:
        if self.is_git:
            data = subprocess.run(
                ["git", "--git-dir", str(self.location), "show", f"{self.commit}:{path}"],
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
                    f"{self.commit}:{path}",
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


def load_mt_bench(files: RouteLLMFiles) -> tuple[list[Row], list[Row]]:
    """MT-Bench's questions as RouteLLM evaluates them, and their follow-up turns.

    RouteLLM routes a question on its first turn and scores the routed model by the mean of
    its two turns' judge scores: one row per question (``mt_bench-<id>``). The second turn is
    returned apart (``mt_bench-<id>@turn2``: the first turn, a placeholder answer and the
    follow-up, quality = the turn-2 judge scores) as a training row only; the ``@`` puts it in
    its question's cross-validation fold, so no question is scored by a model that saw either
    of its turns.
    """
    base = "routellm/evals/mt_bench/"
    contaminated = {
        r["eval_prompt"] for r in _jsonl(files.read(base + "contaminated_prompts.jsonl"))
    }
    scores: dict[tuple[int, str, int], float] = {}
    for record in _jsonl(files.read(base + "judgements.jsonl")):
        scores[(record["question_id"], record["model"], int(record["turn"]))] = float(
            record["score"]
        )
    rows: list[Row] = []
    follow_ups: list[Row] = []
    for question in _jsonl(files.read(base + "question.jsonl")):
        turns = question["turns"]
        if turns[0] in contaminated or turns[1] in contaminated:
            continue
        qid = question["question_id"]
        strong = (scores[(qid, STRONG, 1)] + scores[(qid, STRONG, 2)]) / 2
        weak = (scores[(qid, WEAK, 1)] + scores[(qid, WEAK, 2)]) / 2
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
        strong_2, weak_2 = scores[(qid, STRONG, 2)], scores[(qid, WEAK, 2)]
        follow_ups.append(
            Row(
                f"mt_bench-{qid}@turn2",
                "mt_bench",
                [
                    *_user(turns[0]),
                    {"role": "assistant", "content": "(answer)"},
                    *_user(turns[1]),
                ],
                None,
                int(strong_2 > weak_2),
                strong_2,
                weak_2,
                question["category"],
                turn=2,
            )
        )
    return rows, follow_ups


class ArenaFiles(RouteLLMFiles):
    """Reads Arena-Hard-Auto's ``data/arena-bench-v1/`` from a checkout or bare git directory,
    at the pinned commit (``ARENA_COMMIT``)."""

    commit = ARENA_COMMIT
    flag = "--arena"
    required = ARENA_BASE


def _normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def _shingles(text: str, size: int = 8) -> set[str]:
    """The text's runs of ``size`` consecutive words (lower case, punctuation dropped)."""
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


# An Arena-Hard-Auto prompt half of whose 8-word runs occur in evaluation prompts is taken for
# a copy of one (reworded punctuation or list marks do not hide it).
OVERLAP_SHARE = 0.5


def load_arena(files: ArenaFiles, evaluation: Iterable[str]) -> tuple[list[Row], int]:
    """Arena-Hard-Auto's first prompt set as training rows, and how many prompts were dropped
    because they are (or contain, or are contained in) an evaluation prompt, or share half
    their 8-word runs with evaluation prompts.

    Each prompt's judge scores (1-10, GPT-4 against a reference answer) for the strong and the
    weak model give the row's quality, labelled as MT-Bench's rows are: "the strong model did
    better". A prompt either model's grade is missing for is left out.
    """
    scores: dict[str, dict[str, float]] = {}
    for name in (ARENA_STRONG_FILE, ARENA_WEAK_FILE):
        for record in _jsonl(files.read(ARENA_BASE + name)):
            if record["score"] is not None:
                scores.setdefault(record["model"], {})[record["question_id"]] = float(
                    record["score"]
                )
    strong_scores, weak_scores = scores[STRONG], scores[WEAK]
    seen = [_normalised(text) for text in evaluation]
    exact = set(seen)
    runs = set().union(*(_shingles(text) for text in seen))
    rows: list[Row] = []
    dropped = 0
    for question in _jsonl(files.read(ARENA_BASE + "question.jsonl")):
        qid = question["question_id"]
        if qid not in strong_scores or qid not in weak_scores:
            continue
        prompt = question["turns"][0]
        text = _normalised(prompt)
        own = _shingles(text)
        copied = bool(own) and len(own & runs) >= OVERLAP_SHARE * len(own)
        if copied or text in exact or any(text in other or other in text for other in seen):
            dropped += 1
            continue
        strong, weak = strong_scores[qid], weak_scores[qid]
        rows.append(
            Row(f"arena-{qid}", "arena", _user(prompt), None, int(strong > weak), strong, weak)
        )
    return rows, dropped


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


@dataclass
class Corpus:
    """Everything the scorer is trained and evaluated on.

    Attributes:
        benchmarks: RouteLLM's benchmarks as RouteLLM evaluates them, by name.
        follow_ups: MT-Bench's second turns (training rows for recipes that use them).
        agent: the agent ``dev`` steps and their translations.
        hashes: sha256 of every RouteLLM file read.
        arena: Arena-Hard-Auto's training rows (empty unless asked for).
        arena_hashes: sha256 of every Arena-Hard-Auto file read.
        arena_dropped: Arena-Hard-Auto prompts dropped as evaluation prompts.
    """

    benchmarks: dict[str, list[Row]]
    follow_ups: list[Row]
    agent: list[Row]
    hashes: dict[str, str]
    arena: list[Row] = field(default_factory=list)
    arena_hashes: dict[str, str] = field(default_factory=dict)
    arena_dropped: int = 0

    @property
    def rows(self) -> list[Row]:
        """All rows, benchmarks first."""
        return (
            [r for b in self.benchmarks.values() for r in b]
            + self.follow_ups
            + self.agent
            + self.arena
        )


def training_rows(location: Path, arena: Path | None = None) -> Corpus:
    """The benchmarks, MT-Bench's follow-up turns, the agent training rows (``dev`` steps and
    their translations), Arena-Hard-Auto's rows when ``arena`` is given, and the files'
    hashes."""
    files = RouteLLMFiles(location)
    mt_bench, follow_ups = load_mt_bench(files)
    benchmarks = {"mt_bench": mt_bench, "gsm8k": load_gsm8k(files), "mmlu": load_mmlu(files)}
    dev = [r for r in load_agent_steps() if r.split == "dev"]
    data = Corpus(benchmarks, follow_ups, dev + load_agent_translations(dev), files.hashes)
    if arena is not None:
        arena_files = ArenaFiles(arena)
        # Every turn of every MT-Bench question (contaminated ones too), GSM8K and MMLU.
        evaluation = [
            t
            for q in _jsonl(files.read("routellm/evals/mt_bench/question.jsonl"))
            for t in q["turns"]
        ]
        evaluation += [r.prompt for name in ("gsm8k", "mmlu") for r in benchmarks[name]]
        data.arena, data.arena_dropped = load_arena(arena_files, evaluation)
        data.arena_hashes = arena_files.hashes
    return data


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


# Feature groups (prefixes of the names ``step_vector`` gives): word, word-pair, character
# and tool-output n-grams and the step's structure; ``d:`` adds the dense difficulty markers.
NGRAM_GROUPS = ("w:", "b:", "c:", "t:", "s:")
DENSE_GROUPS = (*NGRAM_GROUPS, "d:")
# Structure and difficulty markers only: no vocabulary of any source.
DENSE_ONLY_GROUPS = ("s:", "d:")


@dataclass(frozen=True)
class Recipe:
    """How the training rows become targets and weights.

    Attributes:
        name: how the manifest and the results name it.
        follow_ups: train on MT-Bench's second turns too.
        soft_mt_bench: MT-Bench rows get a soft target, ``sigmoid(judge-score gap)``, and
            weight 1 each (a tie is 0.5), instead of "the strong model did better" weighted by
            the gap.
        source_share: each source's share of the training weight.
        tie_weight: weight of a benchmark row where both models did as well.
        l2: the L2 penalty.
        groups: the feature groups (name prefixes of ``step_vector``'s features) the model
            may use; the others get no weight.
        l2_dense: the L2 penalty of the structure and difficulty-marker features (``s:``,
            ``d:``); ``None``: ``l2``, as for the vocabulary.
        blend: names of recipes whose fitted models are averaged (their log-odds, weight by
            weight: a blend of linear models is one linear model, so the shipped scorer and its
            cost do not change); empty for a model fitted on its own. A blend's other fields
            are unused.
    """

    name: str
    follow_ups: bool = False
    soft_mt_bench: bool = False
    source_share: tuple[tuple[str, float], ...] = tuple(SOURCE_SHARE.items())
    tie_weight: float = TIE_WEIGHT
    l2: float = 3e-4
    groups: tuple[str, ...] = NGRAM_GROUPS
    l2_dense: float | None = None
    blend: tuple[str, ...] = ()


# The recipes the trainer chooses among, by cross-validation inside its training rows (nested:
# the choice for a test fold never sees that fold). The others below were each fixed before
# they were scored and are kept for the record, not run; with their measured numbers in the
# README's routing notes. A first set: MT-Bench's follow-up turns as training rows, soft
# MT-Bench targets, MT-Bench's share raised to 0.35, other L2 penalties and tie weights. A
# second: the dense difficulty markers (``d:``) next to the n-grams; the same with L2 1e-4 and
# with ties weighted 0.6; structure and markers alone. A third, fixed after the second had been
# scored: markers with L2 2e-4, and with structure and markers penalised ten times less than
# the vocabulary. None met every target with the shipped threshold rule, so the plain recipe
# stays the one trained.
RECIPES = (Recipe("gap_weighted"),)
# A fourth set, fixed before any of it was scored, after the three above: one scorer serves
# two populations, so a recipe that ranks the benchmarks better can still move the agent
# steps' threshold where the savings trace's routine steps go up. Averaging a sharper model's
# log-odds with the shipped recipe's keeps part of each; weighting the benchmarks more
# lets them shape the text ranking. The markers with L2 1e-4 are the earlier best on MT-Bench
# (scored again here as a component). Scored with nested cross-validation over these five
# (``routing_train.py --candidates fourth``): the trainer's choice, the markers with the
# benchmarks weighted more, lifts MT-Bench within its noise and moves the default threshold to
# 0.38, where every call of the savings trace goes to the large model; the blends keep the
# trace's savings but are not the choice. Nothing from this set is shipped (README, routing
# notes).
FOURTH_SET = (
    Recipe("gap_weighted"),
    Recipe("gap_weighted_dense_l2_1e-4", groups=DENSE_GROUPS, l2=1e-4),
    Recipe(
        "blend_gap_weighted_dense_l2_1e-4", blend=("gap_weighted", "gap_weighted_dense_l2_1e-4")
    ),
    Recipe(
        "dense_l2_1e-4_benchmarks_0.25",
        groups=DENSE_GROUPS,
        l2=1e-4,
        source_share=(("agent", 0.25), ("mt_bench", 0.25), ("gsm8k", 0.25), ("mmlu", 0.25)),
    ),
    Recipe(
        "blend_gap_weighted_dense_l2_1e-4_benchmarks_0.25",
        blend=("gap_weighted", "dense_l2_1e-4_benchmarks_0.25"),
    ),
)
# A fifth set, fixed and committed before any of it was scored: training rows of MT-Bench's own
# kind, which the sets above lacked. Arena-Hard-Auto's first prompt set (``--arena``; see the
# module's docstring) grades the same two models on 300 open-ended prompts; the shipped recipe
# with those rows at a tenth and at a quarter of the weight next to the shipped shares, and the
# log-odds mean of the shipped recipe and the quarter-weight one. Scored with nested
# cross-validation (``routing_train.py --arena PATH --candidates fifth``): the rows lower
# MT-Bench (plain 5-fold 0.604 and 0.574 against the shipped 0.641); the trainer keeps the
# shipped recipe in four folds of five, nested 0.611 / 0.625 / 0.625. Nothing from this set is
# shipped (README, routing notes).
ARENA_SHARE_LOW = (*SOURCE_SHARE.items(), ("arena", 0.1))
ARENA_SHARE_HIGH = (*SOURCE_SHARE.items(), ("arena", 0.25))
FIFTH_SET = (
    Recipe("gap_weighted"),
    Recipe("gap_weighted_arena_0.1", source_share=ARENA_SHARE_LOW),
    Recipe("gap_weighted_arena_0.25", source_share=ARENA_SHARE_HIGH),
    Recipe("blend_gap_weighted_arena_0.25", blend=("gap_weighted", "gap_weighted_arena_0.25")),
)
# Candidate sets the trainer can be asked to choose among (``routing_train.py --candidates``);
# only ``shipped`` trains the shipped weights. ``fifth`` needs ``--arena``.
CANDIDATE_SETS = {"shipped": RECIPES, "fourth": FOURTH_SET, "fifth": FIFTH_SET}
EARLIER_RECIPES = (
    Recipe("gap_weighted_dense", groups=DENSE_GROUPS),
    Recipe("gap_weighted_dense_ties_0.6", groups=DENSE_GROUPS, tie_weight=0.6),
    Recipe("dense_only", groups=DENSE_ONLY_GROUPS),
    Recipe("gap_weighted_dense_l2_2e-4", groups=DENSE_GROUPS, l2=2e-4),
    Recipe("gap_weighted_dense_light_structure", groups=DENSE_GROUPS, l2_dense=3e-5),
    Recipe("gap_weighted_l2_1e-3", l2=1e-3),
    Recipe("gap_weighted_l2_1e-4", l2=1e-4),
    Recipe("gap_weighted_ties_0.1", tie_weight=0.1),
    Recipe("gap_weighted_follow_ups", follow_ups=True),
    Recipe("soft_follow_ups", follow_ups=True, soft_mt_bench=True),
    Recipe(
        "gap_weighted_follow_ups_mt_bench_0.35",
        follow_ups=True,
        source_share=(("agent", 0.35), ("mt_bench", 0.35), ("gsm8k", 0.15), ("mmlu", 0.15)),
    ),
)


def recipe_named(name: str) -> Recipe:
    """The recipe called ``name``."""
    for recipe in (*RECIPES, *FOURTH_SET, *FIFTH_SET, *EARLIER_RECIPES):
        if recipe.name == name:
            return recipe
    raise SystemExit(f"unknown training recipe {name!r}; known: {[r.name for r in RECIPES]}")


def targets_and_weights(rows: Sequence[Row], recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """Each row's target (0..1) and training weight under ``recipe``.

    Each source gets its share of the weight; within a benchmark, rows weigh the quality gap
    between the two models (``TIE_WEIGHT`` for a tie) unless MT-Bench's targets are soft; hard
    agent steps weigh ``HARD_STEP_WEIGHT``, easy ones 1.
    """
    targets = np.zeros(len(rows))
    raw = np.zeros(len(rows))
    for i, r in enumerate(rows):
        gap = r.strong - r.weak
        if r.source == "agent":
            targets[i], raw[i] = r.label, HARD_STEP_WEIGHT if r.label else 1.0
        elif r.source == "mt_bench" and recipe.soft_mt_bench:
            targets[i], raw[i] = 1.0 / (1.0 + math.exp(-gap)), 1.0
        else:
            targets[i], raw[i] = r.label, abs(gap) or recipe.tie_weight
    sources = np.array([r.source for r in rows])
    share = dict(recipe.source_share)
    # A source the recipe gives no share (Arena-Hard-Auto's rows for most recipes) weighs 0.
    present = {s: share.get(s, 0.0) for s in set(sources.tolist())}
    total = sum(present.values())
    weights = np.zeros(len(rows))
    for source, part in present.items():
        if part:
            mask = sources == source
            weights[mask] = raw[mask] * (part / total) / raw[mask].sum()
    return targets, weights


@dataclass
class Fitted:
    """A trained logistic regression over named features."""

    bias: float
    weights: dict[str, float]


class Design:
    """The rows' sparse feature matrix, built once; any subset of rows can be fitted and any
    scored without rebuilding it.

    Args:
        rows: vectorised rows.
    """

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = list(rows)
        self.names = sorted({k for r in rows for k in r.vector})
        index = {name: i for i, name in enumerate(self.names)}
        self.lengths = np.fromiter((len(r.vector) for r in rows), np.int64, len(rows))
        nnz = int(self.lengths.sum())
        self.col = np.fromiter((index[k] for r in rows for k in r.vector), np.int64, nnz)
        self.val = np.fromiter((v for r in rows for v in r.vector.values()), np.float32, nnz)
        # Structure and dense markers are kept however rare (they are not vocabulary).
        self.structural = np.array([name.startswith(("s:", "d:")) for name in self.names])
        self.position = {r.id: i for i, r in enumerate(rows)}

    def _slice(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Columns, values and (local) row numbers of the chosen rows' entries."""
        mask = np.zeros(len(self.rows), dtype=bool)
        mask[chosen] = True
        entries = np.repeat(mask, self.lengths)
        row_of = np.repeat(np.arange(len(chosen)), self.lengths[np.sort(chosen)])
        return self.col[entries], self.val[entries], row_of

    def fit(
        self,
        chosen: np.ndarray,
        recipe: Recipe,
        *,
        iterations: int = 400,
        rate: float = 0.05,
        min_df: int = 2,
    ) -> tuple[float, np.ndarray]:
        """Fit the weighted L2 logistic regression on the ``chosen`` rows (full-batch Adam);
        returns the bias and a weight per feature name (0 for features not kept). A blend is
        the mean of its recipes' fits."""
        if recipe.blend:
            parts = [
                self.fit(
                    chosen, recipe_named(name), iterations=iterations, rate=rate, min_df=min_df
                )
                for name in recipe.blend
            ]
            return (
                float(np.mean([bias for bias, _ in parts])),
                np.mean([weights for _, weights in parts], axis=0),
            )
        chosen = np.sort(chosen)
        col, val, row_of = self._slice(chosen)
        present, df = np.unique(col, return_counts=True)
        allowed = np.array([name.startswith(recipe.groups) for name in self.names])
        kept = present[((df >= min_df) | self.structural[present]) & allowed[present]]
        local = np.full(len(self.names), -1, dtype=np.int64)
        local[kept] = np.arange(len(kept))
        col = local[col]
        keep = col >= 0
        col, val, row_of = col[keep], val[keep], row_of[keep]
        row_starts = np.searchsorted(row_of, np.arange(len(chosen)))
        order = np.argsort(col, kind="stable")
        col_sorted, val_sorted, row_sorted = col[order], val[order], row_of[order]
        col_starts = np.searchsorted(col_sorted, np.arange(len(kept)))
        penalty = np.full(len(kept), recipe.l2)
        if recipe.l2_dense is not None:
            penalty[self.structural[kept]] = recipe.l2_dense
        y, sw = targets_and_weights([self.rows[i] for i in chosen], recipe)
        sw = sw / sw.sum()
        w = np.zeros(len(kept))
        b = 0.0
        m_w = np.zeros_like(w)
        v_w = np.zeros_like(w)
        m_b = v_b = 0.0
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for step in range(1, iterations + 1):
            z = np.add.reduceat(val * w.astype(np.float32)[col], row_starts) + b
            p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
            r = ((p - y) * sw).astype(np.float32)
            g_w = np.add.reduceat(val_sorted * r[row_sorted], col_starts) + penalty * w
            g_b = float(r.sum())
            m_w = beta1 * m_w + (1 - beta1) * g_w
            v_w = beta2 * v_w + (1 - beta2) * g_w * g_w
            m_b = beta1 * m_b + (1 - beta1) * g_b
            v_b = beta2 * v_b + (1 - beta2) * g_b * g_b
            correction1 = 1 - beta1**step
            correction2 = 1 - beta2**step
            w -= rate * (m_w / correction1) / (np.sqrt(v_w / correction2) + eps)
            b -= rate * (m_b / correction1) / (math.sqrt(v_b / correction2) + eps)
        weights = np.zeros(len(self.names))
        weights[kept] = w
        return float(b), weights

    def scores(self, chosen: np.ndarray, bias: float, weights: np.ndarray) -> np.ndarray:
        """The fitted model's probability for each of the ``chosen`` rows, in their order."""
        order = np.argsort(chosen, kind="stable")
        col, val, row_of = self._slice(chosen)
        z = np.bincount(row_of, weights=val * weights[col], minlength=len(chosen)) + bias
        result = np.empty(len(chosen))
        result[order] = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        return result

    def named(self, bias: float, weights: np.ndarray) -> Fitted:
        """The fitted model with its weights by feature name (zeros left out)."""
        nonzero = np.nonzero(weights)[0]
        return Fitted(bias, {self.names[i]: float(weights[i]) for i in nonzero})


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


# --------------------------------------------------------------------------- cross-validation


def selection_score(rows: Sequence[Row], scores: dict[str, float]) -> float:
    """What the trainer maximises when it chooses a recipe: the mean APGR over the benchmarks,
    on the benchmark rows (first turns) that have a score."""
    areas = []
    for name in BENCHMARKS:
        chosen = [r for r in rows if r.source == name and r.turn == 1 and r.id in scores]
        if chosen:
            curve = pgr_curve(
                np.array([scores[r.id] for r in chosen]),
                np.array([r.strong for r in chosen]),
                np.array([r.weak for r in chosen]),
            )
            areas.append(apgr(curve))
    return float(np.mean(areas))


@dataclass
class CrossValidation:
    """Nested cross-validation of the whole training procedure (choose a recipe, then fit).

    For each test fold the recipe is chosen by cross-validation over the other folds only
    (inner fold ``j`` scored by a model fitted without folds ``k`` and ``j``), then the fold is
    scored by that recipe fitted on the other folds: no row's score, nor the choice of recipe
    behind it, ever saw the row.

    Attributes:
        recipe: the recipe chosen for the shipped model (by plain k-fold over all rows).
        scores: every row's nested out-of-fold score (follow-up rows left out).
        plain: per recipe, every row's plain out-of-fold score.
        chosen_per_fold: the recipe each test fold was scored with.
        inner: per test fold, each recipe's selection score on the other folds.
        overall: each recipe's selection score on the plain out-of-fold scores.
    """

    recipe: str
    scores: dict[str, float]
    plain: dict[str, dict[str, float]]
    chosen_per_fold: list[str]
    inner: list[dict[str, float]]
    overall: dict[str, float]


def usable_rows(rows: Sequence[Row], recipe: Recipe) -> np.ndarray:
    """Which rows ``recipe`` trains on: first turns (and follow-ups if it uses them) of the
    sources it gives a share of the weight."""
    share = dict(recipe.source_share)
    return np.array(
        [(recipe.follow_ups or r.turn == 1) and share.get(r.source, 0.0) > 0 for r in rows]
    )


def _cache_key(recipe: Recipe) -> str:
    """The recipe as its stored fold scores are keyed: its ``repr`` without ``l2_dense`` and
    ``blend`` when unset (so adding the fields kept the earlier recipes' scores)."""
    key = repr(recipe).replace(", blend=()", "")
    if recipe.l2_dense is None:
        return key.replace(", l2_dense=None", "")
    return key


def _blended(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Scores of the mean of several linear models, from each one's scores (mean log-odds)."""
    result = {}
    for rid in parts[0]:
        log_odds = [math.log(max(p[rid], 1e-13) / max(1 - p[rid], 1e-13)) for p in parts]
        result[rid] = 1.0 / (1.0 + math.exp(-sum(log_odds) / len(log_odds)))
    return result


def cross_validate(
    design: Design, recipes: Sequence[Recipe], folds: int, log: Any = print
) -> CrossValidation:
    """Run the nested cross-validation (``15`` fits per recipe for 5 folds; none for a blend
    of recipes already fitted)."""
    rows = design.rows
    ids = [r.id for r in rows]
    fold = np.array([fold_of(r.id, folds) for r in rows])
    plain: dict[str, dict[str, float]] = {}
    paired: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
    # The rows and the code that turns them into features: a changed feature invalidates the
    # stored fold scores.
    fingerprint = hashlib.sha256(
        json.dumps(
            [
                folds,
                [(r.id, r.label, r.strong, r.weak) for r in rows],
                [sha256_file(path) for path in FEATURE_CODE],
                design.names,
            ]
        ).encode()
    ).hexdigest()
    # A blend's fold scores come from its recipes' (each fitted once, whether or not it is a
    # candidate itself).
    fitted: list[Recipe] = []
    for recipe in recipes:
        for part in (*map(recipe_named, recipe.blend), recipe):
            if part.name not in {r.name for r in fitted}:
                fitted.append(part)
    for recipe in fitted:
        if recipe.blend:
            plain[recipe.name] = _blended([plain[name] for name in recipe.blend])
            paired[recipe.name] = {
                key: _blended([paired[name][key] for name in recipe.blend])
                for key in paired[recipe.blend[0]]
            }
            continue
        stored = (
            CV_CACHE
            / f"{hashlib.sha256((_cache_key(recipe) + fingerprint).encode()).hexdigest()}.json"
        )
        if stored.exists():
            saved = json.loads(stored.read_text())
            plain[recipe.name] = saved["plain"]
            paired[recipe.name] = {
                (int(key.split(",")[0]), int(key.split(",")[1])): value
                for key, value in saved["paired"].items()
            }
            log(f"  {recipe.name}: fold scores from {stored.relative_to(ROOT)}")
            continue
        usable = usable_rows(rows, recipe)
        plain[recipe.name] = {}
        paired[recipe.name] = {}
        for k in range(folds):
            held = np.nonzero(fold == k)[0]
            bias, weights = design.fit(np.nonzero(usable & (fold != k))[0], recipe)
            plain[recipe.name].update(
                zip(
                    (ids[i] for i in held), design.scores(held, bias, weights).tolist(), strict=True
                )
            )
            log(f"  {recipe.name}: fold {k} fitted")
        for k in range(folds):
            for j in range(k + 1, folds):
                train = np.nonzero(usable & (fold != k) & (fold != j))[0]
                bias, weights = design.fit(train, recipe)
                for test, other in ((j, k), (k, j)):
                    held = np.nonzero(fold == test)[0]
                    paired[recipe.name][(other, test)] = dict(
                        zip(
                            (ids[i] for i in held),
                            design.scores(held, bias, weights).tolist(),
                            strict=True,
                        )
                    )
            log(f"  {recipe.name}: inner folds of test fold {k} fitted")
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(
            json.dumps(
                {
                    "plain": plain[recipe.name],
                    "paired": {f"{k},{j}": v for (k, j), v in paired[recipe.name].items()},
                }
            )
        )
    names = [recipe.name for recipe in recipes]
    inner: list[dict[str, float]] = []
    chosen: list[str] = []
    nested: dict[str, float] = {}
    for k in range(folds):
        criteria = {}
        for name in names:
            pooled: dict[str, float] = {}
            for j in range(folds):
                if j != k:
                    pooled.update(paired[name][(k, j)])
            criteria[name] = selection_score(rows, pooled)
        inner.append(criteria)
        # Ties go to the earlier (simpler) recipe.
        best = max(names, key=lambda name: (criteria[name], -names.index(name)))
        chosen.append(best)
        nested.update({rid: plain[best][rid] for rid, f in zip(ids, fold, strict=True) if f == k})
    overall = {name: selection_score(rows, plain[name]) for name in names}
    final = max(names, key=lambda name: (overall[name], -names.index(name)))
    turn_one = {r.id for r in rows if r.turn == 1}
    return CrossValidation(
        recipe=final,
        scores={k: v for k, v in nested.items() if k in turn_one},
        plain={name: {k: v for k, v in s.items() if k in turn_one} for name, s in plain.items()},
        chosen_per_fold=chosen,
        inner=inner,
        overall=overall,
    )


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
