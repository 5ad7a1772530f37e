"""Scripted replies: what the simulated model answers at each step of a conversation.

The reply is chosen from the conversation itself, never from server state: the step index is the
number of assistant messages already in the request's ``messages``. Re-sending a conversation
(after a crash, a retry or a resume) therefore gets the same reply it got the first time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentguard.sim.payloads import join_text_parts

__all__ = [
    "ModelError",
    "Reply",
    "ReplyFn",
    "Script",
    "ToolCall",
    "default_answer",
    "step_index",
    "tool_call_id",
]

ReplyFn = Callable[[dict[str, Any]], "Reply"]
"""A function from a request body (the parsed JSON) to the reply to answer it with."""

# Words that are one token each (after a space) in both o200k_base and cl100k_base.
_FILLER = (
    "the",
    "answer",
    "depends",
    "on",
    "the",
    "details",
    "of",
    "the",
    "request",
    "and",
    "the",
    "context",
    "provided",
    "so",
    "far",
    "which",
    "suggests",
    "a",
    "careful",
    "step",
    "by",
    "step",
    "approach",
    "that",
    "checks",
    "each",
    "result",
    "before",
    "moving",
    "on",
)
_SPACES = re.compile(r"\s+")


def tool_call_id(step: int, index: int) -> str:
    """The deterministic id of the ``index``-th tool call made at ``step``.

    Shaped like OpenAI's (``call_`` and 24 characters), so the same conversation always
    carries the same ids.
    """
    digest = hashlib.sha256(f"agentguard-sim:{step}:{index}".encode()).hexdigest()
    return f"call_{digest[:24]}"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the simulated model makes.

    Attributes:
        name: the function's name.
        arguments: the arguments, as a dict (sent as compact JSON) or as the exact string to
            send (which may be invalid JSON, to test how a client copes).
        id: the call's id; derived from the step and the call's index when None.
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments as the string the model sends."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"), ensure_ascii=False)

    def to_openai(self, step: int, index: int) -> dict[str, Any]:
        """This call as an OpenAI ``tool_calls`` entry."""
        return {
            "id": self.id or tool_call_id(step, index),
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments_json()},
        }


@dataclass(frozen=True, slots=True)
class ModelError:
    """An error the provider answers instead of a completion, for one scripted step.

    Attributes:
        status: the HTTP status.
        message: the error's message.
        type: OpenAI's error ``type``.
        code: OpenAI's error ``code``.
        param: the parameter at fault, if any.
        headers: extra response headers.
    """

    status: int = 400
    message: str = "The simulated model rejected this request."
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """What the simulated model answers at one step.

    A reply with neither ``content`` nor ``tool_calls`` answers the server's default text
    (see :func:`default_answer`); ``Reply(content="")`` answers an empty message.

    Attributes:
        content: the assistant's text.
        tool_calls: the tools the assistant calls.
        reasoning_tokens: hidden reasoning tokens, added to ``completion_tokens`` and reported
            in ``completion_tokens_details.reasoning_tokens``, as reasoning models do.
        finish_reason: overrides the finish reason (``"stop"``, or ``"tool_calls"`` when the
            reply calls tools; ``"length"`` when ``max_tokens`` cut it).
        model_error: answer this error instead of a completion, at this step only.
    """

    content: str | None = None
    tool_calls: Sequence[ToolCall] | None = None
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    model_error: ModelError | None = None

    def __post_init__(self) -> None:
        if self.tool_calls is not None:
            object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if self.reasoning_tokens < 0:
            raise ValueError(f"reasoning_tokens must be >= 0, not {self.reasoning_tokens}")

    @property
    def is_default(self) -> bool:
        """True when the reply leaves the text to the server's default answer."""
        return self.content is None and not self.tool_calls and self.model_error is None


def step_index(messages: Sequence[Any]) -> int:
    """The step a conversation is at: the number of assistant messages it already holds."""
    return sum(
        1
        for message in messages
        if isinstance(message, dict) and message.get("role") == "assistant"
    )


def default_answer(messages: Sequence[Any], output_tokens: int, count: Callable[[str], int]) -> str:
    """The default answer: ``Simulated answer to: <first 60 characters of the last user
    message>``, padded with filler words to at least ``output_tokens`` tokens.

    Args:
        messages: the request's messages.
        output_tokens: how many tokens the answer should have (the caller truncates to the
            exact count).
        count: counts the tokens of a text.
    """
    question = ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            question = _SPACES.sub(" ", join_text_parts(message.get("content"))).strip()
            break
    text = f"Simulated answer to: {question[:60]}"
    missing = output_tokens - count(text)
    if missing > 0:
        # Each filler word is one token; cycle through them until the length is reached.
        words = [_FILLER[i % len(_FILLER)] for i in range(missing)]
        separator = " " if text.endswith((".", "?", "!", ":")) else ". "
        text = f"{text}{separator}{' '.join(words)}"
    return text


class Script:
    """The replies of a scripted model, chosen by step.

    Args:
        replies: the reply for step 0, 1, 2, ...; a string is shorthand for
            ``Reply(content=string)``.
        final: the reply for every step past the end of ``replies``; the default answer
            when None.
        default_output_tokens: length, in tokens, of the default answer.
        reply_fn: when given, decides every reply from the request body instead (it may
            return a ``Reply`` with nothing set to answer the default text).

    Example:
        >>> script = Script([
        ...     Reply(tool_calls=[ToolCall("search", {"query": "budget"})]),
        ...     "Found it.",
        ... ])
    """

    __slots__ = ("default_output_tokens", "final", "replies", "reply_fn")

    def __init__(
        self,
        replies: Iterable[Reply | str] = (),
        *,
        final: Reply | str | None = None,
        default_output_tokens: int = 32,
        reply_fn: ReplyFn | None = None,
    ) -> None:
        self.replies: tuple[Reply, ...] = tuple(_as_reply(reply) for reply in replies)
        self.final: Reply = _as_reply(final) if final is not None else Reply()
        if default_output_tokens < 1:
            raise ValueError(f"default_output_tokens must be >= 1, not {default_output_tokens}")
        self.default_output_tokens = default_output_tokens
        self.reply_fn = reply_fn

    def __len__(self) -> int:
        return len(self.replies)

    def __repr__(self) -> str:
        return f"Script({len(self.replies)} replies, reply_fn={self.reply_fn!r})"

    def reply_for(self, request: dict[str, Any]) -> Reply:
        """The reply to a request body (the parsed JSON of a chat completion request)."""
        if self.reply_fn is not None:
            return self.reply_fn(request)
        step = step_index(request.get("messages") or ())
        if step < len(self.replies):
            return self.replies[step]
        return self.final


def as_script(
    script: Script | Iterable[Reply | str] | ReplyFn | None, default_output_tokens: int = 32
) -> Script:
    """Normalise what ``SimServer(script=...)`` accepts into a :class:`Script`."""
    if script is None:
        return Script(default_output_tokens=default_output_tokens)
    if isinstance(script, Script):
        return script
    if callable(script):
        return Script(reply_fn=script, default_output_tokens=default_output_tokens)
    return Script(script, default_output_tokens=default_output_tokens)


def _as_reply(reply: Reply | str) -> Reply:
    if isinstance(reply, Reply):
        return reply
    if isinstance(reply, str):
        return Reply(content=reply)
    raise TypeError(f"a script holds Reply objects or strings, not {type(reply).__name__}")
