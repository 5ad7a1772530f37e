"""Calibrating ``routing.threshold`` to a target share of large-tier calls.

The router logs one ``route`` event per routed call, with the classifier's ``score`` (JSON
lines when :func:`agentguard.configure_logging` writes to a file). The threshold that sends a
share ``s`` of those calls up is the score that ``s`` of the recorded scores reach: the
``1 - s`` quantile. Recorded traffic is the right place to calibrate because the share of hard
steps differs from one application to the next.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Calibration", "calibrate_threshold", "read_route_scores"]

# The threshold stays inside (0, 1): ``routing.threshold`` must be a probability strictly
# between the two, and a threshold of exactly 0 or 1 would make a tier unreachable by design.
_MIN_THRESHOLD = 1e-4
_MAX_THRESHOLD = 1 - 1e-4


@dataclass(frozen=True, slots=True)
class Calibration:
    """A calibrated threshold and what it does on the events it was computed from.

    Attributes:
        threshold: the value for ``routing.threshold``.
        target_large_share: the share of large-tier calls asked for.
        large_share: the share of the recorded steps that score at or above ``threshold``.
        events: how many scored ``route`` events were read.
    """

    threshold: float
    target_large_share: float
    large_share: float
    events: int

    def as_dict(self) -> dict[str, Any]:
        """The calibration as JSON-ready fields."""
        return {
            "threshold": self.threshold,
            "target_large_share": self.target_large_share,
            "large_share": self.large_share,
            "events": self.events,
        }


def read_route_scores(lines: Iterable[str], source: str = "events") -> list[float]:
    """The scores of the ``route`` events in JSON lines (other events and lines are skipped).

    Events without a score (forced calls, routing off) say nothing about the classifier and are
    skipped too.

    Raises:
        ValueError: a ``route`` event's score is not a number between 0 and 1 (names the line).
    """
    scores: list[float] = []
    for number, event in logged_events(lines, "route"):
        score = event_score(event, "route", source, number)
        if score is not None:
            scores.append(score)
    return scores


def logged_events(lines: Iterable[str], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The events called ``name`` in a JSON-lines log, with their line numbers (other lines,
    and lines that are not JSON objects, are skipped: a log holds more than agentguard's)."""
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            yield number, event


def event_score(event: dict[str, Any], name: str, source: str, number: int) -> float | None:
    """An event's ``score``, or ``None`` when it has none.

    Raises:
        ValueError: the score is not a number between 0 and 1 (names the source and line).
    """
    score = event.get("score")
    if score is None:
        return None
    if not isinstance(score, int | float) or isinstance(score, bool) or not 0 <= score <= 1:
        raise ValueError(f"{source} line {number}: {name} event score {score!r} is not in 0..1")
    return float(score)


def calibrate_threshold(scores: Sequence[float], target_large_share: float) -> Calibration:
    """The threshold that sends ``target_large_share`` of the steps to the large tier.

    Args:
        scores: recorded step scores.
        target_large_share: the wanted share of large-tier calls, between 0 and 1.

    Raises:
        ValueError: no scores, or a target outside 0..1.
    """
    if not 0 <= target_large_share <= 1:
        raise ValueError(f"target large share must be between 0 and 1, got {target_large_share}")
    if not scores:
        raise ValueError("no scored route events to calibrate on")
    ordered = sorted(scores, reverse=True)
    wanted = round(target_large_share * len(ordered))
    if wanted <= 0:
        threshold = ordered[0] + (1 - ordered[0]) / 2  # above every recorded score
    elif wanted >= len(ordered):
        threshold = ordered[-1]
    else:
        # Halfway between the last score sent up and the first kept down.
        threshold = (ordered[wanted - 1] + ordered[wanted]) / 2
    threshold = min(_MAX_THRESHOLD, max(_MIN_THRESHOLD, threshold))
    threshold = math.floor(threshold * 1e6) / 1e6
    large = sum(1 for score in ordered if score >= threshold) / len(ordered)
    return Calibration(threshold, target_large_share, round(large, 4), len(ordered))
