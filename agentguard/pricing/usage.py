"""What a call used, read from any provider's usage report, in the shape pricing needs.

:class:`Usage` is provider-neutral: OpenAI chat and Responses usage, Anthropic's (with its cache
reads and 5-minute and 1-hour cache writes) and decoded JSON all map onto it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call (or several, summed) used, counted the way OpenAI reports them.

    ``input_tokens`` includes the cached and cache-write tokens; ``output_tokens`` includes the
    reasoning tokens. The breakdowns say how many of those tokens are billed at another rate.

    Attributes:
        input_tokens: all prompt tokens.
        cached_input_tokens: prompt tokens read from the provider's prompt cache.
        output_tokens: all generated tokens, reasoning included.
        reasoning_tokens: generated tokens spent on hidden reasoning.
        cache_write_tokens: prompt tokens written to the prompt cache (providers that bill
            cache writes; OpenAI does not), at any cache lifetime.
        cache_write_1h_tokens: of the cache writes, those kept for an hour (Anthropic bills
            them above the default 5-minute writes).

    Raises:
        ValueError: a count is negative, or a breakdown exceeds its total.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def __post_init__(self) -> None:
        if (
            min(
                self.input_tokens,
                self.cached_input_tokens,
                self.output_tokens,
                self.reasoning_tokens,
                self.cache_write_tokens,
                self.cache_write_1h_tokens,
            )
            < 0
        ):
            raise ValueError(f"token counts cannot be negative: {self!r}")
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                f"cached ({self.cached_input_tokens}) plus cache-write ({self.cache_write_tokens}) "
                f"tokens exceed input_tokens ({self.input_tokens}); input_tokens includes them"
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(
                f"cache_write_1h_tokens ({self.cache_write_1h_tokens}) exceed cache_write_tokens "
                f"({self.cache_write_tokens}); cache_write_tokens includes them"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(
                f"reasoning_tokens ({self.reasoning_tokens}) exceed output_tokens "
                f"({self.output_tokens}); output_tokens includes them"
            )

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | object | None) -> Usage | None:
        """Read the ``usage`` of an OpenAI response.

        Accepts the Chat Completions shape (``prompt_tokens``, ``completion_tokens``,
        ``prompt_tokens_details.cached_tokens``, ``completion_tokens_details.reasoning_tokens``)
        and the Responses shape (``input_tokens``, ``output_tokens``,
        ``input_tokens_details.cached_tokens``, ``output_tokens_details.reasoning_tokens``),
        as a mapping (decoded JSON) or as the SDK's pydantic objects. Missing or ``None``
        details count as zero.

        Args:
            usage: the response's ``usage``, or ``None``.

        Returns:
            The usage, or ``None`` when the response reported none.

        Raises:
            ValueError: a count is not a whole number.
        """
        if usage is None:
            return None
        if isinstance(usage, Usage):
            return usage
        if type(usage) is dict:
            fast = _from_chat_dict(usage)
            if fast is not None:
                return fast
        prompt = _read(usage, "prompt_tokens")
        completion = _read(usage, "completion_tokens")
        if prompt is not None or completion is not None:
            input_name, output_name = "prompt_tokens", "completion_tokens"
        else:
            prompt = _read(usage, "input_tokens")
            completion = _read(usage, "output_tokens")
            if prompt is None and completion is None:
                return None
            input_name, output_name = "input_tokens", "output_tokens"
        input_details = _read(usage, f"{input_name}_details")
        output_details = _read(usage, f"{output_name}_details")

        input_tokens = _count(prompt, input_name)
        output_tokens = _count(completion, output_name)
        cached = _count(_read(input_details, "cached_tokens"), "cached_tokens")
        cache_write = _count(_read(input_details, "cache_write_tokens"), "cache_write_tokens")
        reasoning = _count(_read(output_details, "reasoning_tokens"), "reasoning_tokens")
        # The call has been paid for by now, so a provider whose breakdown exceeds its total
        # must not lose the record. Clamping moves tokens to the full rate, never below it.
        cached = min(cached, input_tokens)
        cache_write = min(cache_write, input_tokens - cached)
        reasoning = min(reasoning, output_tokens)
        return cls(
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output_tokens,
            reasoning_tokens=reasoning,
            cache_write_tokens=cache_write,
        )

    @classmethod
    def from_anthropic(cls, usage: Mapping[str, Any] | object | None) -> Usage | None:
        """Read the ``usage`` of an Anthropic Messages response.

        Anthropic's ``input_tokens`` leaves out the prompt tokens read from the cache
        (``cache_read_input_tokens``) and written to it (``cache_creation_input_tokens``);
        agentguard's ``input_tokens`` includes them. The writes are split by lifetime in
        ``cache_creation.ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``; without
        that split every write counts as a 5-minute one (the API's default lifetime).

        Args:
            usage: the response's ``usage`` (decoded JSON or the SDK's object), or ``None``.

        Returns:
            The usage, or ``None`` when the response reported none.

        Raises:
            ValueError: a count is not a whole number.
        """
        if usage is None:
            return None
        uncached = _read(usage, "input_tokens")
        output = _read(usage, "output_tokens")
        if uncached is None and output is None:
            return None
        read = _count(_read(usage, "cache_read_input_tokens"), "cache_read_input_tokens")
        written = _count(_read(usage, "cache_creation_input_tokens"), "cache_creation_input_tokens")
        split = _read(usage, "cache_creation")
        written_5m = _count(_read(split, "ephemeral_5m_input_tokens"), "ephemeral_5m_input_tokens")
        written_1h = _count(_read(split, "ephemeral_1h_input_tokens"), "ephemeral_1h_input_tokens")
        # The split and the total should agree; if not, the larger is billed.
        written = max(written, written_5m + written_1h)
        return cls(
            input_tokens=_count(uncached, "input_tokens") + read + written,
            cached_input_tokens=read,
            output_tokens=_count(output, "output_tokens"),
            cache_write_tokens=written,
            cache_write_1h_tokens=written_1h,
        )

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens + other.cache_write_1h_tokens,
        )

    def __radd__(self, other: object) -> Usage:
        # sum() starts from 0.
        if other == 0:
            return self
        return NotImplemented


def _from_chat_dict(usage: dict[str, Any]) -> Usage | None:
    """The common case, decoded JSON of a chat completion's usage, without the general path's
    per-field checks (this runs on every call)."""
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if type(prompt) is not int or type(completion) is not int or prompt < 0 or completion < 0:
        return None
    input_details = usage.get("prompt_tokens_details") or {}
    output_details = usage.get("completion_tokens_details") or {}
    if type(input_details) is not dict or type(output_details) is not dict:
        return None
    cached = input_details.get("cached_tokens") or 0
    cache_write = input_details.get("cache_write_tokens") or 0
    reasoning = output_details.get("reasoning_tokens") or 0
    if type(cached) is not int or type(cache_write) is not int or type(reasoning) is not int:
        return None
    if cached < 0 or cache_write < 0 or reasoning < 0:
        return None
    cached = min(cached, prompt)
    # Built without __init__: every count is a non-negative int and within its total by the
    # checks above, which is all __post_init__ would check.
    built = object.__new__(Usage)
    setattr_ = object.__setattr__
    setattr_(built, "input_tokens", prompt)
    setattr_(built, "cached_input_tokens", cached)
    setattr_(built, "output_tokens", completion)
    setattr_(built, "reasoning_tokens", min(reasoning, completion))
    setattr_(built, "cache_write_tokens", min(cache_write, prompt - cached))
    setattr_(built, "cache_write_1h_tokens", 0)
    return built


def _read(source: object, name: str) -> Any:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _count(value: object, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"usage field {name} is not a token count: {value!r}")
