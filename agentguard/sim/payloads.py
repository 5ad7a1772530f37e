"""The JSON shapes the simulated provider sends, exactly as OpenAI's API sends them.

Everything here is pure: it builds dictionaries and strings, and does no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Completion",
    "completion_body",
    "default_error_body",
    "error_body",
    "format_reset_duration",
    "join_text_parts",
    "stream_events",
]

SYSTEM_FINGERPRINT = "fp_agentguard_sim"

_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    408: ("Request timed out.", "timeout", None),
    409: ("The request conflicted with another request.", "invalid_request_error", None),
    422: ("The request could not be processed.", "invalid_request_error", None),
    429: ("Rate limit reached. Please try again later.", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}

# Streamed text goes out a few words per chunk, in at most _MAX_CONTENT_CHUNKS chunks: enough
# to exercise a client's accumulation logic, few enough that long answers stay cheap to parse.
_WORDS_PER_CHUNK = 3
_MAX_CONTENT_CHUNKS = 16
_ARGUMENT_FRAGMENT_CHARS = 16
_MAX_ARGUMENT_FRAGMENTS = 32
_WORD = re.compile(r"\s*\S+|\s+$")


@dataclass(slots=True)
class Completion:
    """One generated answer, before it is shaped into a response.

    Attributes:
        content: the assistant's text, or None when it only calls tools.
        tool_calls: OpenAI tool-call objects (``id``, ``type``, ``function``).
        finish_reason: ``"stop"``, ``"tool_calls"`` or ``"length"``.
        prompt_tokens: tokens in the request's messages and tools.
        completion_tokens: generated tokens, reasoning tokens included.
        cached_tokens: prompt tokens served from the simulated prefix cache.
        reasoning_tokens: hidden reasoning tokens (part of ``completion_tokens``).
        choices: how many choices (the request's ``n``); each is this same answer, and the
            usage counts the generated tokens of all of them.
        service_tier: the tier the answer was served at, as the response reports it.
    """

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    choices: int = 1
    service_tier: str = "default"

    @property
    def generated_tokens(self) -> int:
        """Output tokens of all the choices."""
        return self.completion_tokens * self.choices

    def usage(self) -> dict[str, Any]:
        """The ``usage`` object of the response."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.generated_tokens,
            "total_tokens": self.prompt_tokens + self.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens * self.choices,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI-shaped error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def default_error_body(status: int) -> dict[str, Any]:
    """The error body OpenAI typically sends with an HTTP status."""
    fallback = (
        "Simulated error.",
        "server_error" if status >= 500 else "invalid_request_error",
        None,
    )
    message, type_, code = _DEFAULT_ERRORS.get(status, fallback)
    return error_body(message, type_, None, code)


def completion_body(
    completion_id: str, created: int, model: str, completion: Completion
) -> dict[str, Any]:
    """A ``chat.completion`` object for a non-streamed response."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": completion.content,
        "refusal": None,
        "annotations": [],
    }
    if completion.tool_calls:
        message["tool_calls"] = completion.tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
            for index in range(completion.choices)
        ],
        "usage": completion.usage(),
        "service_tier": completion.service_tier,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def stream_events(
    completion_id: str,
    created: int,
    model: str,
    completion: Completion,
    *,
    include_usage: bool,
) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed response, in order.

    A role chunk, the content a few words at a time, each tool call as OpenAI streams it (its
    index, id, type and name first, then its arguments in fragments), a final chunk carrying
    the finish reason, and, when ``include_usage`` is set, a last chunk with no choices and the
    usage. With ``include_usage`` every other chunk carries ``"usage": null``, as OpenAI's do.
    """

    for choice in range(completion.choices):
        yield from _choice_events(completion_id, created, model, completion, choice, include_usage)
    if include_usage:
        yield {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": completion.service_tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": completion.usage(),
        }


def _choice_events(
    completion_id: str,
    created: int,
    model: str,
    completion: Completion,
    choice: int,
    include_usage: bool,
) -> Iterator[dict[str, Any]]:
    """The chunks of one choice (``index`` = ``choice``)."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": completion.service_tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {"index": choice, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            body["usage"] = None
        return body

    first_content = "" if completion.content is not None or not completion.tool_calls else None
    yield chunk({"role": "assistant", "content": first_content, "refusal": None})
    if completion.content:
        for piece in _split_words(completion.content):
            yield chunk({"content": piece})
    for index, call in enumerate(completion.tool_calls):
        function = call["function"]
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": function["name"], "arguments": ""},
                    }
                ]
            }
        )
        arguments: str = function["arguments"]
        size = max(_ARGUMENT_FRAGMENT_CHARS, math.ceil(len(arguments) / _MAX_ARGUMENT_FRAGMENTS))
        for start in range(0, len(arguments), size):
            fragment = arguments[start : start + size]
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    yield chunk({}, completion.finish_reason)


def _split_words(text: str) -> list[str]:
    words = _WORD.findall(text)
    if "".join(words) != text:  # text with unusual whitespace: send it whole
        return [text]
    size = max(_WORDS_PER_CHUNK, math.ceil(len(words) / _MAX_CONTENT_CHUNKS))
    return ["".join(words[start : start + size]) for start in range(0, len(words), size)]


def format_reset_duration(seconds: float) -> str:
    """Format a duration as OpenAI's ``x-ratelimit-reset-*`` headers do.

    Examples: ``0.12`` → ``"120ms"``, ``1`` → ``"1s"``, ``1.5`` → ``"1.5s"``,
    ``360`` → ``"6m0s"``, ``3725`` → ``"1h2m5s"``.

    Args:
        seconds: the duration; negative values count as zero.

    Returns:
        The duration in OpenAI's (Go-style) notation, to the millisecond.
    """
    milliseconds = max(0, round(seconds * 1000))
    if milliseconds == 0:
        return "0s"
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole_seconds, fraction = divmod(rest, 1000)
    second_text = str(whole_seconds)
    if fraction:
        second_text += f".{fraction:03d}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{second_text}s"
    if minutes:
        return f"{minutes}m{second_text}s"
    return f"{second_text}s"


def join_text_parts(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""
