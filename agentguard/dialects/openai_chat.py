"""OpenAI Chat Completions (``POST .../chat/completions``) as the pipeline sees it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentguard.dialects.base import Answer
from agentguard.dialects.sse import SseReader
from agentguard.limits import ToolCall
from agentguard.pricing import Usage
from agentguard.pricing.worst_case import bound_request, output_cap, refuse_unbounded

if TYPE_CHECKING:
    from agentguard.pricing import Pricer
    from agentguard.pricing.worst_case import Bound
    from agentguard.tokens import TokenCounter
    from agentguard.trimming.view import HistoryView

__all__ = ["OPENAI_CHAT", "OpenAIChat", "OpenAIChatTap"]

_CHAT_VIEW: list[HistoryView | None] = [None]
"""The chat history view, imported on first use (trimming imports this module)."""

_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class OpenAIChat:
    """The Chat Completions dialect (also spoken by most OpenAI-compatible servers)."""

    name = "openai_chat"
    endpoint = "/chat/completions"
    cap_field = "max_tokens"

    def matches(self, method: str, path: str) -> bool:
        return method == "POST" and path.rstrip("/").endswith("/chat/completions")

    @property
    def trim_view(self) -> HistoryView:
        view = _CHAT_VIEW[0]
        if view is None:
            from agentguard.trimming.chat import CHAT_VIEW

            view = _CHAT_VIEW[0] = CHAT_VIEW
        return view

    def messages(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        messages = body.get("messages")
        return messages if isinstance(messages, list) else []

    def count_input(self, body: Mapping[str, Any], model: str, counter: TokenCounter) -> int:
        tokens = counter.count_messages(self.messages(body), model)
        tools = body.get("tools")
        if isinstance(tools, list) and tools:
            tokens += counter.count_tools(tools, model)
        return tokens

    def output_cap(self, body: Mapping[str, Any]) -> int | None:
        return output_cap(body)

    def set_output_cap(self, body: dict[str, Any], tokens: int, model: str) -> None:
        # Reasoning models reject max_tokens; others (and many compatible servers) may not
        # know max_completion_tokens.
        name = model.rsplit("/", 1)[-1]
        field = "max_completion_tokens" if name.startswith(_REASONING_PREFIXES) else "max_tokens"
        body[field] = tokens

    def ask_stream_usage(self, body: dict[str, Any]) -> bool:
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            return False
        body["stream_options"] = {**(options or {}), "include_usage": True}
        return True

    def streaming(self, body: Mapping[str, Any]) -> bool:
        return bool(body.get("stream"))

    def stored_by_provider(self, body: Mapping[str, Any]) -> bool:
        return False

    def previous_response(self, body: Mapping[str, Any]) -> str | None:
        return None

    def bound(
        self,
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
        return bound_request(
            body,
            model,
            counted_input=counted_input,
            max_output_tokens=max_output_tokens,
            output_capped=output_capped,
            pricer=pricer,
            counter=counter,
            budgeted=budgeted,
        )

    def refuse_unbounded(self, body: Mapping[str, Any], *, output_capped: bool) -> None:
        refuse_unbounded(body, output_capped=output_capped)

    def answer(self, payload: Mapping[str, Any]) -> Answer:
        choices = payload.get("choices") or []
        message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
        text = ""
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            text = message["content"]
        usage = payload.get("usage")
        return Answer(
            text=text,
            tool_calls=(
                tool_calls_of(message)
                if isinstance(message, dict) and message.get("tool_calls")
                else []
            ),
            usage=Usage.from_openai(usage) if usage else None,
            service_tier=payload.get("service_tier"),
            response_id=payload.get("id") if isinstance(payload.get("id"), str) else None,
        )

    def tap(self, *, strip_usage: bool) -> OpenAIChatTap:
        return OpenAIChatTap(strip_usage_chunk=strip_usage)

    def error_message(self, payload: object) -> str | None:
        return openai_error_message(payload)

    def replay(self, client: Any, request: Mapping[str, Any]) -> Any:
        kept = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
        return client.chat.completions.create(**kept)


def openai_error_message(payload: object) -> str | None:
    """The ``error.message`` of an OpenAI-shaped error body."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return None


def tool_calls_of(message: Mapping[str, Any] | None) -> list[ToolCall]:
    """The tool calls of a chat message (assistant ``tool_calls``)."""
    if not message:
        return []
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {} if isinstance(call, dict) else {}
        calls.append(ToolCall(str(function.get("name", "")), str(function.get("arguments", ""))))
    return calls


class OpenAIChatTap(SseReader):
    """Reads a chat completion's server-sent events as they pass.

    Collects usage, tool calls and generated text; drops the usage-only chunk the guard asked
    for (``choices == []``) when the caller had not asked for it, so the caller's stream is
    what the SDK would have given it.
    """

    __slots__ = (
        "_strip_usage_chunk",
        "content_chars",
        "finish_reason",
        "service_tier",
        "tool_calls",
        "usage",
    )

    def __init__(self, *, strip_usage_chunk: bool) -> None:
        super().__init__()
        self._strip_usage_chunk = strip_usage_chunk
        self.usage: dict[str, Any] | None = None
        self.tool_calls: dict[int, dict[str, str]] = {}
        self.content_chars: list[str] = []
        self.finish_reason: str | None = None
        self.service_tier: object = None

    @property
    def text(self) -> str:
        return "".join(self.content_chars)

    def answer(self) -> Answer:
        calls = [
            ToolCall(slot["name"], slot["arguments"]) for _, slot in sorted(self.tool_calls.items())
        ]
        return Answer(
            text=self.text,
            tool_calls=calls,
            usage=Usage.from_openai(self.usage) if self.usage else None,
            service_tier=self.service_tier,
        )

    def read_data(self, event: str | None, data: bytes) -> bool:
        if data.strip() == b"[DONE]":
            self.done = True
            return True
        try:
            payload = json.loads(data)
        except ValueError:
            return True
        if not isinstance(payload, dict):
            return True
        self.events += 1
        if payload.get("service_tier"):
            self.service_tier = payload["service_tier"]
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = payload.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                self._read_choice(choice)
            if not choices and self._strip_usage_chunk and usage is not None:
                return False
        return True

    def _read_choice(self, choice: Any) -> None:
        if not isinstance(choice, dict):
            return
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        content = delta.get("content")
        if isinstance(content, str):
            self.content_chars.append(content)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            slot = self.tool_calls.setdefault(
                int(call.get("index", 0)), {"name": "", "arguments": ""}
            )
            function = call.get("function") or {}
            if function.get("name"):
                slot["name"] += function["name"]
            if function.get("arguments"):
                slot["arguments"] += function["arguments"]


OPENAI_CHAT = OpenAIChat()
