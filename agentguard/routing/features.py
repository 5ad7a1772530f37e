"""What the router knows about a step and what it concludes: the types every classifier
(heuristic, learned, LLM) shares."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["Classification", "Label", "StepFeatures", "StepOutcome"]

Label: TypeAlias = Literal["easy", "medium", "hard"]
StepOutcome: TypeAlias = Literal["ok", "failed", "escalated"]


@dataclass(frozen=True, slots=True)
class StepFeatures:
    """What the router knows about one model call, extracted from its messages.

    Signal fields hold the names of the signals that matched (``("stack_trace", "diff")``), so
    a decision can say why it was made.

    Attributes:
        text: the latest user message (head and tail of it when long).
        instruction: the part of ``text`` that says what to do, without pasted data.
        tool_text: the tool results the model is about to digest (head and tail of each).
        tools_offered: how many tools the call offers.
        digesting_tool_result: the last message is a tool result.
        tool_results_in_batch: tool messages after the last assistant message.
        code_signals: code in the user message: ``fenced_code``, ``stack_trace``,
            ``test_failure``, ``diff``, ``file_path``, ``code_syntax``.
        tool_code_signals: a failure the tool results report: ``stack_trace``,
            ``test_failure``.
        math_signals: maths asked for in the instruction: ``proof``, ``math_terms``,
            ``notation``.
        reasoning_signals: multi-step work asked for: ``planning``, ``debugging``,
            ``explain_why``, ``refactoring``, ``synthesis``, ``code_review``,
            ``open_question``.
        easy_signals: bounded work asked for: ``classify``, ``constrained_answer``,
            ``extract``, ``lookup``, ``convert``, ``small_edit``, ``short_summary``.
        instruction_words: words in ``instruction``.
        file_mentions: distinct file paths in the user message.
        input_tokens: tokens of the whole request, as counted by the caller.
        step_index: position of this call in the session (0 for the first).
        previous_outcome: how the previous step ended, if known.
        has_images: the user message carries images.
    """

    text: str
    instruction: str
    tool_text: str
    tools_offered: int
    digesting_tool_result: bool
    tool_results_in_batch: int
    code_signals: tuple[str, ...]
    tool_code_signals: tuple[str, ...]
    math_signals: tuple[str, ...]
    reasoning_signals: tuple[str, ...]
    easy_signals: tuple[str, ...]
    instruction_words: int
    file_mentions: int
    input_tokens: int
    step_index: int = 0
    previous_outcome: StepOutcome | None = None
    has_images: bool = False

    @property
    def has_tools(self) -> bool:
        """Whether the call offers the model any tools."""
        return self.tools_offered > 0


@dataclass(frozen=True, slots=True)
class Classification:
    """How hard a step is.

    Attributes:
        label: ``"easy"``, ``"medium"`` or ``"hard"``.
        score: complexity in [0, 1]; higher is harder.
        confidence: in [0, 1]; how far the score is from a label boundary (for the heuristic)
            or how clearly the LLM answered.
        reasons: what led to the label, most telling first.
        uncertain: the score is close to a boundary (the heuristic) or the answer could not be
            read (the LLM): a cascade asks a second opinion.
        source: which classifier decided (``"learned"``, ``"heuristic"``, ``"llm"``,
            ``"cascade"``).
    """

    label: Label
    score: float
    confidence: float
    reasons: tuple[str, ...] = ()
    uncertain: bool = False
    source: str = "heuristic"

    def tier_index(self, tier_count: int) -> int:
        """The tier this label asks for on a ladder of ``tier_count`` tiers, cheapest first.

        ``easy`` is the cheapest tier and ``hard`` the top; ``medium`` is the middle, rounded
        up, so on a two-tier ladder a step that is not clearly easy gets the stronger model.
        """
        if tier_count <= 1 or self.label == "easy":
            return 0
        if self.label == "hard":
            return tier_count - 1
        return math.ceil((tier_count - 1) / 2)
