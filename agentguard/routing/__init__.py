"""Per-step model routing: send each model call to the cheapest tier that can do it.

This is the pipeline's ``route`` stage. It is pure: no I/O, no clock, no global state, so the
guard can call it before every model call (a fraction of a millisecond with the default
learned classifier) and tests can call it directly. ``guard.route()`` and the pipeline reach
it through one path (:meth:`agentguard.routing.stage.RouteStage.decide_step`), so they decide alike.

How a call is routed (:meth:`Router.decide`)::

    messages, tools ─► extract_features ─► classifier ─► score, label easy | medium | hard
                                                            │
                          tier wanted ◄─────────────────────┘
                               │
              min(wanted, ceiling, pressure cap) ─► RouteDecision(model, tier, reasons)

- The default classifier (:class:`LearnedClassifier`, ``routing.classifier = "learned"``) is a
  logistic regression shipped in ``weights.json``; its score is the probability that the step
  needs the larger model and ``routing.threshold`` is where a step goes up (calibrate it on
  recorded traffic with ``agentguard route calibrate``; see :mod:`agentguard.routing.calibrate`).
  A failed or escalated previous step adds fixed log-odds on top of the model.
- The **ladder** is the configured tier models, cheapest first. The caller's model is the
  ceiling: a step is never sent to a tier above it unless ``allow_upgrade`` is set. A caller's
  model that is not one of the tiers is taken to be *above* every tier (it goes on top of the
  ladder), so hard steps keep it and easier steps go down to the tiers; that way a caller who
  asks for a model the config doesn't know about is never silently swapped for a weaker one.
- **Budget pressure** caps the tier when little of the budget is left.
- ``force_model`` (on the call or in the config) pins the model and beats everything else.
- A cheap step that fails in a checkable way (:func:`check_step_failure`) can be re-sent one
  tier up (:meth:`Router.escalate`); :meth:`Router.cheaper_tiers` lists the way down when a
  budget runs out.

Classifiers and the heuristic's scoring rules are small strategies that compose, in the manner
of tenacity: a rule is any callable ``StepFeatures -> Evidence | Iterable[Evidence] | None``
(rule objects add up with ``+``), and a classifier is any callable ``StepFeatures ->
Classification``. :class:`HeuristicClassifier` (``routing.classifier = "heuristic"``) is the
older hand-weighted rule set. :class:`CascadeClassifier` asks an LLM (through a callable the
pipeline provides, which does the HTTP call and counts its cost) only when the fast classifier
is unsure.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias

from agentguard.config import RoutingConfig
from agentguard.errors import AgentGuardError, ConfigError
from agentguard.routing.features import Classification, Label, StepFeatures, StepOutcome
from agentguard.routing.learned import LearnedClassifier, ScorerModel, load_model

if TYPE_CHECKING:
    from agentguard.dialects.base import Answer

__all__ = [
    "CLASSIFIER_REQUEST_OPTIONS",
    "DEFAULT_RULES",
    "AskFunction",
    "CascadeClassifier",
    "Classification",
    "Classifier",
    "Evidence",
    "HeuristicClassifier",
    "InputSizeRule",
    "LLMClassifier",
    "Label",
    "LearnedClassifier",
    "PreviousOutcomeRule",
    "RouteDecision",
    "Router",
    "Rule",
    "RuleFunction",
    "RuleSet",
    "ScorerModel",
    "ShortTaskRule",
    "SignalRule",
    "StepFeatures",
    "StepOutcome",
    "ToolBatchRule",
    "build_classifier",
    "check_answer_failure",
    "check_step_failure",
    "extract_features",
    "load_model",
]

AskFunction: TypeAlias = Callable[[list[dict[str, Any]]], str]
"""Sends chat messages to the small model and returns the text of its answer."""

# Only the head and tail of long texts are scanned: the instruction is at the start of a user
# message and a tool result's verdict (test summary, exit status) is usually at its end. This
# bounds the work per call whatever the context size.
_USER_HEAD_CHARS = 4000
_USER_TAIL_CHARS = 1000
_TOOL_HEAD_CHARS = 1500
_TOOL_TAIL_CHARS = 1500
_TOOL_TOTAL_CHARS = 12000
_INSTRUCTION_MAX_CHARS = 600


# --------------------------------------------------------------------------- signals
#
# Intent (what the user asks for) is read from phrase tables matched on the words of the
# instruction: a dictionary lookup per word, so the cost grows with the instruction's length
# and not with the number of phrases. Phrases are separated by "|"; "^" marks a phrase that
# only counts at the start of a sentence; "*" stands for any one word; "..." for up to six
# words. Words of four or more capitals keep their case, so the log level DEBUG is not a
# request to debug.

_REASONING_PHRASES: dict[str, str] = {
    "planning": (
        "make a plan | write a plan | draft a plan | create a plan | need a plan | give me a "
        "plan | give me a * plan | put together a plan | put together a * plan | put together "
        "an * plan | come up with a plan | plan a | plan an | plan the | plan our | plan my | "
        "plan how | plan for | plan out | roadmap | strategy | strategies | design a | design "
        "an | design the | design our | design how | redesign | architect | trade-off | "
        "trade-offs | tradeoff | tradeoffs | milestone | milestones | prioritise | prioritize "
        "| prioritising | prioritizing | break down | outline | propose | recommend | "
        "recommendation | step by step | walk me through | think through | pros and cons"
    ),
    "debugging": (
        "debug | debugging | debugged | root cause | root-cause | figure out | find out | "
        "work out | track down | track it down | track this down | look into | investigate | "
        "investigating | investigation | flaky | flakey | intermittent | intermittently | "
        "sometimes | every now and then | every few | race condition | deadlock | deadlocks | "
        "memory leak | leak | leaks | leaking | hang | hangs | hanging | slower | regression "
        "| off by one | off by a | not working | doesn't work | isn't working | stopped "
        "working | nondeterministic | non-deterministic | what happened | what's going on | "
        "any idea | what's wrong | find the bug | find the cause"
    ),
    "explain_why": ("^why does | ^why do | ^why is | ^why are | ^why did | ^why would"),
    "refactoring": (
        "refactor | refactoring | across the codebase | across the project | across the code "
        "| everywhere | throughout | all call sites | all the call sites | all callers | all "
        "usages | centralise | centralize | unify | migrate | migrating | migration | split * "
        "into | replace ... with"
    ),
    "synthesis": (
        "compare | comparison | contrast | reconcile | synthesise | synthesize | synthesis | "
        "literature review | themes | across these | across all | weigh | cluster | "
        "postmortem | post-mortem | contradict | contradictions | conflict | conflicts | "
        "conflicting | based on everything | based on all"
    ),
    "code_review": (
        "code review | review this code | review the code | review my code | review this "
        "module | review this pr | review this pull request | review this diff | review this "
        "design | review this implementation | review this patch"
    ),
    "open_question": (
        "^how would we | ^how would you | ^how would i | ^how should we | ^how should i | "
        "^how could we | ^how do we | ^how can we | ^what should we | ^what should i"
    ),
}
_MATH_PHRASES: dict[str, str] = {
    "proof": ("prove | proof | show that | lemma | theorem | qed | derive | derivation | justify"),
    "math_terms": (
        "probability | probabilities | expected value | expected number | integral | "
        "integrate | derivative | eigenvalue | eigenvalues | eigenvector | eigenvectors | "
        "recurrence | prime | primes | divisible | converge | converges | convergent | "
        "convergence | matrix | matrices | polynomial | modulo | combinatorics | "
        "combinatorial | irrational | undecidable | time complexity | asymptotic | compounded "
        "| compound interest | permutation | permutations | how many ways | show your working "
        "| show your work | show the working | show the calculation | show your steps | show "
        "the steps"
    ),
}
_EASY_PHRASES: dict[str, str] = {
    "classify": (
        "classify | categorise | categorize | label | tag this | tag each | route this | "
        "intent | sentiment | which product | which department | which category | which queue "
        "| pick the | rate the | ^is this | ^does this | ^is the | ^was it"
    ),
    "constrained_answer": (
        "yes or no | yes no | y or n | true or false | one word | number only | just say | "
        "just give | just the | only the | answer with | reply with | return the | return "
        "json | as json | as a number | as a list | as csv | comma separated | "
        "comma-separated | one per line | short answer | in one word"
    ),
    "extract": ("extract | pull out | list the | give me the | get the"),
    "lookup": (
        "^what's the | ^what is the | ^what are the | ^what does | ^whats the | ^what's your "
        "| ^where can | ^where do | ^where is | ^when is | ^when does | ^how do i | ^how can "
        "i | ^do you | ^can i | ^is there | ^does the"
    ),
    "convert": (
        "convert | format | reformat | translate | rewrite | render | turn this | turn these "
        "| turn the | make this | sort | dedupe | de-duplicate | indent"
    ),
    "small_edit": (
        "typo | bump | rename | change it | change the | change them | update the | add a | "
        "add an | add the | remove it | remove the | fix it | fix the typo"
    ),
    "short_summary": (
        "summarise | summarize | summary | tl dr | tldr | gist | one sentence | one line | "
        "one-line | two sentences | a few words | briefly | condense | sum up"
    ),
}

_GAP_WORDS = 6
_Phrase: TypeAlias = tuple[tuple[str, ...], bool, str]


class _PhraseTable:
    """Signal phrases indexed by their first word, matched against a list of words."""

    __slots__ = ("_index", "_order")

    def __init__(self, table: Mapping[str, str]) -> None:
        self._order = {signal: position for position, signal in enumerate(table)}
        self._index: dict[str, list[_Phrase]] = {}
        for signal, phrases in table.items():
            for raw in phrases.split("|"):
                phrase = raw.strip()
                words = tuple(phrase.lstrip("^ ").split())
                self._index.setdefault(words[0], []).append((words, phrase.startswith("^"), signal))

    def match(self, words: Sequence[str], starts: set[int]) -> tuple[str, ...]:
        found: set[str] = set()
        for position, word in enumerate(words):
            for phrase, at_start, signal in self._index.get(word, ()):
                if signal in found or (at_start and position not in starts):
                    continue
                if _phrase_at(words, position, phrase):
                    found.add(signal)
        return tuple(sorted(found, key=self._order.__getitem__))


def _phrase_at(words: Sequence[str], position: int, phrase: tuple[str, ...]) -> bool:
    index, k = position, 0
    while k < len(phrase):
        wanted = phrase[k]
        if wanted == "...":
            window = list(words[index : index + _GAP_WORDS + 1])
            if phrase[k + 1] not in window:
                return False
            index += window.index(phrase[k + 1]) + 1
            k += 2
            continue
        if index >= len(words) or (wanted != "*" and words[index] != wanted):
            return False
        index += 1
        k += 1
    return True


_REASONING_TABLE = _PhraseTable(_REASONING_PHRASES)
_MATH_TABLE = _PhraseTable(_MATH_PHRASES)
_EASY_TABLE = _PhraseTable(_EASY_PHRASES)

_TOKEN = re.compile(r"[\w']+(?:-[\w']+)*|[.?!:;\n]")
_MATH_NOTATION = re.compile(
    r"[∀∃∑∫√≤≥≠∞]|\\(?:frac|sum|int|forall|mathbb|geq|leq)\b|\b[a-zA-Z]\^\w|\b\d+\^\w|\|[a-z] [+-]"
)
_MATH_NOTATION_HINTS = frozenset("∀∃∑∫√≤≥≠∞\\^|")


def _words(instruction: str) -> tuple[list[str], set[int]]:
    """Words of the instruction (lower case, except capitalised constants) and sentence starts."""
    words: list[str] = []
    starts = {0}
    for token in _TOKEN.findall(instruction.replace("’", "'")):
        if token in ".?!:;\n":
            starts.add(len(words))
        elif len(token) > 3 and token.isupper():
            words.append(token)  # a constant or log level (DEBUG, TODO); TL;DR is still "tl dr"
        else:
            words.append(token.lower())
    return words, starts


# Code in a text: cheap substring tests first, a regex only where a test passes.
_STACK_TRACE_MARKERS = (
    "Traceback (most recent call last)",
    "Exception in thread",
    "panicked at",
    "goroutine ",
    '  File "',
)
_JAVA_FRAME = re.compile(r"^\s+at [\w.$<>]+\(", re.MULTILINE)
_FAILED_COUNT = re.compile(r"\b\d+ failed\b")
_CODE_HINTS = (
    "def ",
    "class ",
    "import ",
    "function ",
    "=>",
    "const ",
    "let ",
    "#include",
    "public ",
)
_CODE_SYNTAX = re.compile(
    r"\bdef \w+\(|^\s*class \w+[:(]|^\s*(?:from [\w.]+ )?import \w+|\bfunction \w+\(|=>"
    r"|\b(?:const|let) \w+ =|#include\b|\bpublic (?:static )?\w+",
    re.MULTILINE,
)
_FILE_EXTENSION = re.compile(
    r"\.(?:py|js|jsx|ts|tsx|go|rs|java|kt|rb|php|c|cc|cpp|h|hpp|cs|swift|sql|ya?ml|toml|sh)\b"
)
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./")


def _has_stack_trace(text: str) -> bool:
    if any(marker in text for marker in _STACK_TRACE_MARKERS):
        return True
    return "at " in text and bool(_JAVA_FRAME.search(text))


def _has_test_failure(text: str) -> bool:
    if "FAILED" in text or "AssertionError" in text or "FAIL:" in text:
        return True
    return " failed" in text and bool(_FAILED_COUNT.search(text))


def _file_paths(text: str) -> set[str]:
    paths = set()
    for match in _FILE_EXTENSION.finditer(text):
        start = match.start()
        while start > 0 and text[start - 1] in _PATH_CHARS:
            start -= 1
        if start < match.start():  # a bare ".py" is not a path
            paths.add(text[start : match.end()])
    return paths


def _code_signals(text: str, paths: set[str]) -> tuple[str, ...]:
    found = []
    if "```" in text:
        found.append("fenced_code")
    if _has_stack_trace(text):
        found.append("stack_trace")
    if _has_test_failure(text):
        found.append("test_failure")
    if "@@ -" in text or "\n+++ " in text:
        found.append("diff")
    if paths:
        found.append("file_path")
    if any(hint in text for hint in _CODE_HINTS) and _CODE_SYNTAX.search(text):
        found.append("code_syntax")
    return tuple(found)


def _tool_signals(text: str) -> tuple[str, ...]:
    # Tool output is code or logs by nature; only a reported failure says something.
    found = []
    if _has_stack_trace(text):
        found.append("stack_trace")
    if _has_test_failure(text):
        found.append("test_failure")
    return tuple(found)


_QUOTED_PAYLOAD = re.compile(r"\"[^\"\n]{20,}\"|“[^”]{20,}”|'[^'\n]{40,}'")
_DATA_LINE = re.compile(r"^\s*(?:[{\[<|>*•#$\"'“-]|\d+[.):]?\s)")


def _instruction(text: str) -> str:
    """The part of a user message that says what to do, without the data it is about.

    Users write the instruction first and paste the payload after a blank line, after a line
    ending in a colon, on lines that look like data (JSON, lists, quotes, logs), or in quotes;
    keywords inside the payload say nothing about the task.
    """
    first = text[: _INSTRUCTION_MAX_CHARS * 3].split("\n\n", 1)[0].split("```", 1)[0]
    kept: list[str] = []
    for line in first.splitlines():
        if kept and _DATA_LINE.match(line):
            break
        kept.append(line)
        if line.rstrip().endswith(":"):
            break
    return _QUOTED_PAYLOAD.sub(" ", "\n".join(kept))[:_INSTRUCTION_MAX_CHARS]


def _clip(text: str, head: int, tail: int) -> str:
    if len(text) <= head + tail:
        return text
    return text[:head] + "\n…\n" + text[-tail:]


def _content_text(content: Any) -> tuple[str, bool]:
    """The text of a message ``content`` (a string or a list of parts); whether it has images."""
    if content is None:
        return "", False
    if isinstance(content, str):
        return content, False
    texts: list[str] = []
    has_image = False
    if isinstance(content, Iterable):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") in ("image_url", "input_image", "image"):
                has_image = True
    return "\n".join(texts), has_image


# --------------------------------------------------------------------------- features


def extract_features(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Any] | None = None,
    *,
    input_tokens: int,
    step_index: int = 0,
    previous_outcome: StepOutcome | None = None,
) -> StepFeatures:
    """Read the routing features of a ``chat.completions`` call.

    Args:
        messages: the OpenAI chat messages of the call.
        tools: the tools the call offers, if any.
        input_tokens: tokens of the request as the caller counted them (this function does
            not tokenize: the pipeline has already counted, with the model's tokenizer).
        step_index: position of the call in the session, 0 for the first.
        previous_outcome: how the previous step ended: ``"ok"``, ``"failed"`` or
            ``"escalated"``.

    Returns:
        The features; cheap to compute, as only the head and tail of long texts are scanned.
    """
    user_text = ""
    has_images = False
    for message in reversed(messages):
        if message.get("role") == "user":
            user_text, has_images = _content_text(message.get("content"))
            break
    batch: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        content, _ = _content_text(message.get("content"))
        batch.append(_clip(content, _TOOL_HEAD_CHARS, _TOOL_TAIL_CHARS))
    batch.reverse()
    text = _clip(user_text, _USER_HEAD_CHARS, _USER_TAIL_CHARS)
    tool_text = "\n\n".join(batch)[:_TOOL_TOTAL_CHARS]
    instruction = _instruction(text)
    words, starts = _words(instruction)
    math_signals = _MATH_TABLE.match(words, starts)
    if not _MATH_NOTATION_HINTS.isdisjoint(instruction) and _MATH_NOTATION.search(instruction):
        math_signals = (*math_signals, "notation")
    paths = _file_paths(text)
    return StepFeatures(
        text=text,
        instruction=instruction,
        tool_text=tool_text,
        tools_offered=len(tools or ()),
        digesting_tool_result=bool(batch),
        tool_results_in_batch=len(batch),
        code_signals=_code_signals(text, paths),
        tool_code_signals=_tool_signals(tool_text) if tool_text else (),
        math_signals=math_signals,
        reasoning_signals=_REASONING_TABLE.match(words, starts),
        easy_signals=_EASY_TABLE.match(words, starts),
        instruction_words=len(words),
        file_mentions=len(paths),
        input_tokens=input_tokens,
        step_index=step_index,
        previous_outcome=previous_outcome,
        has_images=has_images,
    )


# --------------------------------------------------------------------------- rules


class Evidence(NamedTuple):
    """One piece of evidence about a step's difficulty.

    Attributes:
        weight: log-odds that the step is hard; positive for hard, negative for easy.
        reason: what was seen, for the decision's reasons.
    """

    weight: float
    reason: str


RuleFunction: TypeAlias = Callable[[StepFeatures], Evidence | Iterable[Evidence] | None]
"""A plain function may stand in for a :class:`Rule`."""


def _evidence_of(result: Evidence | Iterable[Evidence] | None) -> Iterable[Evidence]:
    if result is None:
        return ()
    if isinstance(result, Evidence):
        return (result,)
    return result


class Rule(ABC):
    """A scoring rule: looks at the features and gives evidence (or none).

    Rules add up: ``SignalRule(...) + ShortTaskRule() + my_function`` is a :class:`RuleSet`.
    """

    __slots__ = ()

    @abstractmethod
    def __call__(self, features: StepFeatures) -> Evidence | Iterable[Evidence] | None:
        """The evidence this rule finds in ``features``."""

    def __add__(self, other: Rule | RuleFunction) -> RuleSet:
        return RuleSet(self, other)

    def __radd__(self, other: Rule | RuleFunction) -> RuleSet:
        return RuleSet(other, self)


class RuleSet(Rule):
    """Several rules whose evidence is pooled."""

    __slots__ = ("rules",)

    def __init__(self, *rules: Rule | RuleFunction) -> None:
        flat: list[Rule | RuleFunction] = []
        for rule in rules:
            # Flatten so a long ``a + b + c`` chain is one loop, not nested calls.
            flat.extend(rule.rules if isinstance(rule, RuleSet) else (rule,))
        self.rules: tuple[Rule | RuleFunction, ...] = tuple(flat)

    def __call__(self, features: StepFeatures) -> list[Evidence]:
        found: list[Evidence] = []
        for rule in self.rules:
            found.extend(_evidence_of(rule(features)))
        return found


class SignalRule(Rule):
    """Evidence from named signals in one of the features' signal fields.

    The first matching signal weighs ``first``; each further one ``more``; the total is capped
    at ``cap`` (the same sign as ``first``), so piling up synonyms cannot swamp other evidence.

    Args:
        field: the ``StepFeatures`` attribute holding the signal names.
        weights: per-signal weight for the first match; signals not listed weigh ``first``.
        first: default weight of the first matching signal.
        more: weight of each further matching signal.
        cap: largest total (in absolute value).
        label: how the reason names this kind of evidence.
    """

    __slots__ = ("cap", "field", "first", "label", "more", "weights")

    def __init__(
        self,
        field: str,
        *,
        first: float,
        more: float = 0.0,
        cap: float | None = None,
        weights: Mapping[str, float] | None = None,
        label: str | None = None,
    ) -> None:
        self.field = field
        self.first = first
        self.more = more
        self.cap = abs(cap) if cap is not None else None
        self.weights = dict(weights or {})
        self.label = label or field.replace("_", " ")

    def __call__(self, features: StepFeatures) -> Evidence | None:
        names: tuple[str, ...] = getattr(features, self.field)
        if not names:
            return None
        ranked = sorted(names, key=lambda n: -abs(self.weights.get(n, self.first)))
        total = self.weights.get(ranked[0], self.first) + self.more * (len(ranked) - 1)
        if self.cap is not None:
            total = math.copysign(min(abs(total), self.cap), total)
        return Evidence(total, f"{self.label}: {', '.join(ranked)}")


class InputSizeRule(Rule):
    """Long inputs point to synthesis over a large context.

    Args:
        steps: ``(input_tokens, weight)`` pairs; the largest threshold reached applies.
    """

    __slots__ = ("steps",)

    def __init__(
        self, steps: Sequence[tuple[int, float]] = ((3000, 0.6), (8000, 1.4), (20000, 2.0))
    ) -> None:
        self.steps = tuple(sorted(steps))

    def __call__(self, features: StepFeatures) -> Evidence | None:
        reached = [
            (tokens, weight) for tokens, weight in self.steps if features.input_tokens >= tokens
        ]
        if not reached:
            return None
        tokens, weight = reached[-1]
        return Evidence(weight, f"large input: {features.input_tokens} tokens (>= {tokens})")


class ToolBatchRule(Rule):
    """Digesting several tool results at once, or a failure a tool reported.

    Args:
        min_results: results in one batch that count as "several".
        batch_weight: weight for several results.
        failure_weight: weight for a stack trace or failing tests in a tool result, when the
            instruction does not ask for something bounded (reading a test verdict is easy).
        routine_weight: weight for digesting one or two clean tool results (0 turns it off).
        routine_after_steps: steps into the session before that applies (the first steps
            make the plan).
    """

    __slots__ = (
        "batch_weight",
        "failure_weight",
        "min_results",
        "routine_after_steps",
        "routine_weight",
    )

    def __init__(
        self,
        *,
        min_results: int = 3,
        batch_weight: float = 0.9,
        failure_weight: float = 0.8,
        routine_weight: float = -0.8,
        routine_after_steps: int = 2,
    ) -> None:
        self.routine_after_steps = routine_after_steps
        self.min_results = min_results
        self.batch_weight = batch_weight
        self.failure_weight = failure_weight
        self.routine_weight = routine_weight

    def __call__(self, features: StepFeatures) -> list[Evidence]:
        found = []
        if features.tool_results_in_batch >= self.min_results:
            found.append(
                Evidence(
                    self.batch_weight, f"{features.tool_results_in_batch} tool results to combine"
                )
            )
        failures = {"stack_trace", "test_failure"} & set(features.tool_code_signals)
        if failures and not features.easy_signals:
            found.append(
                Evidence(
                    self.failure_weight, f"tool reported a failure: {', '.join(sorted(failures))}"
                )
            )
        elif (
            features.digesting_tool_result
            and features.step_index >= self.routine_after_steps
            and not failures
            and not features.reasoning_signals
            and not features.math_signals
            and features.tool_results_in_batch < self.min_results
            and self.routine_weight
        ):
            # Once the plan is made (the first steps), reading a file or a clean tool result and
            # choosing the next action is the bulk of an agent's steps, and a small model does
            # it as well as a large one.
            found.append(Evidence(self.routine_weight, "routine step: digesting a tool result"))
        return found


class ShortTaskRule(Rule):
    """A short instruction with no sign of multi-step work is usually a bounded task.

    Args:
        max_words: instructions up to this many words count as short.
        short_weight: weight for a short instruction.
        long_words: instructions of at least this many words count as long.
        long_weight: weight for a long instruction (many requirements to keep in mind).
    """

    __slots__ = ("long_weight", "long_words", "max_words", "short_weight")

    def __init__(
        self,
        *,
        max_words: int = 12,
        short_weight: float = -0.7,
        long_words: int = 40,
        long_weight: float = 0.5,
    ) -> None:
        self.max_words = max_words
        self.short_weight = short_weight
        self.long_words = long_words
        self.long_weight = long_weight

    def __call__(self, features: StepFeatures) -> Evidence | None:
        words = features.instruction_words
        if words <= self.max_words and not features.reasoning_signals and not features.math_signals:
            return Evidence(self.short_weight, f"short instruction ({words} words)")
        if words >= self.long_words:
            return Evidence(self.long_weight, f"long instruction ({words} words)")
        return None


class PreviousOutcomeRule(Rule):
    """After a failed or escalated step, the next one tends to need the stronger model too.

    Args:
        failed: weight after a failed step.
        escalated: weight after an escalated step.
    """

    __slots__ = ("escalated", "failed")

    def __init__(self, *, failed: float = 1.5, escalated: float = 1.0) -> None:
        self.failed = failed
        self.escalated = escalated

    def __call__(self, features: StepFeatures) -> Evidence | None:
        if features.previous_outcome == "failed":
            return Evidence(self.failed, "previous step failed")
        if features.previous_outcome == "escalated":
            return Evidence(self.escalated, "previous step was escalated")
        return None


def _multi_file_rule(features: StepFeatures) -> Evidence | None:
    # Several files named in the task is the shape of a cross-cutting change.
    if features.file_mentions >= 3:
        return Evidence(0.6, f"{features.file_mentions} files named")
    return None


DEFAULT_RULES: RuleSet = RuleSet(
    SignalRule(
        "reasoning_signals",
        first=1.8,
        more=0.5,
        cap=2.8,
        weights={"explain_why": 1.0},
        label="multi-step work",
    ),
    SignalRule(
        "math_signals",
        first=1.2,
        more=0.6,
        cap=2.4,
        weights={"proof": 1.8, "notation": 0.6},
        label="maths",
    ),
    SignalRule(
        "easy_signals",
        first=-1.6,
        more=-0.4,
        cap=2.4,
        label="bounded task",
    ),
    SignalRule(
        "code_signals",
        first=0.3,
        more=0.15,
        cap=0.6,
        weights={"file_path": 0.15, "code_syntax": 0.2},
        label="code in the task",
    ),
    InputSizeRule(),
    ToolBatchRule(),
    ShortTaskRule(),
    PreviousOutcomeRule(),
    _multi_file_rule,
)
"""The heuristic's rules. Weights are log-odds, set on the dev split of
``bench/data/routing_steps.jsonl`` (see ``bench/routing_eval.py``)."""


# --------------------------------------------------------------------------- classification


Classifier: TypeAlias = Callable[[StepFeatures], Classification]
"""Anything that labels a step: a classifier object or a plain function."""


class HeuristicClassifier:
    """Scores a step from its features with weighted rules; no I/O, microseconds.

    The evidence weights are summed as log-odds and squashed into a score in [0, 1]. Scores
    below ``easy_below`` are easy, from ``hard_from`` up hard, medium between; within
    ``uncertain_margin`` of either boundary the result is flagged ``uncertain``.

    Args:
        rules: the scoring rules (a :class:`Rule`, a ``RuleSet`` or a plain function).
        bias: log-odds before any evidence.
        easy_below: score boundary between easy and medium.
        hard_from: score boundary between medium and hard.
        uncertain_margin: half-width of the uncertain band around each boundary.
    """

    __slots__ = ("bias", "easy_below", "hard_from", "rules", "uncertain_margin")

    def __init__(
        self,
        rules: Rule | RuleFunction = DEFAULT_RULES,
        *,
        bias: float = 0.0,
        easy_below: float = 0.4,
        hard_from: float = 0.65,
        uncertain_margin: float = 0.1,
    ) -> None:
        if not 0 < easy_below <= hard_from < 1:
            raise ValueError(f"need 0 < easy_below <= hard_from < 1, got {easy_below}, {hard_from}")
        self.rules = rules
        self.bias = bias
        self.easy_below = easy_below
        self.hard_from = hard_from
        self.uncertain_margin = uncertain_margin

    def __call__(self, features: StepFeatures) -> Classification:
        """Label one step."""
        evidence = sorted(_evidence_of(self.rules(features)), key=lambda e: -abs(e.weight))
        log_odds = self.bias + sum(e.weight for e in evidence)
        score = 1.0 / (1.0 + math.exp(-log_odds))
        label: Label
        if score < self.easy_below:
            label = "easy"
        elif score >= self.hard_from:
            label = "hard"
        else:
            label = "medium"
        distance = min(abs(score - self.easy_below), abs(score - self.hard_from))
        reasons = tuple(f"{e.reason} ({e.weight:+.1f})" for e in evidence) or ("no signals",)
        return Classification(
            label=label,
            score=round(score, 4),
            confidence=round(min(1.0, distance / 0.25), 3),
            reasons=reasons,
            uncertain=distance < self.uncertain_margin,
            source="heuristic",
        )


CLASSIFIER_REQUEST_OPTIONS: Mapping[str, Any] = {"max_tokens": 3, "temperature": 0}
"""Request options the pipeline's ``ask`` should send with a classification prompt: the
answer is one word, so a tiny output cap keeps the classifier call cheap and its worst case
small."""

_CLASSIFIER_SYSTEM_PROMPT = (
    "You route the steps of an AI agent between a small, cheap model and a frontier model. "
    "Say whether the next step needs the frontier model.\n"
    "EASY: classification, extraction, formatting or conversion, translation, short summaries, "
    "FAQ answers, simple lookups, small obvious edits.\n"
    "HARD: debugging, changes across several files, design and planning, synthesis across long "
    "or many sources, maths and proofs, anything needing careful multi-step reasoning.\n"
    "Answer with one word: EASY or HARD."
)
_EASY_WORDS = {"EASY", "SIMPLE", "SMALL", "CHEAP"}
_HARD_WORDS = {"HARD", "COMPLEX", "DIFFICULT", "FRONTIER", "LARGE"}
_ANSWER_WORD = re.compile(r"[A-Za-z]+")


class LLMClassifier:
    """Asks a small model whether a step is EASY or HARD.

    The classifier itself does no I/O: ``ask`` is the seam. The pipeline passes a callable
    that sends the messages to the small model (with :data:`CLASSIFIER_REQUEST_OPTIONS`),
    counts the call's cost against the session, and returns the answer text.

    Args:
        ask: sends a list of chat messages and returns the answer text.
        max_task_chars: how much of the task to show the model.
        max_tool_chars: how much of the latest tool output to show the model.
    """

    __slots__ = ("ask", "max_task_chars", "max_tool_chars")

    def __init__(
        self, ask: AskFunction, *, max_task_chars: int = 1500, max_tool_chars: int = 600
    ) -> None:
        self.ask = ask
        self.max_task_chars = max_task_chars
        self.max_tool_chars = max_tool_chars

    def build_messages(self, features: StepFeatures) -> list[dict[str, Any]]:
        """The classification prompt for one step: a system prompt and a short user message."""
        task = _clip(features.text, self.max_task_chars * 4 // 5, self.max_task_chars // 5)
        parts = [f"Task given to the agent:\n{task or '(none)'}"]
        if features.tool_text:
            tool = _clip(features.tool_text, self.max_tool_chars // 2, self.max_tool_chars // 2)
            parts.append(
                f"The agent is now reading {features.tool_results_in_batch} tool result(s):\n{tool}"
            )
        parts.append(
            f"Context size: about {features.input_tokens} tokens. "
            f"Tools offered: {'yes' if features.has_tools else 'no'}.\nEASY or HARD?"
        )
        return [
            {"role": "system", "content": _CLASSIFIER_SYSTEM_PROMPT},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    @staticmethod
    def parse(answer: str) -> Literal["easy", "hard"] | None:
        """Read the model's answer: the first word that means easy or hard, else ``None``.

        Small models pad answers ("Answer: **HARD**", "easy.", "HARD - needs debugging"), so
        the first recognised word wins rather than an exact match.
        """
        for word in _ANSWER_WORD.findall(answer or ""):
            upper = word.upper()
            if upper in _EASY_WORDS:
                return "easy"
            if upper in _HARD_WORDS:
                return "hard"
        return None

    def __call__(self, features: StepFeatures) -> Classification:
        """Label one step by asking the model; an unreadable answer is ``hard`` and uncertain."""
        answer = self.ask(self.build_messages(features)) or ""
        verdict = self.parse(answer)
        shown = " ".join(answer.split())[:40]
        if verdict is None:
            # Unreadable: keep the caller's model rather than guess cheap.
            return Classification(
                "hard", 1.0, 0.0, (f"LLM answer unreadable: {shown!r}",), True, "llm"
            )
        return Classification(
            verdict,
            0.0 if verdict == "easy" else 1.0,
            1.0,
            (f"LLM classifier says {verdict.upper()}",),
            False,
            "llm",
        )


class CascadeClassifier:
    """A fast classifier first; an LLM second opinion only when it is unsure.

    Most steps are decided in microseconds; the LLM (a paid call) is asked only for steps in
    the fast classifier's uncertain band (``routing.uncertain_band`` around the threshold for
    the learned scorer), and its verdict then decides the label. If the LLM call fails for a
    reason other than a guard limit, or its answer cannot be read, the fast label stands
    (routing is an optimisation; it must not fail the call).

    Args:
        heuristic: the fast classifier (the learned scorer by default); its ``uncertain`` flag
            decides whether to ask.
        llm: the second opinion (usually an :class:`LLMClassifier`).
    """

    __slots__ = ("heuristic", "llm")

    def __init__(self, heuristic: Classifier, llm: Classifier) -> None:
        self.heuristic = heuristic
        self.llm = llm

    def __call__(self, features: StepFeatures) -> Classification:
        """Label one step."""
        first = self.heuristic(features)
        if not first.uncertain:
            return first
        heading = f"{first.source} unsure ({first.label}, score {first.score:.2f})"
        try:
            second = self.llm(features)
        except AgentGuardError:
            raise  # budget, limits and parking are the pipeline's business
        except Exception as exc:
            return replace(
                first,
                reasons=(*first.reasons, f"LLM classifier failed: {type(exc).__name__}: {exc}"),
            )
        if second.uncertain:
            return replace(first, reasons=(*first.reasons, *second.reasons))
        return Classification(
            label=second.label,
            score=first.score,
            confidence=second.confidence,
            reasons=(f"{heading}; {'; '.join(second.reasons)}", *first.reasons),
            uncertain=False,
            source="cascade",
        )


def build_classifier(
    kind: str,
    *,
    ask: AskFunction | None = None,
    threshold: float | None = None,
    uncertain_band: float = 0.1,
) -> Classifier:
    """The classifier ``routing.classifier`` names.

    Args:
        kind: ``"learned"``, ``"heuristic"``, ``"llm"`` or ``"cascade"``.
        ask: the small-model callable; required for ``"llm"`` and ``"cascade"``.
        threshold: ``routing.threshold`` for the learned scorer (``None``: its default).
        uncertain_band: ``routing.uncertain_band``: where the cascade asks the small model.

    Raises:
        ConfigError: ``kind`` is unknown, or needs ``ask`` and none was given.
    """
    if kind == "learned":
        return LearnedClassifier(threshold, uncertain_band=uncertain_band)
    if kind == "heuristic":
        return HeuristicClassifier()
    if kind in ("llm", "cascade"):
        if ask is None:
            raise ConfigError(
                f"routing.classifier = {kind!r} needs a small-model callable: pass ask= "
                "(or classifier=) to the Router",
                field="routing.classifier",
                expected="an ask callable for the LLM classifier",
            )
        llm = LLMClassifier(ask)
        if kind == "llm":
            return llm
        return CascadeClassifier(LearnedClassifier(threshold, uncertain_band=uncertain_band), llm)
    raise ConfigError(
        f"routing.classifier: unknown classifier {kind!r}",
        field="routing.classifier",
        expected="learned, heuristic, llm or cascade",
    )


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Which model one call goes to, and why.

    Attributes:
        model: the model to send the call to.
        tier: the tier name of ``model``; ``None`` when routing is off or the model is not one
            of the configured tiers.
        reasons: why, in words: the step's difficulty and what capped or pinned the choice.
        features: what the router saw (``None`` when it did not need to look).
        score: the probability that the step needs the larger model, as the classifier put
            it (``None`` when not classified).
        requested_model: the model the caller asked for.
        classification: the classifier's full result, if one ran.
        ladder: the models this decision chose among, cheapest first (the tiers, plus the
            caller's model on top when it is not a tier); empty when routing is off or forced.
        ceiling: index in ``ladder`` of the highest model the step may use (the caller's model,
            or the top with ``allow_upgrade``, lowered by budget pressure).
        forced: the model was pinned by ``force_model``.
        escalated_from: the models this step was sent to before, when it was escalated.
    """

    model: str
    tier: str | None
    reasons: tuple[str, ...]
    features: StepFeatures | None
    score: float | None
    requested_model: str
    classification: Classification | None = None
    ladder: tuple[str, ...] = ()
    ceiling: int | None = None
    forced: bool = False
    escalated_from: tuple[str, ...] = ()

    @property
    def downgraded(self) -> bool:
        """The call goes to a different model than the caller asked for."""
        return self.model != self.requested_model

    def log_fields(self) -> dict[str, Any]:
        """The fields of the ``route`` log event."""
        return {
            "model": self.model,
            "tier": self.tier,
            "requested_model": self.requested_model,
            "score": self.score,
            "label": self.classification.label if self.classification else None,
            "reasons": list(self.reasons),
            "forced": self.forced,
        }


class Router:
    """Picks the model for each call from the configured tiers.

    Args:
        config: the ``[routing]`` section.
        classifier: labels steps; by default the one ``config.classifier`` names.
        ask: the small-model callable ``llm`` and ``cascade`` classifiers need (ignored when
            ``classifier`` is given).

    Raises:
        ConfigError: the configured classifier needs ``ask`` and neither it nor
            ``classifier`` was given.
    """

    __slots__ = ("_ladder", "_tier_of_model", "classifier", "config")

    def __init__(
        self,
        config: RoutingConfig,
        classifier: Classifier | None = None,
        *,
        ask: AskFunction | None = None,
    ) -> None:
        self.config = config
        self.classifier: Classifier = (
            classifier
            if classifier is not None
            else build_classifier(
                config.classifier,
                ask=ask,
                threshold=config.threshold,
                uncertain_band=config.uncertain_band,
            )
        )
        self._tier_of_model: dict[str, str] = {}
        for name, model in config.tiers.items():
            self._tier_of_model.setdefault(model, name)
        # Two tiers naming one model are one rung: escalating between them would change nothing.
        self._ladder: tuple[str, ...] = tuple(self._tier_of_model)

    def tier_of(self, model: str) -> str | None:
        """The tier name of ``model``, or ``None`` if it is not one of the tiers."""
        return self._tier_of_model.get(model)

    def decide(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Any] | None = None,
        input_tokens: int,
        step_index: int = 0,
        previous_outcome: StepOutcome | None = None,
        remaining_fraction: float | None = None,
        force_model: str | None = None,
    ) -> RouteDecision:
        """Choose the model for one call.

        Args:
            model: the model the caller asked for; the ceiling unless ``allow_upgrade``.
            messages: the call's chat messages.
            tools: the tools the call offers.
            input_tokens: the request's input tokens, as counted by the pipeline.
            step_index: position of the call in the session.
            previous_outcome: how the previous step ended.
            remaining_fraction: share of the budget left (0..1); ``None`` means no budget.
            force_model: pin this call to a model (beats ``routing.force_model``).

        Returns:
            The decision, with its reasons.
        """
        forced = force_model or self.config.force_model
        if forced:
            origin = "the call's force_model" if force_model else "routing.force_model"
            return RouteDecision(
                model=forced,
                tier=self.tier_of(forced),
                reasons=(f"forced to {forced} by {origin}",),
                features=None,
                score=None,
                requested_model=model,
                forced=True,
            )
        if not self.config.tiers:
            return RouteDecision(
                model=model,
                tier=None,
                reasons=("routing off: no tiers configured",),
                features=None,
                score=None,
                requested_model=model,
            )

        ladder = list(self._ladder)
        if model in ladder:
            caller_index = ladder.index(model)
        else:
            ladder.append(model)  # an unknown model ranks above every tier (see module doc)
            caller_index = len(ladder) - 1
        top = len(ladder) - 1

        features = extract_features(
            messages,
            tools,
            input_tokens=input_tokens,
            step_index=step_index,
            previous_outcome=previous_outcome,
        )
        classification = self.classifier(features)
        wanted = min(classification.tier_index(len(ladder)), top)
        reasons = [
            f"{classification.label} step (score {classification.score:.2f}, "
            f"{classification.source}): {'; '.join(classification.reasons[:4])}"
        ]

        ceiling = top if self.config.allow_upgrade else caller_index
        chosen = min(wanted, ceiling)
        if wanted > ceiling:
            reasons.append(f"capped at the caller's model {model}")
        cap = self._pressure_cap(remaining_fraction, ladder)
        if cap is not None and cap[0] < ceiling:
            ceiling = cap[0]
            if chosen > ceiling:
                chosen = ceiling
                reasons.append(cap[1])
        chosen_model = ladder[chosen]
        tier = self.tier_of(chosen_model)
        reasons.append(f"-> {tier or 'caller model'} {chosen_model}")
        return RouteDecision(
            model=chosen_model,
            tier=tier,
            reasons=tuple(reasons),
            features=features,
            score=classification.score,
            requested_model=model,
            classification=classification,
            ladder=tuple(ladder),
            ceiling=ceiling,
        )

    def _pressure_cap(
        self, remaining_fraction: float | None, ladder: list[str]
    ) -> tuple[int, str] | None:
        """The tightest tier cap budget pressure imposes, with its reason; ``None`` for none."""
        if remaining_fraction is None:
            return None
        best: tuple[int, str] | None = None
        for threshold, tier_name in self.config.pressure:
            if remaining_fraction < threshold and tier_name in self.config.tiers:
                index = ladder.index(self.config.tiers[tier_name])
                if best is None or index < best[0]:
                    reason = (
                        f"budget pressure: {remaining_fraction:.0%} left (< {threshold:.0%}) "
                        f"allows at most {tier_name}"
                    )
                    best = (index, reason)
        return best

    def escalate(self, decision: RouteDecision, reason: str | None = None) -> RouteDecision | None:
        """The same step one tier up, after a cheap step failed.

        Escalation goes up to the caller's model (to the top with ``allow_upgrade``) and
        respects budget pressure: the decision's ``ceiling``.

        Args:
            decision: the decision whose step failed.
            reason: what failed (from :func:`check_step_failure`), for the reasons.

        Returns:
            The new decision, or ``None`` when escalation is off, the model was forced or
            routing was off, or the decision is already at its ceiling.
        """
        if (
            not self.config.escalate
            or decision.forced
            or not decision.ladder
            or decision.ceiling is None
        ):
            return None
        index = decision.ladder.index(decision.model)
        if index >= decision.ceiling:
            return None
        model = decision.ladder[index + 1]
        tier = self.tier_of(model)
        why = f"escalated from {decision.model} to {model}" + (f": {reason}" if reason else "")
        return replace(
            decision,
            model=model,
            tier=tier,
            reasons=(*decision.reasons, why),
            escalated_from=(*decision.escalated_from, decision.model),
        )

    def cheaper_tiers(self, decision: RouteDecision) -> list[str]:
        """Models below the decision's model, nearest first: what to try when the budget
        cannot cover the chosen one. Empty when forced or routing is off."""
        if decision.forced or not decision.ladder or decision.model not in decision.ladder:
            return []
        index = decision.ladder.index(decision.model)
        return list(reversed(decision.ladder[:index]))


# --------------------------------------------------------------------------- step failures

_REFUSAL = re.compile(
    r"^\W*(?:(?:I'?m|I am) (?:really |very )?sorry|sorry|I apologi[sz]e|unfortunately)?[,.!]?\s*"
    r"(?:but\s+)?(?:as an ai(?: language model)?,?\s+)?"
    r"I(?:'m| am)? (?:can(?:no|')t|cannot|(?:am |'m )?(?:not able|unable)|won'?t|will not"
    r"|must decline)\s+(?:to\s+)?(?:help|assist|comply|provide|do that|fulfil+|support|answer"
    r"|complete|engage|create|share|generate)",
    re.IGNORECASE,
)
_REFUSAL_MAX_CHARS = 400  # a long answer that says "I can't" somewhere is not a refusal


def _offered_tool_names(tools: Sequence[Any] | None) -> set[str]:
    names: set[str] = set()
    for tool in tools or ():
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.add(function["name"])
        elif isinstance(tool.get("name"), str):
            names.add(tool["name"])
    return names


def check_step_failure(
    response_body: Mapping[str, Any], tools: Sequence[Any] | None = None
) -> str | None:
    """A checkable failure in a chat completion, which escalating one tier may fix.

    Checked: tool-call arguments that are not a JSON object, a tool name that was not offered,
    an empty answer (no content and no tool calls), and a refusal (``message.refusal`` set, a
    ``content_filter`` finish, or a short answer that opens with a refusal).

    Args:
        response_body: the JSON body of a ``chat.completions`` response.
        tools: the tools the request offered.

    Returns:
        What failed, in words, or ``None`` if nothing checkable did.
    """
    choices = response_body.get("choices")
    if not isinstance(choices, Sequence) or not choices:
        return "empty answer: no choices"
    offered = _offered_tool_names(tools)
    for position, choice in enumerate(choices):
        where = f"choice {position}: " if len(choices) > 1 else ""
        problem = _choice_failure(choice, offered)
        if problem:
            return where + problem
    return None


def check_answer_failure(answer: Answer, tools: Sequence[Any] | None = None) -> str | None:
    """A checkable failure in any API's answer, as its dialect read it (the Responses API's
    output items, Anthropic's content blocks), which escalating one tier may fix.

    Checked as for chat completions: a refusal or a content-filter stop, a tool call naming a
    tool that was not offered or with arguments that are not a JSON object, an empty answer.

    Args:
        answer: what the response said, read by its dialect.
        tools: the tools the request offered (any API's shape).

    Returns:
        What failed, in words, or ``None`` if nothing checkable did.
    """
    if answer.refusal is not None:
        return f"refusal: {' '.join(answer.refusal.split())[:80]}"
    if answer.filtered:
        return "refusal: stopped by the content filter"
    offered = _offered_tool_names(tools)
    for call in answer.tool_calls:
        if call.name not in offered:
            offered_text = ", ".join(sorted(offered)) or "none"
            return f"tool call names unknown tool {call.name!r} (offered: {offered_text})"
        if not call.arguments.strip():
            continue
        try:
            parsed = json.loads(call.arguments)
        except ValueError as exc:
            return f"invalid JSON arguments for tool {call.name!r}: {exc}"
        if not isinstance(parsed, dict):
            kind = type(parsed).__name__
            return f"invalid tool call arguments for {call.name!r}: JSON {kind}, not an object"
    text = answer.text
    if not answer.tool_calls and not text.strip():
        return "empty answer: no content and no tool calls"
    if text and len(text) <= _REFUSAL_MAX_CHARS and _REFUSAL.search(text):
        return f"refusal: {' '.join(text.split())[:80]}"
    return None


def _choice_failure(choice: Any, offered: set[str]) -> str | None:
    if not isinstance(choice, Mapping):
        return "empty answer: malformed choice"
    message = choice.get("message")
    if not isinstance(message, Mapping):
        return "empty answer: no message"
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        return f"refusal: {' '.join(refusal.split())[:80]}"
    if choice.get("finish_reason") == "content_filter":
        return "refusal: stopped by the content filter"
    calls = list(message.get("tool_calls") or ())
    legacy = message.get("function_call")
    if isinstance(legacy, Mapping):
        calls.append({"function": legacy})
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            return "invalid tool call: no function"
        name = function.get("name")
        if not isinstance(name, str) or name not in offered:
            offered_text = ", ".join(sorted(offered)) or "none"
            return f"tool call names unknown tool {name!r} (offered: {offered_text})"
        arguments = function.get("arguments")
        # An empty string means "no arguments" to most tool runners, so it is not a failure.
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            continue
        if not isinstance(arguments, str):
            return f"invalid tool call arguments for {name!r}: not a JSON string"
        try:
            parsed = json.loads(arguments)
        except ValueError as exc:
            return f"invalid JSON arguments for tool {name!r}: {exc}"
        if not isinstance(parsed, dict):
            kind = type(parsed).__name__
            return f"invalid tool call arguments for {name!r}: JSON {kind}, not an object"
    content, _ = _content_text(message.get("content"))
    if not calls and not content.strip():
        return "empty answer: no content and no tool calls"
    if content and len(content) <= _REFUSAL_MAX_CHARS and _REFUSAL.search(content):
        return f"refusal: {' '.join(content.split())[:80]}"
    return None
