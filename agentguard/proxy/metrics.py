"""Counters the proxy exposes at ``/metrics`` in Prometheus' text format."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentguard.engine import CallContext

__all__ = ["Metrics"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


MAX_LABEL_SETS = 1000
"""Distinct (budget key, model) pairs kept apart; later ones are counted as model ``other``
(a client naming models at random must not grow the proxy's memory without bound)."""


class Metrics:
    """Calls, tokens and dollars settled, and refusals, per budget key and model."""

    def __init__(self) -> None:
        self._pairs: set[tuple[str, str]] = set()
        self.calls: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.dollars: defaultdict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self.input_tokens: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.output_tokens: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.refusals: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        """By (budget key, model, kind: ``refused``, ``parked``, ``limit``, ``error``)."""

    def _labels(self, budget_key: str, model: str) -> tuple[str, str]:
        pair = (budget_key[:200], model[:200])
        if pair not in self._pairs:
            if len(self._pairs) >= MAX_LABEL_SETS:
                return (pair[0], "other")
            self._pairs.add(pair)
        return pair

    def observe(self, call: CallContext) -> None:
        """Count one settled call (a pipeline observer)."""
        labels = self._labels(call.session.budget_key, call.model)
        self.calls[labels] += 1
        cost = call.notes.get("cost_usd")
        if cost is not None:
            self.dollars[labels] += cost
        usage = call.notes.get("usage")
        if usage is not None:
            self.input_tokens[labels] += usage.input_tokens
            self.output_tokens[labels] += usage.output_tokens

    def refused(self, budget_key: str, model: str, kind: str) -> None:
        """Count a request the proxy answered with an error of its own."""
        self.refusals[(*self._labels(budget_key, model), kind)] += 1

    def render(self) -> str:
        """The counters in Prometheus' text exposition format."""
        lines: list[str] = []

        def family(name: str, help_text: str, values: Mapping[Any, object]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} counter")
            for labels, value in sorted(values.items()):
                names = ("budget_key", "model", "kind")[: len(labels)]
                text = ",".join(f'{n}="{_label(v)}"' for n, v in zip(names, labels, strict=True))
                lines.append(f"{name}{{{text}}} {value}")

        family("agentguard_proxy_calls_total", "Model calls settled.", dict(self.calls))
        family(
            "agentguard_proxy_dollars_total",
            "Dollars settled at list price.",
            {k: f"{v:f}" for k, v in self.dollars.items()},
        )
        family(
            "agentguard_proxy_input_tokens_total", "Input tokens billed.", dict(self.input_tokens)
        )
        family(
            "agentguard_proxy_output_tokens_total",
            "Output tokens billed.",
            dict(self.output_tokens),
        )
        family(
            "agentguard_proxy_refusals_total",
            "Requests answered with the proxy's own error, by kind (parked: a 429 until a reset).",
            dict(self.refusals),
        )
        return "\n".join(lines) + "\n"
