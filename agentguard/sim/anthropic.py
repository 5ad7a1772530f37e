"""Anthropic's Messages API (``POST /v1/messages``, ``POST /v1/messages/count_tokens``) in the
simulated provider.

``system`` (text or blocks), content blocks (``text``, ``image``, ``tool_use``,
``tool_result``), ``tools`` (answered as ``tool_use`` blocks) and the required ``max_tokens``
are honoured. Prompt caching follows ``cache_control`` breakpoints: the prefix up to a
breakpoint (tools, then system, then messages, at message granularity here) is written on its
first use and read on later ones, with the write split by the breakpoint's ``ttl`` into
``cache_creation.ephemeral_5m_input_tokens`` and ``ephemeral_1h_input_tokens``. As on the
provider, ``input_tokens`` counts only the input that was neither read from nor written to the
cache. A ``tool_use`` not answered by a ``tool_result`` opening the next message, and a
``tool_result`` whose ``tool_use`` is not in the message before it, are answered with the
provider's 400. Errors have Anthropic's shape (``{"type": "error", "error": {...}}``), and a
429 carries ``retry-after`` and ``anthropic-ratelimit-*-reset`` (RFC 3339) headers. Token counts
use an OpenAI tokenizer: Claude's is not public, and the sim needs only to be self-consistent.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from agentguard.retrying import parse_reset_duration
from agentguard.sim.dialect import Answer, Dialect, DialectError, ErrorAnswer, Event, Turn
from agentguard.sim.faults import HTTPError
from agentguard.sim.gateway import Rejection
from agentguard.sim.payloads import Completion, _split_words
from agentguard.sim.script import ModelError
from agentguard.sim.tokens import TokenCounter

if TYPE_CHECKING:
    from agentguard.sim.server import SimServer, _Handler

__all__ = ["AnthropicDialect", "anthropic_error_body", "rfc3339_after", "serve_count_tokens"]

# The error type and usual message the provider sends with each status.
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see "
        "the response headers for current usage.",
    ),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
# OpenAI-style reset headers the sim's faults and gateway send, and Anthropic's own names.
_RESET_HEADERS = {
    "x-ratelimit-reset-requests": "anthropic-ratelimit-requests",
    "x-ratelimit-reset-tokens": "anthropic-ratelimit-tokens",
}
_JSON_FRAGMENT_CHARS = 64


def anthropic_error_body(error_type: str, message: str) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }


def rfc3339_after(seconds: float, now: datetime | None = None) -> str:
    """The time ``seconds`` from now, as Anthropic's ``-reset`` headers write it."""
    when = (now or datetime.now(UTC)) + timedelta(seconds=max(0.0, seconds))
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _invalid(message: str) -> DialectError:
    return DialectError(ErrorAnswer(400, anthropic_error_body("invalid_request_error", message)))


def _anthropic_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """OpenAI-style limit headers rewritten as Anthropic's (``retry-after`` is kept)."""
    converted: dict[str, str] = {}
    for name, value in headers.items():
        target = _RESET_HEADERS.get(name)
        if target is None:
            if not name.startswith("x-ratelimit-"):
                converted[name] = value
            continue
        seconds = parse_reset_duration(value)
        if seconds is not None:
            converted[f"{target}-limit"] = "50" if "requests" in target else "40000"
            converted[f"{target}-remaining"] = "0"
            converted[f"{target}-reset"] = rfc3339_after(seconds)
    return converted


def _cache_ttl(block: Any) -> str | None:
    """The ``ttl`` of a block's ``cache_control`` (``"5m"`` by default), or None."""
    if not isinstance(block, dict):
        return None
    control = block.get("cache_control")
    if not isinstance(control, dict):
        return None
    return "1h" if control.get("ttl") == "1h" else "5m"


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        block.get("text", "") for block in _blocks(content) if isinstance(block, dict)
    ) or json.dumps(content)


def _tool_use_ids(message: Any) -> list[str]:
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return []
    return [
        str(block.get("id", ""))
        for block in _blocks(message.get("content"))
        if isinstance(block, dict) and block.get("type") == "tool_use"
    ]


def _check_tool_pairing(messages: list[Any]) -> None:
    """Reject, with the provider's messages, a ``tool_use`` not answered by a ``tool_result``
    at the start of the next message, and a ``tool_result`` whose ``tool_use`` is not in the
    message before it."""
    for index, message in enumerate(messages):
        uses = _tool_use_ids(messages[index - 1]) if index else []
        blocks = _blocks(message.get("content")) if isinstance(message, dict) else []
        answered: set[str] = set()
        for number, block in enumerate(blocks):
            if not (isinstance(block, dict) and block.get("type") == "tool_result"):
                continue
            call_id = str(block.get("tool_use_id", ""))
            # Results open the message: one after another block is no answer either.
            if call_id not in uses or len(answered) != number:
                raise _invalid(
                    f"messages.{index}.content.{number}: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {call_id}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
            answered.add(call_id)
        missing = [call_id for call_id in uses if call_id not in answered]
        if missing:
            raise _invalid(
                f"messages.{index - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
    trailing = _tool_use_ids(messages[-1]) if messages else []
    if trailing:
        raise _invalid(
            f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` "
            f"blocks immediately after: {', '.join(trailing)}. Each `tool_use` block must have a "
            "corresponding `tool_result` block in the next message."
        )


class AnthropicDialect(Dialect):
    """The Messages API, with its own prompt-cache simulation.

    Args:
        counter: counts tokens (share the chat engine's, for its per-message cache).
        min_cache_tokens: the shortest prefix the provider caches.
    """

    name = "anthropic"

    def __init__(self, counter: TokenCounter | None = None, *, min_cache_tokens: int = 1024):
        self.counter = counter or TokenCounter()
        self.min_cache_tokens = min_cache_tokens
        self._cached: set[bytes] = set()
        self._lock = threading.Lock()

    def api_key(self, headers: Mapping[str, str], bearer: str | None) -> str | None:
        """``x-api-key`` (the SDK's way), else ``Authorization: Bearer``."""
        return headers.get("x-api-key") or bearer

    # -- errors -----------------------------------------------------------------------------

    def error(
        self, status: int, message: str | None = None, type_: str | None = None
    ) -> ErrorAnswer:
        """Anthropic's error for a status."""
        default_type, default_message = _ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error.")
        )
        headers: dict[str, str] = {}
        if status == 429:
            headers["retry-after"] = "1"
        return ErrorAnswer(
            status,
            anthropic_error_body(type_ or default_type, message or default_message),
            headers,
        )

    def fault(self, fault: HTTPError, model: str) -> ErrorAnswer:
        """An injected error, in Anthropic's shape, with Anthropic's limit headers."""
        answer = super().fault(fault, model)
        answer.headers.clear()
        if fault.status == 429 and fault.body is None:
            answer.headers.update(_anthropic_headers(fault.headers) or {"retry-after": "1"})
        else:
            answer.headers.update(_anthropic_headers(fault.headers))
        return answer

    def rejection(self, rejection: Rejection) -> ErrorAnswer:
        """A budget-gateway refusal, worded as an Anthropic error (the type is kept when it
        says what happened, e.g. ``budget_exceeded``)."""
        error = rejection.body.get("error", {})
        given = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        known_type = _ERRORS.get(rejection.status, ("invalid_request_error", ""))[0]
        error_type = given if given == "budget_exceeded" else known_type
        return ErrorAnswer(
            rejection.status,
            anthropic_error_body(error_type, str(message or "Request refused.")),
            _anthropic_headers(rejection.headers),
        )

    def model_error(self, error: ModelError) -> ErrorAnswer:
        """A scripted error; OpenAI's default type becomes the status's Anthropic type, and
        OpenAI-style limit headers Anthropic's."""
        type_ = None if error.type == "invalid_request_error" else error.type
        answer = self.error(error.status, error.message, type_)
        answer.headers.update(_anthropic_headers(error.headers or {}))
        return answer

    # -- requests ---------------------------------------------------------------------------

    def prepare(self, body: Any, *, count_only: bool = False) -> Turn:
        """Check a Messages request and translate it into a chat request.

        The turn's context keeps the cache breakpoints: (prefix index, ttl) pairs, where the
        prefix index counts the tools as 0 and each chat message after them.
        """
        if not isinstance(body, dict):
            raise _invalid("The request body is not valid JSON.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("model: Field required")
        max_tokens = body.get("max_tokens")
        if not count_only:
            if max_tokens is None:
                raise _invalid("max_tokens: Field required")
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
                raise _invalid("max_tokens: Input should be a valid integer")
            if max_tokens < 1:
                raise _invalid("max_tokens: Input should be greater than or equal to 1")
        raw_messages = body.get("messages")
        if raw_messages is None:
            raise _invalid("messages: Field required")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise _invalid("messages: at least one message is required")

        breakpoints: list[tuple[int, str]] = []
        tools = self._tools(body.get("tools"), breakpoints)
        messages: list[dict[str, Any]] = []
        system = body.get("system")
        if system is not None:
            blocks = _blocks(system)
            messages.append({"role": "system", "content": self._text_parts(blocks)})
            self._mark(blocks, len(messages), breakpoints)
        _check_tool_pairing(raw_messages)
        for index, message in enumerate(raw_messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise _invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
            blocks = _blocks(message.get("content"))
            if message["role"] == "assistant":
                messages.append(self._assistant(blocks))
            else:
                messages.extend(self._user(blocks))
            self._mark(blocks, len(messages), breakpoints)

        chat: dict[str, Any] = {"model": model, "messages": messages}
        if tools:
            chat["tools"] = tools
        if max_tokens is not None:
            chat["max_tokens"] = max_tokens
        return Turn(
            chat,
            stream=bool(body.get("stream")),
            context={"breakpoints": breakpoints, "request": body},
        )

    @staticmethod
    def _tools(raw: Any, breakpoints: list[tuple[int, str]]) -> list[dict[str, Any]]:
        if not isinstance(raw, list):
            return []
        tools: list[dict[str, Any]] = []
        for tool in raw:
            if not isinstance(tool, dict):
                continue
            function = {
                "name": tool.get("name", ""),
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema", {}),
            }
            tools.append({"type": "function", "function": function})
            ttl = _cache_ttl(tool)
            if ttl is not None:
                breakpoints.append((0, ttl))
        return tools

    @staticmethod
    def _mark(blocks: list[Any], prefix: int, breakpoints: list[tuple[int, str]]) -> None:
        for block in blocks:
            ttl = _cache_ttl(block)
            if ttl is not None:
                breakpoints.append((prefix, ttl))

    @staticmethod
    def _text_parts(blocks: list[Any]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif block.get("type") == "image":
                parts.append({"type": "image_url", "image_url": {"url": "data:"}})
            else:
                parts.append({"type": "text", "text": json.dumps(block)})
        return parts

    def _assistant(self, blocks: list[Any]) -> dict[str, Any]:
        text = "".join(
            str(block.get("text", ""))
            for block in blocks
            if isinstance(block, dict) and block.get("type") == "text"
        )
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        calls = [
            {
                "id": str(block.get("id", "")),
                "type": "function",
                "function": {
                    "name": str(block.get("name", "")),
                    "arguments": json.dumps(block.get("input", {}), separators=(",", ":")),
                },
            }
            for block in blocks
            if isinstance(block, dict) and block.get("type") == "tool_use"
        ]
        if calls:
            message["tool_calls"] = calls
        elif message["content"] is None:
            message["content"] = ""
        return message

    def _user(self, blocks: list[Any]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [
            {
                "role": "tool",
                "tool_call_id": str(block.get("tool_use_id", "")),
                "content": _result_text(block.get("content", "")),
            }
            for block in blocks
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        rest = [
            block
            for block in blocks
            if not (isinstance(block, dict) and block.get("type") == "tool_result")
        ]
        if rest or not results:
            results.append({"role": "user", "content": self._text_parts(rest)})
        return results

    # -- counting and caching ---------------------------------------------------------------

    def count_tokens(self, body: Any) -> dict[str, Any]:
        """The answer of ``/v1/messages/count_tokens``: ``{"input_tokens": n}``."""
        turn = self.prepare(body, count_only=True)
        chat = turn.chat
        prompt = self.counter.prompt(chat["messages"], chat.get("tools"), chat["model"])
        return {"input_tokens": prompt.total}

    def _cache(self, turn: Turn, partition: bytes) -> tuple[int, int, int, int]:
        """(prompt tokens, cache reads, 5-minute writes, 1-hour writes) for a turn."""
        chat = turn.chat
        prompt = self.counter.prompt(chat["messages"], chat.get("tools"), chat["model"])
        points = sorted(set(turn.context["breakpoints"]))
        if not points:
            return prompt.total, 0, 0, 0
        salt = partition + b"\x00" + chat["model"].encode()
        keys = [
            hashlib.blake2b(salt + prompt.prefix_keys[index], digest_size=16).digest()
            for index, _ in points
        ]
        read_upto = 0
        writes = {"5m": 0, "1h": 0}
        with self._lock:
            for (index, _), key in zip(points, keys, strict=True):
                if key in self._cached:
                    read_upto = prompt.prefix_tokens[index]
            done = read_upto
            for (index, ttl), key in zip(points, keys, strict=True):
                tokens = prompt.prefix_tokens[index]
                if tokens < self.min_cache_tokens or tokens <= done:
                    continue
                writes[ttl] += tokens - done
                done = tokens
                self._cached.add(key)
        return prompt.total, read_upto, writes["5m"], writes["1h"]

    # -- answers ----------------------------------------------------------------------------

    def answer(self, turn: Turn, completion: Completion, partition: bytes) -> Answer:
        """The ``message`` object, and its event stream."""
        total, read, write_5m, write_1h = self._cache(turn, partition)
        usage = {
            "input_tokens": max(0, total - read - write_5m - write_1h),
            "cache_creation_input_tokens": write_5m + write_1h,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": write_5m,
                "ephemeral_1h_input_tokens": write_1h,
            },
            "output_tokens": completion.completion_tokens,
            "service_tier": "standard",
        }
        content: list[dict[str, Any]] = []
        if completion.content:
            content.append({"type": "text", "text": completion.content})
        for call in completion.tool_calls:
            function = call["function"]
            try:
                arguments = json.loads(function["arguments"])
            except ValueError:
                arguments = {}
            call_id: str = call["id"]
            content.append(
                {
                    "type": "tool_use",
                    "id": "toolu_" + call_id.removeprefix("call_")
                    if call_id.startswith("call_")
                    else call_id,
                    "name": function["name"],
                    "input": arguments if isinstance(arguments, dict) else {},
                }
            )
        reason = completion.finish_reason
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": turn.chat["model"],
            "content": content,
            "stop_reason": _STOP_REASONS.get(reason, reason),
            "stop_sequence": None,
            "usage": usage,
        }
        events = list(self._events(message)) if turn.stream else []
        return Answer(
            body=message,
            events=events,
            prompt_tokens=total,
            cached_tokens=read,
            completion_tokens=completion.completion_tokens,
            cache_write_tokens=write_5m + write_1h,
            cache_write_1h_tokens=write_1h,
        )

    @staticmethod
    def _events(message: dict[str, Any]) -> Iterator[Event]:
        """message_start, ping, each block's start, deltas and stop, message_delta, message_stop."""
        usage = message["usage"]
        opening_usage = {**usage, "output_tokens": 1}
        opening = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": opening_usage,
        }
        yield "message_start", {"type": "message_start", "message": opening}
        yield "ping", {"type": "ping"}
        for index, block in enumerate(message["content"]):
            start: dict[str, Any]
            deltas: list[dict[str, Any]]
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                deltas = [
                    {"type": "text_delta", "text": piece} for piece in _split_words(block["text"])
                ]
            else:
                start = {**block, "input": {}}
                text = json.dumps(block["input"], separators=(",", ":"), ensure_ascii=False)
                deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                    {"type": "input_json_delta", "partial_json": text[i : i + _JSON_FRAGMENT_CHARS]}
                    for i in range(0, len(text), _JSON_FRAGMENT_CHARS)
                ]
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            for delta in deltas:
                yield (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
        closing_usage = {key: value for key, value in usage.items() if key != "service_tier"}
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": closing_usage,
            },
        )
        yield "message_stop", {"type": "message_stop"}


def serve_count_tokens(
    sim: SimServer,
    handler: _Handler,
    dialect: AnthropicDialect,
    body: Any,
    headers: Mapping[str, str],
    bearer: str | None,
    started: float,
) -> None:
    """Answer ``POST /v1/messages/count_tokens`` (free: never charged, never faulted)."""
    gateway = sim.gateway
    if gateway is not None:
        refused = gateway.authorize(dialect.api_key(headers, bearer))
        if refused is not None:
            answer = dialect.rejection(refused)
            sim._send_json(handler, answer.status, answer.body, started, answer.headers)
            return
    try:
        counted = dialect.count_tokens(body)
    except DialectError as invalid:
        error = invalid.answer
        sim._send_json(handler, error.status, error.body, started, error.headers)
        return
    sim._send_json(handler, 200, counted, started)
