"""The learned step scorer: a logistic regression over word and character n-grams of the task
plus the step's structure, shipped as a small JSON file next to this module.

``score`` is the probability that the step needs the larger model. The features are computed in
pure Python from a bounded slice of the step (the head of the latest user message and of the
tool results it digests), so scoring costs a fraction of a millisecond whatever the context
size. The weights are trained by ``bench/routing_train.py`` (data sources and hashes in
``weights.json``'s ``manifest``); this module only reads them.

Character n-grams carry the signal across languages and spellings that word features miss
(Chinese, Japanese and Korean text is read a character at a time, so its pairs are character
bigrams); the structural features (a tool result being digested, a failure it reports, code,
numbers, size) say what words cannot. Three agent-session facts that no training text carries
are applied as fixed log-odds on top of the model: a failed or escalated previous step, and a
routine step deep in a session (digesting one or two clean tool results once the plan is made:
the task text it repeats was already acted on).
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentguard.routing.features import Classification, Label, StepFeatures

__all__ = ["LearnedClassifier", "ScorerModel", "is_routine_step", "load_model", "step_vector"]

WEIGHTS_PATH = Path(__file__).with_name("weights.json")

# How much of a step the scorer reads: the instruction is at the start of a user message, so
# the head carries the signal; a bound keeps the cost flat for huge pastes.
_MAX_WORDS = 250
_MAX_CHARS = 1000
_MAX_TOOL_WORDS = 120
_WORD = re.compile(r"\w+")
# Chinese, Japanese and Korean script is written without spaces: each character is a token of its
# own (pairs of neighbours then give character bigrams), everything else splits into words.
_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK = re.compile(f"[{_CJK_RANGES}]")
_TOKEN = re.compile(f"[{_CJK_RANGES}]|[^\\W{_CJK_RANGES}]+")
# A CJK character carries about as much as three letters of a European language, so size
# features count it three times: a translated step keeps the size of its original.
_CJK_CHAR_WEIGHT = 3
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")

# Log-odds added for what happened in the session before this step.
PREVIOUS_FAILED_LOG_ODDS = 1.5
PREVIOUS_ESCALATED_LOG_ODDS = 1.0
# A routine step: from this many model calls into a session, digesting fewer than
# ROUTINE_MAX_RESULTS tool results none of which reports a failure, after a step that went well.
ROUTINE_AFTER_STEPS = 2
ROUTINE_MAX_RESULTS = 3
ROUTINE_LOG_ODDS = -3.0


def _bucket(value: int, cap: int) -> int:
    """``log2(1 + value)`` rounded down and capped: size features in a few coarse bins."""
    return min(cap, (value + 1).bit_length() - 1)


def step_vector(features: StepFeatures, *, markers: bool = True) -> dict[str, float]:
    """The sparse feature vector of a step: feature name -> value.

    Groups: ``w:`` words, ``b:`` word pairs and ``c:`` character trigrams of the latest user
    message's head (a CJK character counts as a word, so CJK pairs are character bigrams);
    ``t:`` words of the tool results being digested; ``s:`` structure; ``d:`` dense difficulty
    markers of the task (see ``_add_difficulty``). Each n-gram group is scaled to unit length
    so a long text does not outvote a short one.

    Args:
        features: the step.
        markers: compute the ``d:`` group (a model without weights for it skips the work).
    """
    vector: dict[str, float] = {}
    text = features.text
    lowered = text[: _MAX_CHARS * 4].lower()
    words = _TOKEN.findall(lowered)[:_MAX_WORDS]
    pairs = [a + " " + b for a, b in pairwise(words)]
    if words:
        _add_group(vector, {"w:" + word for word in words})
        _add_group(vector, {"b:" + pair for pair in pairs})
    squeezed = " " + " ".join(lowered[:_MAX_CHARS].split()) + " "
    if len(squeezed) > 3:
        grams = {"c:" + squeezed[i : i + 3] for i in range(len(squeezed) - 2)}
        _add_group(vector, grams)
    if features.tool_text:
        tool_words = _WORD.findall(features.tool_text[: _MAX_CHARS * 4].lower())[:_MAX_TOOL_WORDS]
        _add_group(vector, {"t:" + word for word in tool_words})
    cjk = len(_CJK.findall(text[: _MAX_CHARS * 4]))
    chars = len(text) + (_CJK_CHAR_WEIGHT - 1) * cjk
    _add_structure(vector, features, chars, len(words))
    if markers:
        _add_difficulty(vector, lowered[:_MAX_CHARS], words, pairs, cjk)
    return vector


def _add_group(vector: dict[str, float], names: set[str]) -> None:
    if not names:
        return
    value = 1.0 / math.sqrt(len(names))
    for name in names:
        vector[name] = value


def _add_structure(
    vector: dict[str, float], features: StepFeatures, chars: int, words: int
) -> None:
    text = features.text
    vector["s:log_chars"] = math.log1p(chars) / 8
    vector[f"s:chars:{_bucket(chars, 14)}"] = 1.0
    vector[f"s:words:{_bucket(words, 9)}"] = 1.0
    vector[f"s:lines:{_bucket(text.count(chr(10)), 6)}"] = 1.0
    vector[f"s:numbers:{_bucket(len(_NUMBER.findall(text[: _MAX_CHARS * 4])), 6)}"] = 1.0
    vector["s:log_tokens"] = math.log1p(features.input_tokens) / 10
    if "?" in text:
        vector["s:question"] = 1.0
    for signal in features.code_signals:
        vector["s:code:" + signal] = 1.0
    if "notation" in features.math_signals:
        vector["s:math_notation"] = 1.0
    if features.digesting_tool_result:
        vector["s:tool_result"] = 1.0
        vector[f"s:tool_batch:{min(features.tool_results_in_batch, 4)}"] = 1.0
        vector[f"s:tool_chars:{_bucket(len(features.tool_text), 14)}"] = 1.0
    for signal in features.tool_code_signals:
        vector["s:tool_fail:" + signal] = 1.0
    if features.has_tools:
        vector["s:tools_offered"] = 1.0
    if features.file_mentions:
        vector[f"s:files:{min(features.file_mentions, 4)}"] = 1.0
    if features.has_images:
        vector["s:images"] = 1.0


# Markers of what a task demands, read from the head of the latest user message. Each is a
# dense feature (``d:`` group) that means the same on any benchmark or agent step: maths, code,
# constraints on the answer, several parts to do, a format to follow, reasoning asked for, a
# fact looked up. A model trained only on n-grams learns one source's vocabulary; these carry
# across sources. Words and word pairs are looked up in one table (no pass over the text per
# marker), symbols are found by one pattern.
_MARKER_TERMS = {
    "math": "calculate calculated calculating calculation compute computed computing solve "
    "solving equation equations probability probabilities integral derivative prove proof sum "
    "product percent percentage ratio average total remainder divisible prime geometry algebra "
    "how_many how_much how_long how_far",
    "code": "def class function return import const var lambda sql python javascript java "
    "rust regex algorithm implement implementation program programming compile debug bug api "
    "json array string recursion complexity code script",
    "constraint": "must exactly only ensure never always each every limit within strictly "
    "keep avoid without at_least at_most no_more no_less do_not don't",
    "parts": "then also additionally first firstly second secondly finally afterwards next "
    "both respectively",
    "format": "table list bullet bullets format formatted csv markdown yaml sentence sentences "
    "paragraph paragraphs words poem essay email letter story title outline summary summarize "
    "summarise rewrite translate rhyme rhyming tone style",
    "reasoning": "explain explanation why reason reasoning analyze analyse analysis compare "
    "contrast evaluate evaluation justify derive critique pros cons tradeoff tradeoffs "
    "implications design plan strategy strategies optimize optimise argue assess infer "
    "step_by",
    "lookup": "capital_of stands_for definition_of synonym antonym define",
}
_MARKER_OF = {
    term.replace("_", " "): name for name, terms in _MARKER_TERMS.items() for term in terms.split()
}
_LOOKUP_OPENERS = frozenset(
    ["what", "who", "when", "where", "which", "name", "list", "define", "is", "are", "does", "do"]
)
# Symbols: arithmetic between digits and maths signs; code punctuation; list items and
# questions (each is a part to answer).
_ARITHMETIC = re.compile(r"\d\s*[-+*/^=×÷]\s*\d")
_MATH_SIGNS = ("=", "<", ">", "≤", "≥", "√", "∑", "∫", "π", "%")
_CODE_SIGNS = ("```", "{", "};", "()", "=>", "->", "==", "!=")
_LIST_ITEM = re.compile(r"(?:^|\n)[ \t]*(?:\d+[.)]|[-*•])\s")
_SENTENCE_END = re.compile(r"[.!?。！？](?:\s|$)")


def _add_difficulty(
    vector: dict[str, float], text: str, words: list[str], pairs: list[str], cjk: int
) -> None:
    """The ``d:`` group: dense, source-independent difficulty markers of the task, each in
    0..1 (a count of marker hits saturating at 4, and shape: sentences, word length, rare long
    words, vocabulary variety). ``cjk``: CJK characters in the message."""
    if not words:
        return
    hits = dict.fromkeys(_MARKER_TERMS, 0)
    marker_of = _MARKER_OF.get
    for term in (*words, *pairs):
        if (name := marker_of(term)) is not None:
            hits[name] += 1
    hits["math"] += len(_ARITHMETIC.findall(text)) + sum(map(text.count, _MATH_SIGNS))
    hits["code"] += sum(map(text.count, _CODE_SIGNS))
    hits["parts"] += len(_LIST_ITEM.findall(text)) + text.count("?")
    if words[0] in _LOOKUP_OPENERS:
        hits["lookup"] += 1
    for name, count in hits.items():
        if count:
            vector["d:" + name] = min(count, 4) / 4
    # Word length means little in a script written a character at a time.
    if not cjk:
        vector["d:word_length"] = min(sum(map(len, words)) / len(words), 10) / 10
        long_words = sum(len(word) >= 10 for word in words)
        if long_words:
            vector["d:long_words"] = long_words / len(words)
    vector["d:sentences"] = min(len(_SENTENCE_END.findall(text)) + 1, 16) / 16
    vector["d:variety"] = len(set(words)) / len(words)


@dataclass(frozen=True, slots=True)
class ScorerModel:
    """A trained scorer: a bias, weights by feature name, and the threshold it ships with.

    Attributes:
        bias: log-odds of a step with no features.
        weights: feature name -> log-odds weight.
        threshold: the default decision threshold (set at training time; see ``manifest``).
        manifest: where the training data came from, with hashes, and how it was trained.
        uses_markers: the model weighs the ``d:`` difficulty markers (set from ``weights``).
    """

    bias: float
    weights: Mapping[str, float]
    threshold: float
    manifest: Mapping[str, Any]
    uses_markers: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "uses_markers", any(name.startswith("d:") for name in self.weights)
        )

    def log_odds(self, vector: Mapping[str, float]) -> float:
        """The model's log-odds for a feature vector."""
        get = self.weights.get
        return self.bias + sum(get(name, 0.0) * value for name, value in vector.items())

    def contributions(self, vector: Mapping[str, float], top: int = 3) -> list[tuple[str, float]]:
        """The ``top`` features that moved the score most, with their log-odds."""
        found = [
            (name, self.weights[name] * value)
            for name, value in vector.items()
            if name in self.weights
        ]
        found.sort(key=lambda item: -abs(item[1]))
        return found[:top]

    def score(self, features: StepFeatures) -> float:
        """The probability that a step needs the larger model (no session overrides)."""
        return _sigmoid(self.log_odds(step_vector(features, markers=self.uses_markers)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScorerModel:
        """Read a model from its JSON form (as written by ``to_json``)."""
        return cls(
            bias=float(data["bias"]),
            weights={str(k): float(v) for k, v in data["weights"].items()},
            threshold=float(data["threshold"]),
            manifest=dict(data.get("manifest", {})),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form of the model."""
        return {
            "bias": self.bias,
            "threshold": self.threshold,
            "manifest": dict(self.manifest),
            "weights": dict(self.weights),
        }


def is_routine_step(features: StepFeatures) -> bool:
    """Whether a step is the routine part of an agent loop: far enough into the session that the
    plan is made, digesting one or two tool results that report no failure (the previous step's
    outcome is checked by the caller: a failed or escalated one is never routine)."""
    return (
        features.digesting_tool_result
        and features.step_index >= ROUTINE_AFTER_STEPS
        and features.tool_results_in_batch < ROUTINE_MAX_RESULTS
        and not features.tool_code_signals
    )


def _sigmoid(log_odds: float) -> float:
    if log_odds < -30:
        return 0.0
    if log_odds > 30:
        return 1.0
    return 1.0 / (1.0 + math.exp(-log_odds))


@lru_cache(maxsize=1)
def load_model() -> ScorerModel:
    """The model shipped with the package (read once)."""
    with WEIGHTS_PATH.open(encoding="utf-8") as handle:
        return ScorerModel.from_json(json.load(handle))


# How a size bucket (``s:<name>:<log2 bucket>``) reads in a decision's reasons.
_SIZES = {
    "lines": "line breaks",
    "words": "words",
    "chars": "characters",
    "numbers": "numbers",
    "tool_chars": "characters of tool output",
}


def _describe(name: str) -> str:
    kind, _, value = name.partition(":")
    if kind == "s":
        size, _, bucket = value.partition(":")
        if size in _SIZES and bucket.isdigit():
            if size == "lines" and bucket == "0":
                return "one-line message"
            low = (1 << int(bucket)) - 1
            return f"no {_SIZES[size]}" if low == 0 else f"{low}+ {_SIZES[size]}"
        if size == "tool_batch":
            return f"{bucket} tool result{'s' if bucket != '1' else ''}"
        if size == "files":
            return f"{bucket} file path{'s' if bucket != '1' else ''}"
    return {
        "w": f"word {value!r}",
        "b": f"words {value!r}",
        "c": f"letters {value.strip()!r}",
        "t": f"tool output word {value!r}",
    }.get(kind, value.replace(":", " "))


class LearnedClassifier:
    """Scores a step with the shipped (or a given) learned model; no I/O, sub-millisecond.

    The label follows ``threshold``: below it ``easy`` (the cheapest tier); from it ``medium``,
    and from halfway between it and 1 ``hard``. On a two-tier ladder medium and hard both take
    the larger tier, so ``threshold`` alone decides. Within ``uncertain_band`` of the threshold
    the result is flagged ``uncertain`` (a cascade asks a second opinion there).

    Args:
        threshold: the score from which a step goes up; ``None`` for the model's default.
        uncertain_band: half-width of the uncertain band around ``threshold``.
        model: the scorer; the shipped one by default.
    """

    __slots__ = ("hard_from", "model", "threshold", "uncertain_band")

    def __init__(
        self,
        threshold: float | None = None,
        *,
        uncertain_band: float = 0.1,
        model: ScorerModel | None = None,
    ) -> None:
        self.model = model or load_model()
        self.threshold = self.model.threshold if threshold is None else threshold
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        self.hard_from = self.threshold + (1 - self.threshold) / 2
        self.uncertain_band = uncertain_band

    def __call__(self, features: StepFeatures) -> Classification:
        """Label one step."""
        from agentguard.routing.features import Classification

        vector = step_vector(features, markers=self.model.uses_markers)
        get = self.model.weights.get
        # One pass gives both the log-odds and the parts that explain it.
        parts = [(weight * value, name) for name, value in vector.items() if (weight := get(name))]
        log_odds = self.model.bias + sum(part for part, _ in parts)
        top = heapq.nlargest(3, parts, key=lambda part: abs(part[0]))
        reasons = [f"{_describe(name)} ({part:+.1f})" for part, name in top]
        if features.previous_outcome == "failed":
            log_odds += PREVIOUS_FAILED_LOG_ODDS
            reasons.insert(0, f"previous step failed (+{PREVIOUS_FAILED_LOG_ODDS:.1f})")
        elif features.previous_outcome == "escalated":
            log_odds += PREVIOUS_ESCALATED_LOG_ODDS
            reasons.insert(0, f"previous step was escalated (+{PREVIOUS_ESCALATED_LOG_ODDS:.1f})")
        elif is_routine_step(features):
            log_odds += ROUTINE_LOG_ODDS
            reasons.insert(
                0, f"routine step: digesting a clean tool result ({ROUTINE_LOG_ODDS:+.1f})"
            )
        score = _sigmoid(log_odds)
        label: Label
        if score >= self.hard_from:
            label = "hard"
        elif score >= self.threshold:
            label = "medium"
        else:
            label = "easy"
        distance = abs(score - self.threshold)
        return Classification(
            label=label,
            score=round(score, 4),
            confidence=round(min(1.0, distance / 0.25), 3),
            reasons=tuple(reasons) or ("no signals",),
            uncertain=distance < self.uncertain_band,
            source="learned",
        )
