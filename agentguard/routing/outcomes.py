"""How routed calls ended, and what routing learns from it.

The pipeline logs one ``route_outcome`` event per routed call when the call ends: the tier the
router chose, the kind of step, its score, and whether the step was escalated, fell back to
another model, was parked or failed (:func:`outcome_fields`). From those JSON lines:

- :func:`report` counts, per tier and kind of step, how often steps were escalated, fell back,
  parked or failed (``agentguard route report``);
- :func:`calibrate_escalation` moves ``routing.threshold`` toward a target share of cheap steps
  that get escalated (``agentguard route calibrate --target-escalation-rate``).

Nothing here runs inside the pipeline's decisions: a threshold changes only when someone puts
the printed value in the config.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentguard.routing.calibrate import event_score, logged_events

if TYPE_CHECKING:
    from agentguard.routing import RouteDecision

__all__ = [
    "EscalationCalibration",
    "Outcome",
    "ReportRow",
    "calibrate_escalation",
    "outcome_fields",
    "read_outcomes",
    "report",
    "step_kind",
]

_MIN_THRESHOLD = 1e-4
_MAX_THRESHOLD = 1 - 1e-4


def step_kind(decision: RouteDecision) -> str:
    """The kind of step a decision was for: ``tool_result`` (digesting tool output),
    ``first_step`` (the task), ``user_turn`` (a later user message) or ``forced`` (pinned, not
    classified)."""
    features = decision.features
    if features is None:
        return "forced" if decision.forced else "unrouted"
    if features.digesting_tool_result:
        return "tool_result"
    return "first_step" if features.step_index == 0 else "user_turn"


def outcome_fields(
    decision: RouteDecision, *, final_model: str, result: str, escalations: int, fallbacks: int
) -> dict[str, Any]:
    """The fields of the ``route_outcome`` event of one routed call.

    Args:
        decision: the router's first decision for the call.
        final_model: the model that answered (or was last tried).
        result: ``ok``, ``failed`` or ``parked``.
        escalations: how many times the step was sent one tier up.
        fallbacks: how many times it moved along its fallback chain.
    """
    top = bool(decision.ladder) and decision.model == decision.ladder[-1]
    return {
        "tier": decision.tier or "caller model",
        "model": decision.model,
        "final_model": final_model,
        "kind": step_kind(decision),
        "score": decision.score,
        "cheap": bool(decision.ladder) and not top,
        "escalations": escalations,
        "fallbacks": fallbacks,
        "result": result,
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    """One recorded ``route_outcome`` event."""

    tier: str
    kind: str
    score: float | None
    cheap: bool
    escalated: bool
    fell_back: bool
    result: str


def read_outcomes(lines: Iterable[str], source: str = "events") -> list[Outcome]:
    """The ``route_outcome`` events in JSON lines (other events and lines are skipped).

    Raises:
        ValueError: an outcome event's score is not a number between 0 and 1 (names the line).
    """
    found: list[Outcome] = []
    for number, event in logged_events(lines, "route_outcome"):
        score = event_score(event, "route_outcome", source, number)
        found.append(
            Outcome(
                tier=str(event.get("tier")),
                kind=str(event.get("kind")),
                score=score,
                cheap=bool(event.get("cheap")),
                escalated=_count(event.get("escalations")) > 0,
                fell_back=_count(event.get("fallbacks")) > 0,
                result=str(event.get("result")),
            )
        )
    return found


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class ReportRow:
    """Outcomes of the steps of one tier and kind.

    Attributes:
        tier: the tier the router chose first.
        kind: the kind of step (see :func:`step_kind`).
        steps: how many steps.
        escalated: how many were sent up a tier after a checkably bad answer.
        fell_back: how many moved to another model of their fallback chain.
        parked: how many were parked.
        failed: how many failed.
    """

    tier: str
    kind: str
    steps: int
    escalated: int
    fell_back: int
    parked: int
    failed: int

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready fields, with its rates."""
        return {
            "tier": self.tier,
            "kind": self.kind,
            "steps": self.steps,
            "escalated": self.escalated,
            "fell_back": self.fell_back,
            "parked": self.parked,
            "failed": self.failed,
            "escalation_rate": round(self.escalated / self.steps, 4),
            "fallback_rate": round(self.fell_back / self.steps, 4),
        }


def report(outcomes: Sequence[Outcome]) -> list[ReportRow]:
    """Outcome counts per tier and kind of step, in the order tiers and kinds first appear."""
    rows: dict[tuple[str, str], list[int]] = {}
    for outcome in outcomes:
        counts = rows.setdefault((outcome.tier, outcome.kind), [0, 0, 0, 0, 0])
        counts[0] += 1
        counts[1] += outcome.escalated
        counts[2] += outcome.fell_back
        counts[3] += outcome.result == "parked"
        counts[4] += outcome.result == "failed"
    tiers = list(dict.fromkeys(tier for tier, _ in rows))
    return [
        ReportRow(tier, kind, *rows[(tier, kind)])
        for tier in tiers
        for kind in dict.fromkeys(k for t, k in rows if t == tier)
    ]


@dataclass(frozen=True, slots=True)
class EscalationCalibration:
    """A threshold moved toward a target escalation rate, and what it does on the recorded
    steps.

    Attributes:
        threshold: the value for ``routing.threshold``.
        target_escalation_rate: the share of cheap steps asked to be escalated.
        escalation_rate: the share of the recorded cheap steps scoring under ``threshold``
            that were escalated.
        large_share: the share of all recorded scored steps at or above ``threshold``.
        events: how many scored ``route_outcome`` events were read.
    """

    threshold: float
    target_escalation_rate: float
    escalation_rate: float
    large_share: float
    events: int

    def as_dict(self) -> dict[str, Any]:
        """The calibration as JSON-ready fields."""
        return {
            "threshold": self.threshold,
            "target_escalation_rate": self.target_escalation_rate,
            "escalation_rate": self.escalation_rate,
            "large_share": self.large_share,
            "events": self.events,
        }


def calibrate_escalation(
    outcomes: Sequence[Outcome], target_escalation_rate: float
) -> EscalationCalibration:
    """The threshold under which the recorded cheap steps were escalated at about the target
    rate.

    Harder steps (higher scores) are escalated more often, so the steps sent cheap are sorted
    by score and the threshold is put just above the highest-scoring prefix whose escalation
    rate stays within the target (halfway to the next score). Steps above the old threshold
    were never tried cheap, so when every recorded cheap step is within the target the
    threshold moves only halfway into the steps sent up: a step toward the target, to be
    calibrated again on the traffic it produces.

    Args:
        outcomes: recorded ``route_outcome`` events.
        target_escalation_rate: the wanted share of cheap steps escalated, 0..1.

    Raises:
        ValueError: a target outside 0..1, or no scored cheap steps recorded.
    """
    if not 0 <= target_escalation_rate <= 1:
        raise ValueError(
            f"target escalation rate must be between 0 and 1, got {target_escalation_rate}"
        )
    scored = [outcome for outcome in outcomes if outcome.score is not None]
    cheap = sorted((o for o in scored if o.cheap), key=lambda o: o.score or 0.0)
    if not cheap:
        raise ValueError("no scored cheap steps among the route_outcome events to calibrate on")
    escalated = 0
    best = -1  # index of the last cheap step kept under the threshold
    for index, outcome in enumerate(cheap):
        escalated += outcome.escalated
        if escalated / (index + 1) <= target_escalation_rate:
            best = index
    scores = [o.score or 0.0 for o in cheap]
    if best < 0:
        threshold = scores[0] / 2  # even the easiest cheap steps fail too often: send them up
    elif best + 1 < len(scores):
        threshold = (scores[best] + scores[best + 1]) / 2
    else:
        above = [o.score or 0.0 for o in scored if not o.cheap and (o.score or 0.0) > scores[-1]]
        ceiling = min(above) if above else 1.0
        threshold = (scores[-1] + ceiling) / 2
    threshold = math.floor(min(_MAX_THRESHOLD, max(_MIN_THRESHOLD, threshold)) * 1e6) / 1e6
    kept = [o for o in cheap if (o.score or 0.0) < threshold]
    rate = sum(o.escalated for o in kept) / len(kept) if kept else 0.0
    large = sum(1 for o in scored if (o.score or 0.0) >= threshold) / len(scored)
    return EscalationCalibration(
        threshold, target_escalation_rate, round(rate, 4), round(large, 4), len(scored)
    )
