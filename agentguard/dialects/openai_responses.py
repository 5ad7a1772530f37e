"""OpenAI's Responses API (``POST .../responses``) as the pipeline sees it.

The request's ``input`` (a string or a list of items), ``instructions`` and function tools are
read as the chat conversation they amount to, so counting, pricing and routing work as for
chat completions. What the Responses API adds to the bill is bounded too:

- ``previous_response_id``: the provider bills the whole earlier conversation again. The guard
  remembers the size of every response it settled (in the store, so every process sees it)
  and adds it to the worst case; under a budget, a response id it never saw is refused.
- ``conversation``: the provider adds the conversation's stored items, whose size the guard
  cannot know; refused under a budget.
- Built-in tools (web search, file search, code interpreter, image generation, computer use)
  are billed per use at rates the price data does not carry; refused under a budget.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentguard.dialects.base import Answer
from agentguard.dialects.openai_chat import openai_error_message
from agentguard.dialects.responses_history import ResponsesHistory
from agentguard.dialects.sse import SseReader
from agentguard.errors import UnmeteredRequest
from agentguard.limits import ToolCall
from agentguard.pricing import Usage
from agentguard.pricing.worst_case import bound_request

if TYPE_CHECKING:
    from agentguard.pricing import Pricer
    from agentguard.pricing.worst_case import Bound
    from agentguard.tokens import TokenCounter
    from agentguard.trimming.view import HistoryView

__all__ = ["OPENAI_RESPONSES", "OpenAIResponses", "OpenAIResponsesTap"]

_ENDPOINT = "/responses"
# The smallest max_output_tokens the API accepts.
_MIN_OUTPUT_TOKENS = 16
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class OpenAIResponses:
    """The Responses dialect (``client.responses.create/stream/parse``)."""

    name = "openai_responses"
    endpoint = _ENDPOINT
    cap_field = "max_output_tokens"

    def __init__(self) -> None:
        self._trim_view = ResponsesHistory(self)

    def matches(self, method: str, path: str) -> bool:
        # Not /responses/{id}, /responses/{id}/cancel or /responses/input_tokens: those are
        # reads, cancellations and the free token count.
        return method == "POST" and path.rstrip("/").endswith(_ENDPOINT)

    @property
    def trim_view(self) -> HistoryView:
        return self._trim_view

    def messages(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        messages = input_messages(body.get("input"))
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            messages.insert(0, {"role": "developer", "content": instructions})
        return messages

    def count_input(self, body: Mapping[str, Any], model: str, counter: TokenCounter) -> int:
        tokens = counter.count_messages(self.messages(body), model)
        tools = function_tools(body.get("tools"))
        if tools:
            tokens += counter.count_tools(tools, model)
        return tokens

    def output_cap(self, body: Mapping[str, Any]) -> int | None:
        cap = body.get("max_output_tokens")
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            return cap
        return None

    def set_output_cap(self, body: dict[str, Any], tokens: int, model: str) -> None:
        body["max_output_tokens"] = max(tokens, _MIN_OUTPUT_TOKENS)

    def ask_stream_usage(self, body: dict[str, Any]) -> bool:
        # A Responses stream always ends with the whole response, usage included.
        return False

    def streaming(self, body: Mapping[str, Any]) -> bool:
        return bool(body.get("stream"))

    def stored_by_provider(self, body: Mapping[str, Any]) -> bool:
        # store defaults to true; a response stored false cannot be continued.
        return body.get("store") is not False

    def previous_response(self, body: Mapping[str, Any]) -> str | None:
        previous = body.get("previous_response_id")
        return previous if isinstance(previous, str) and previous else None

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
        # Its own refusals (stored conversations, background runs, built-in tools) ran when
        # the call came in (refuse_unbounded); the chat rules run again below.
        return bound_request(
            _as_chat(body, self.messages(body)),
            model,
            counted_input=counted_input,
            max_output_tokens=max_output_tokens,
            output_capped=output_capped,
            pricer=pricer,
            counter=counter,
            budgeted=budgeted,
        )

    def refuse_unbounded(self, body: Mapping[str, Any], *, output_capped: bool) -> None:
        problem = _unbounded(body)
        if problem is not None:
            reason, fix, field = problem
            raise UnmeteredRequest(
                f"refused before sending: {reason}, so the call's worst-case cost cannot be "
                f"bounded and the session runs under a budget; {fix}",
                endpoint=_ENDPOINT,
                reason=reason,
                field=field,
            )
        from agentguard.pricing.worst_case import refuse_unbounded

        refuse_unbounded(_as_chat(body, self.messages(body)), output_capped=output_capped)

    def answer(self, payload: Mapping[str, Any]) -> Answer:
        return response_answer(payload)

    def tap(self, *, strip_usage: bool) -> OpenAIResponsesTap:
        return OpenAIResponsesTap()

    def error_message(self, payload: object) -> str | None:
        return openai_error_message(payload)

    def replay(self, client: Any, request: Mapping[str, Any]) -> Any:
        kept = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
        return client.responses.create(**kept)


def response_answer(payload: Mapping[str, Any]) -> Answer:
    """Read a ``response`` object: its text, function calls, usage, tier and id."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    refusals: list[str] = []
    for item in payload.get("output") or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    refusals.append(part["refusal"])
                elif isinstance(part.get("text"), str):
                    texts.append(part["text"])
        elif kind == "function_call":
            calls.append(ToolCall(str(item.get("name", "")), str(item.get("arguments", ""))))
    usage = payload.get("usage")
    response_id = payload.get("id")
    incomplete = payload.get("incomplete_details")
    return Answer(
        text="".join(texts),
        tool_calls=calls,
        usage=Usage.from_openai(usage) if usage else None,
        service_tier=payload.get("service_tier"),
        response_id=response_id if isinstance(response_id, str) else None,
        refusal=" ".join(refusals) if refusals else None,
        filtered=isinstance(incomplete, dict) and incomplete.get("reason") == "content_filter",
    )


class OpenAIResponsesTap(SseReader):
    """Reads a Responses stream: the text and function-call deltas as they pass, and the
    whole response (usage included) from its last event."""

    __slots__ = ("_calls", "_final", "_text")

    def __init__(self) -> None:
        super().__init__()
        self._text: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}
        self._final: dict[str, Any] | None = None

    def answer(self) -> Answer:
        if self._final is not None:
            return response_answer(self._final)
        calls = [
            ToolCall(slot["name"], slot["arguments"]) for _, slot in sorted(self._calls.items())
        ]
        return Answer(text="".join(self._text), tool_calls=calls)

    def read_data(self, event: str | None, data: bytes) -> bool:
        try:
            payload = json.loads(data)
        except ValueError:
            return True
        if not isinstance(payload, dict):
            return True
        self.events += 1
        kind = payload.get("type") or event
        if kind == "response.output_text.delta" and isinstance(payload.get("delta"), str):
            self._text.append(payload["delta"])
        elif kind == "response.output_item.added":
            item = payload.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                slot = self._calls.setdefault(_index(payload), {"name": "", "arguments": ""})
                slot["name"] = str(item.get("name", ""))
        elif kind == "response.function_call_arguments.delta":
            slot = self._calls.setdefault(_index(payload), {"name": "", "arguments": ""})
            slot["arguments"] += str(payload.get("delta", ""))
        elif kind in _FINAL_EVENTS:
            response = payload.get("response")
            if isinstance(response, dict):
                self._final = response
            self.done = True
        elif kind == "error":
            # The stream ends in an error: whatever was generated is unknown, the usage too.
            self.done = True
        return True


def _index(payload: Mapping[str, Any]) -> int:
    index = payload.get("output_index", 0)
    return index if isinstance(index, int) else 0


# -- the conversation the request amounts to ----------------------------------------------------


def input_messages(items: Any) -> list[dict[str, Any]]:
    """``input`` (a string or a list of items) as chat messages, read-only and tolerant: items
    that carry no conversation (reasoning) are left out, unknown ones are kept as text."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        return []
    messages: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message" or (kind is None and "role" in item):
            role = str(item.get("role", "user"))
            messages.append({"role": role, "content": _chat_content(item.get("content"))})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {
                    "name": str(item.get("name", "")),
                    "arguments": str(item.get("arguments", "")),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last.get("role") == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": output if isinstance(output, str) else _chat_content(output),
                }
            )
        elif kind == "reasoning":
            # Encrypted or summarised reasoning carried back: billed as input, counted as text.
            summary = item.get("summary") or []
            text = " ".join(str(part.get("text", "")) for part in summary if isinstance(part, dict))
            encrypted = item.get("encrypted_content")
            if isinstance(encrypted, str):
                text += " " + encrypted
            if text.strip():
                messages.append({"role": "assistant", "content": text})
        else:
            messages.append(
                {"role": "user", "content": json.dumps(item, ensure_ascii=False, default=str)}
            )
    return messages


def _chat_content(content: Any) -> str | list[dict[str, Any]]:
    """A Responses content (string or parts) as chat content: text parts as text, images as
    ``image_url`` parts, files as ``file`` parts (which a budget refuses)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            url = part.get("image_url") or part.get("file_id") or ""
            image: dict[str, Any] = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            parts.append({"type": "file", "file": {}})
        elif kind == "input_audio":
            parts.append({"type": "input_audio", "input_audio": {}})
        else:
            parts.append({"type": str(kind)})
    return parts


def function_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's function tools in the chat shape (what they cost as input)."""
    if not isinstance(tools, list):
        return []
    chat: list[dict[str, Any]] = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            function = {k: v for k, v in tool.items() if k != "type"}
            chat.append({"type": "function", "function": function})
    return chat


def _as_chat(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completion the request amounts to, for the chat worst-case rules (images,
    files, audio, schemas, service tier)."""
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for name in ("service_tier", "max_output_tokens"):
        if name in body:
            chat["max_tokens" if name == "max_output_tokens" else name] = body[name]
    text = body.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        chat["response_format"] = text["format"]
    return chat


def _unbounded(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """Why the Responses-only parts of a request cannot be bounded: (reason, fix, field)."""
    if body.get("conversation"):
        return (
            "it continues a stored conversation, whose items the provider bills as input "
            "and agentguard cannot see",
            "send the conversation's items as input instead, or call without a budget",
            "conversation",
        )
    if body.get("background"):
        return (
            "it runs in the background, whose result (and bill) arrives after the call",
            "call without background, or without a budget",
            "background",
        )
    for index, tool in enumerate(body.get("tools") or ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in ("function", "custom"):
            return (
                f"tools[{index}] is the built-in tool {str(kind)[:40]!r}, which the provider "
                f"bills per use at rates the price data does not carry",
                "use function tools, or call without a budget",
                f"tools[{index}]",
            )
    return None


OPENAI_RESPONSES = OpenAIResponses()
