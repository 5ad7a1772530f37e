"""The most a chat completion can cost, before it is sent: the amount the ledger reserves.

The bound covers everything the provider bills for the request:

* **Input**: the counted messages and tool definitions, plus a margin for the provider's own
  framing; images at their billed size (:mod:`agentguard.pricing.images`: by detail and pixel size,
  the family's maximum when the size is not known); legacy ``functions`` and a
  ``response_format`` schema counted as their JSON.
* **Output**: the request's output cap (``max_completion_tokens``/``max_tokens``, the larger
  if both are set), which on reasoning models includes the hidden reasoning tokens, priced at
  the dearer of the output and reasoning rates.
* **n choices**: output times ``n``; input times ``n`` too unless the price is OpenAI's (OpenAI
  bills the prompt once).
* **service_tier**: priced at every tier the request may be served at (the requested one and
  the standard one) and the dearest taken. Settlement uses the tier the response reports.

Under a budget, what cannot be bounded is refused with
:class:`~agentguard.UnmeteredRequest`, before anything is sent: audio in or out (the price data
has no audio rates to bound it with), ``file`` parts, content parts of an unknown type, and a
request with no output cap when ``limits.enforce_output_cap`` is off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agentguard.errors import UnmeteredRequest
from agentguard.pricing.images import image_tokens
from agentguard.tokens import IMAGE_TOKENS, IMAGE_TOKENS_LOW_DETAIL

if TYPE_CHECKING:
    from agentguard.pricing import ModelPrice, Pricer
    from agentguard.tokens import TokenCounter

__all__ = ["Bound", "bound_request", "output_cap", "refuse_unbounded", "settle_price"]

_ENDPOINT = "/chat/completions"
_TEXT_PARTS = frozenset({"text", "refusal"})
_PRICED_TIERS = frozenset({"priority", "flex", "scale"})
"""Tiers with prices of their own; ``auto`` and ``default`` are the standard price."""


@dataclass(frozen=True, slots=True)
class Bound:
    """A request's worst case.

    Attributes:
        usd: the most the request can cost.
        input_tokens: the billed input it was priced with (per choice where input is billed
            per choice), margin included.
        output_tokens: the output it was priced with, all choices together.
        price: the model's standard price (what the call settles at unless the response
            reports another tier).
        service_tier: the tier the bound was priced at (``None`` for the standard price).
    """

    usd: Decimal
    input_tokens: int
    output_tokens: int
    price: ModelPrice
    service_tier: str | None


def output_cap(body: Mapping[str, Any]) -> int | None:
    """The request's own output cap: the larger of ``max_completion_tokens`` and
    ``max_tokens`` when either is a positive integer, else ``None``."""
    cap: int | None = None
    for value in (body.get("max_completion_tokens"), body.get("max_tokens")):
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value > 0
            and (cap is None or value > cap)
        ):
            cap = value
    return cap


def bound_request(
    body: Mapping[str, Any],
    model: str,
    *,
    counted_input: int,
    max_output_tokens: int,
    output_capped: bool,
    pricer: Pricer,
    counter: TokenCounter,
    budgeted: bool,
) -> Bound:
    """The worst case of a chat completion request.

    Args:
        body: the request as it will be sent.
        model: the model it goes to.
        counted_input: the counter's count of its messages and tools.
        max_output_tokens: the output cap per choice.
        output_capped: whether the request carries that cap (otherwise the provider may
            generate more).
        pricer: prices per model and tier.
        counter: counts schemas the input count left out.
        budgeted: a dollar budget applies: refuse what cannot be bounded.

    Raises:
        UnmeteredRequest: under a budget, a part of the request cannot be bounded.
        PricingError: the model has no price.
    """
    image_surplus, part_problem = _scan_parts(body, model)
    problem = _unbounded(body, output_capped, part_problem)
    if problem is not None and budgeted:
        raise _refusal(problem)
    extra = image_surplus + _schema_tokens(body, model, counter)
    input_tokens = counted_input + extra
    # A margin over the counted input: a provider's own accounting (tool-call framing,
    # message wrappers) can run a few percent above any client-side count.
    input_tokens += input_tokens // 20 + 16
    choices = _choices(body)
    output_tokens = max_output_tokens * choices
    requested = body.get("service_tier")
    tiers: list[str | None] = [None]
    if isinstance(requested, str) and requested in _PRICED_TIERS:
        tiers.append(requested)
    standard = pricer.price(model)
    worst: tuple[Decimal, str | None] | None = None
    for tier in tiers:
        price = standard if tier is None else pricer.price(model, service_tier=tier)
        billed_input = input_tokens if price.provider == "openai" else input_tokens * choices
        usd = price.worst_case(billed_input, output_tokens)
        if worst is None or usd > worst[0]:
            worst = (usd, tier)
    assert worst is not None
    return Bound(worst[0], input_tokens, output_tokens, standard, worst[1])


def refuse_unbounded(body: Mapping[str, Any], *, output_capped: bool) -> None:
    """Refuse, before anything else happens to the call, a request whose cost cannot be
    bounded (the same rules :func:`bound_request` applies under a budget).

    Raises:
        UnmeteredRequest: a part of the request cannot be bounded.
    """
    _, part_problem = _scan_parts(body, "")
    problem = _unbounded(body, output_capped, part_problem)
    if problem is not None:
        raise _refusal(problem)


def _refusal(problem: tuple[str, str, str]) -> UnmeteredRequest:
    reason, fix, field = problem
    return UnmeteredRequest(
        f"refused before sending: {reason}, so the call's worst-case cost cannot be bounded "
        f"and the session runs under a budget; {fix}",
        endpoint=_ENDPOINT,
        reason=reason,
        field=field,
    )


def settle_price(
    pricer: Pricer, model: str, reported_tier: object, bound: Bound | None
) -> ModelPrice | None:
    """The price a response settles at: the tier it reports (``None`` for the bound's
    standard price); a response that reports no tier settles at the tier it was reserved at."""
    if isinstance(reported_tier, str) and reported_tier:
        if reported_tier in _PRICED_TIERS:
            return pricer.price(model, service_tier=reported_tier)
        return None
    if bound is not None and bound.service_tier is not None:
        return pricer.price(model, service_tier=bound.service_tier)
    return None


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return n
    return 1


def _unbounded(
    body: Mapping[str, Any], output_capped: bool, part_problem: tuple[str, str, str] | None
) -> tuple[str, str, str] | None:
    """Why the request's cost cannot be bounded, with the fix and the field: or ``None``."""
    if not output_capped:
        return (
            "the request sets no max_completion_tokens and limits.enforce_output_cap is off",
            "set max_completion_tokens on the request, or limits.enforce_output_cap = true",
            "limits.enforce_output_cap",
        )
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        return (
            "it asks for audio output, which the price data gives no audio rate for",
            "ask for text output only, or call without a budget",
            "audio",
        )
    return part_problem


def _scan_parts(body: Mapping[str, Any], model: str) -> tuple[int, tuple[str, str, str] | None]:
    """One pass over the messages' content parts: the billed image tokens beyond what the
    counter counted for them, and the first part whose cost cannot be bounded (if any)."""
    messages = body.get("messages")
    if type(messages) is not list:
        return 0, None
    surplus = 0
    problem: tuple[str, str, str] | None = None
    # Runs on every call: plain dicts with string content (nearly every message) are skipped
    # first, without the slow abstract Mapping test.
    for index, message in enumerate(messages):
        if type(message) is dict and type(message.get("content")) is not list:
            continue
        content = message.get("content") if isinstance(message, Mapping) else None
        if type(content) is not list:
            continue
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in _TEXT_PARTS:
                continue
            if kind == "image_url":
                assert isinstance(part, Mapping)
                image = part.get("image_url")
                detail = image.get("detail") if isinstance(image, Mapping) else None
                counted = IMAGE_TOKENS_LOW_DETAIL if detail == "low" else IMAGE_TOKENS
                surplus += max(0, image_tokens(model, image) - counted)
            elif problem is None:
                problem = _part_problem(f"messages[{index}].content", kind)
    return surplus, problem


def _part_problem(where: str, kind: object) -> tuple[str, str, str]:
    if kind == "input_audio":
        return (
            f"{where} holds audio input, which the price data gives no audio rate for",
            "send the audio as a transcript, or call without a budget",
            where,
        )
    if kind == "file":
        return (
            f"{where} holds a file, whose pages are billed as text and images of unknown size",
            "send the file's text instead, or call without a budget",
            where,
        )
    return (
        f"{where} holds a content part of type {str(kind)[:40]!r}, which agentguard does not "
        f"know how to price",
        "send text and image_url parts only, or call without a budget",
        where,
    )


def _schema_tokens(body: Mapping[str, Any], model: str, counter: TokenCounter) -> int:
    """Legacy ``functions`` and a ``response_format`` schema: the model sees them too."""
    tokens = 0
    for name in ("functions", "response_format"):
        value = body.get(name)
        if value and isinstance(value, Mapping | list):
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
            tokens += counter.count_text(text, model) + 12
    return tokens
