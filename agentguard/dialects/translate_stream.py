"""Streams translated between Anthropic's Messages API and OpenAI's Chat Completions, for a
streamed call that fell back to another provider's model.

The other provider's stream is read by its own dialect's tap (what the call is settled from)
and each of its events is rewritten, as it passes, into the events the caller's SDK expects:
chat chunks into ``message_start`` / ``content_block_*`` / ``message_delta`` /
``message_stop``, and back. I/O-free, like every tap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentguard.dialects.sse import SseReader
from agentguard.dialects.translate import ANTHROPIC_STOP, CHAT_STOP
from agentguard.redact import redact_text

if TYPE_CHECKING:
    from agentguard.dialects.base import Answer, StreamTap

__all__ = ["TranslatedTap", "translated_tap"]


def translated_tap(source: str, target: str, caller_request: Mapping[str, Any]) -> TranslatedTap:
    """A tap reading a stream of API ``source`` and handing on the events of API ``target``;
    ``caller_request`` is the caller's own request (whether it asked for a usage chunk)."""
    from agentguard.dialects.anthropic_messages import AnthropicMessagesTap
    from agentguard.dialects.openai_chat import OpenAIChatTap

    if source == "openai_chat" and target == "anthropic_messages":
        return TranslatedTap(OpenAIChatTap(strip_usage_chunk=False), _ChatToAnthropic())
    if source == "anthropic_messages" and target == "openai_chat":
        options = caller_request.get("stream_options")
        usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        return TranslatedTap(AnthropicMessagesTap(), _AnthropicToChat(include_usage=usage))
    raise ValueError(f"streams of {source} are not translated to {target}")


class _Converter(SseReader):
    """Reads whole events of one API and writes those of the other into :attr:`out`."""

    __slots__ = ("out",)

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []

    def emit(self, payload: Mapping[str, Any], event: str | None = None) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        head = f"event: {event}\n".encode() if event else b""
        self.out.append(head + b"data: " + data + b"\n\n")

    def take(self) -> bytes:
        out = b"".join(self.out)
        self.out.clear()
        return out


class TranslatedTap:
    """A stream tap of the other provider's API whose output is the caller's API.

    Settlement reads :attr:`inner` (the other API's usage, at its prices); the caller reads
    what :meth:`feed` returns.
    """

    __slots__ = ("converter", "inner")

    def __init__(self, inner: StreamTap, converter: _Converter) -> None:
        self.inner = inner
        self.converter = converter

    @property
    def done(self) -> bool:
        return self.inner.done

    @done.setter
    def done(self, value: bool) -> None:
        self.inner.done = value

    def feed(self, chunk: bytes) -> bytes:
        self.converter.feed(self.inner.feed(chunk))
        return self.converter.take()

    def flush(self) -> bytes:
        self.converter.feed(self.inner.flush())
        self.converter.flush()
        return self.converter.take()

    def answer(self) -> Answer:
        return self.inner.answer()


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _error_text(payload: Mapping[str, Any]) -> str:
    error = payload.get("error")
    message = error.get("message") if isinstance(error, Mapping) else error
    return redact_text(str(message or "the fallback model's stream failed")[:300])


class _ChatToAnthropic(_Converter):
    """Chat completion chunks into a Messages stream."""

    __slots__ = ("_block", "_open", "_started", "_stop", "_tools", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._block = -1
        self._open: str | None = None
        self._tools: dict[int, int] = {}
        self._stop = "end_turn"
        self._usage: Mapping[str, Any] = {}

    def read_data(self, event: str | None, data: bytes) -> bool:
        if data.strip() == b"[DONE]":
            self._finish()
            return False
        payload = _json(data)
        if payload is None:
            return False
        if payload.get("error") is not None and not payload.get("choices"):
            error = {"type": "api_error", "message": _error_text(payload)}
            self.emit({"type": "error", "error": error}, "error")
            return False
        if not self._started:
            self._start(payload)
        if isinstance(payload.get("usage"), Mapping):
            self._usage = payload["usage"]
        for choice in payload.get("choices") or ():
            if isinstance(choice, Mapping):
                self._choice(choice)
        return False

    def _start(self, payload: Mapping[str, Any]) -> None:
        self._started = True
        message: dict[str, Any] = {
            "id": f"msg_{payload.get('id', '')}",
            "type": "message",
            "role": "assistant",
            "model": str(payload.get("model", "")),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # The chat stream reports its usage at its end: message_delta carries it.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        self.emit({"type": "message_start", "message": message}, "message_start")

    def _choice(self, choice: Mapping[str, Any]) -> None:
        delta = choice.get("delta") if isinstance(choice.get("delta"), Mapping) else {}
        assert isinstance(delta, Mapping)
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._open != "text":
                self._open_block("text", {"type": "text", "text": ""})
            delta_event = {"type": "text_delta", "text": text}
            self._delta(delta_event)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, Mapping):
                continue
            index = int(call.get("index", 0))
            function = call.get("function") if isinstance(call.get("function"), Mapping) else {}
            assert isinstance(function, Mapping)
            if index not in self._tools:
                block = {
                    "type": "tool_use",
                    "id": str(call.get("id", "")),
                    "name": str(function.get("name", "")),
                    "input": {},
                }
                self._open_block("tool", block)
                self._tools[index] = self._block
            if function.get("arguments"):
                self._delta({"type": "input_json_delta", "partial_json": function["arguments"]})
        if choice.get("finish_reason"):
            self._stop = ANTHROPIC_STOP.get(str(choice["finish_reason"]), "end_turn")
            self._close_block()

    def _open_block(self, kind: str, block: Mapping[str, Any]) -> None:
        self._close_block()
        self._block += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        self.emit(start, "content_block_start")

    def _delta(self, delta: Mapping[str, Any]) -> None:
        event = {"type": "content_block_delta", "index": self._block, "delta": delta}
        self.emit(event, "content_block_delta")

    def _close_block(self) -> None:
        if self._open is not None:
            self.emit({"type": "content_block_stop", "index": self._block}, "content_block_stop")
            self._open = None

    def _finish(self) -> None:
        self._close_block()
        usage = self._usage
        details = usage.get("prompt_tokens_details")
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop, "stop_sequence": None},
            "usage": {
                "input_tokens": int(usage.get("prompt_tokens") or 0) - cached,
                "output_tokens": int(usage.get("completion_tokens") or 0),
                "cache_read_input_tokens": cached,
            },
        }
        self.emit(delta, "message_delta")
        self.emit({"type": "message_stop"}, "message_stop")


class _AnthropicToChat(_Converter):
    """A Messages stream into chat completion chunks."""

    __slots__ = ("_created", "_id", "_include_usage", "_model", "_tools", "_usage")

    def __init__(self, *, include_usage: bool) -> None:
        super().__init__()
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        self._created = int(time.time())
        self._tools: dict[int, int] = {}
        self._usage: dict[str, int] = {}

    def read_data(self, event: str | None, data: bytes) -> bool:
        payload = _json(data)
        if payload is None:
            return False
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message") if isinstance(payload.get("message"), Mapping) else {}
            assert isinstance(message, Mapping)
            self._id = f"chatcmpl-{message.get('id', '')}"
            self._model = str(message.get("model", ""))
            self._merge(message.get("usage"))
            self._chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            self._block_start(payload)
        elif kind == "content_block_delta":
            self._block_delta(payload)
        elif kind == "message_delta":
            self._merge(payload.get("usage"))
            delta = payload.get("delta") if isinstance(payload.get("delta"), Mapping) else {}
            assert isinstance(delta, Mapping)
            finish = CHAT_STOP.get(str(delta.get("stop_reason")), "stop")
            self._chunk({}, finish)
        elif kind == "message_stop":
            if self._include_usage:
                self.emit({**self._base(), "choices": [], "usage": self._chat_usage()})
            self.out.append(b"data: [DONE]\n\n")
        elif kind == "error":
            self.emit({"error": {"message": _error_text(payload), "type": "server_error"}})
        return False

    def _block_start(self, payload: Mapping[str, Any]) -> None:
        block = payload.get("content_block")
        if not isinstance(block, Mapping):
            return
        if block.get("type") == "tool_use":
            ordinal = self._tools[int(payload.get("index", 0))] = len(self._tools)
            call = {
                "index": ordinal,
                "id": str(block.get("id", "")),
                "type": "function",
                "function": {"name": str(block.get("name", "")), "arguments": ""},
            }
            self._chunk({"tool_calls": [call]})
        elif block.get("type") == "text" and block.get("text"):
            self._chunk({"content": str(block["text"])})

    def _block_delta(self, payload: Mapping[str, Any]) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, Mapping):
            return
        if delta.get("type") == "text_delta":
            self._chunk({"content": str(delta.get("text") or "")})
        elif delta.get("type") == "input_json_delta":
            ordinal = self._tools.get(int(payload.get("index", 0)))
            if ordinal is not None:
                arguments = str(delta.get("partial_json") or "")
                self._chunk(
                    {"tool_calls": [{"index": ordinal, "function": {"arguments": arguments}}]}
                )

    def _merge(self, usage: object) -> None:
        if isinstance(usage, Mapping):
            for key, value in usage.items():
                if isinstance(value, int):
                    self._usage[key] = value

    def _chat_usage(self) -> dict[str, Any]:
        cached = self._usage.get("cache_read_input_tokens", 0)
        prompt = (
            self._usage.get("input_tokens", 0)
            + cached
            + self._usage.get("cache_creation_input_tokens", 0)
        )
        output = self._usage.get("output_tokens", 0)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def _base(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }

    def _chunk(self, delta: Mapping[str, Any], finish: str | None = None) -> None:
        choice = {"index": 0, "delta": dict(delta), "finish_reason": finish, "logprobs": None}
        self.emit({**self._base(), "choices": [choice]})
