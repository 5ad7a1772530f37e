"""Anthropic's Messages API (``POST .../v1/messages``) as the pipeline sees it.

* **Input.** Claude's tokenizer is not public, so the input is an estimate: the text of the
  system prompt, the messages (text, ``tool_use`` names and inputs, ``tool_result`` contents,
  earlier thinking) and the tool definitions, counted with o200k_base times a per-model factor
  that starts high for Claude (:data:`~agentguard.tokens.CLAUDE_ESTIMATE_FACTOR`) and is
  calibrated from the usage each response reports. Added to it, in Claude's own tokens: the
  system prompt the API adds when tools are offered, and images by Anthropic's formula
  (``width * height / 750``, after scaling to the largest native size; an image whose size is
  not in the request counts as the largest).
* **Output.** ``max_tokens``, which the API requires; extended thinking
  (``thinking.budget_tokens``) is generated within it (a larger budget, which interleaved
  thinking allows, is taken as the bound instead).
* **Money.** Anthropic's ``input_tokens`` leaves out cache reads and writes;
  :meth:`~agentguard.pricing.Usage.from_anthropic` adds them back. The worst case prices every
  input token at the dearest rate the request can be billed at: the one-hour cache-write rate
  when any ``cache_control`` asks for ``ttl: "1h"``, the five-minute rate when any asks for
  caching, the plain input rate when nothing is marked for caching.
* **Refused under a budget** (:class:`~agentguard.UnmeteredRequest`): ``document`` blocks other
  than plain text (PDF pages bill as text and images of unknown size), server tools that bill
  per use (web search, web fetch, code execution), the MCP connector, and content blocks of an
  unknown type.
* **Streams** always report usage: ``message_start`` carries the input, ``message_delta`` the
  final (cumulative) counts. A stream is settled from them only once ``message_delta`` has
  arrived; one cut before it is charged at its worst case.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from agentguard.dialects.anthropic_history import AnthropicHistory
from agentguard.dialects.base import Answer
from agentguard.dialects.sse import SseReader
from agentguard.errors import UnmeteredRequest
from agentguard.limits import ToolCall
from agentguard.pricing import Usage
from agentguard.pricing.images import image_size
from agentguard.pricing.worst_case import Bound

if TYPE_CHECKING:
    from agentguard.pricing import CacheWrites, Pricer
    from agentguard.tokens import TokenCounter
    from agentguard.trimming.view import HistoryView

__all__ = [
    "ANTHROPIC_MESSAGES",
    "AnthropicMessages",
    "AnthropicMessagesTap",
    "anthropic_error_type",
    "claude_image_tokens",
]

_ENDPOINT = "/v1/messages"

_TOOL_PROMPT_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-3-opus", 530),
    ("claude-3-haiku", 340),
    ("claude-3-sonnet", 235),
    ("claude", 346),
)
"""The system prompt the API adds when a request offers tools (Anthropic's documented counts,
the larger of ``tool_choice`` auto and any), by model-name prefix; the last entry is the
Claude 3.7 / 4 family's and also counts for models not listed."""
_DEFAULT_TOOL_PROMPT_TOKENS = 530
"""For models that are not Claude (a gateway serving the Messages API): the largest count."""

_BUILT_IN_CLIENT_TOOL_TOKENS = 1024
"""The extra system prompt of one Anthropic-defined client tool (bash 245, text editor 700,
computer use 735 tokens by Anthropic's tables), rounded up for versions not yet listed."""

_METERED_TOOL_PREFIXES = ("web_search", "web_fetch", "code_execution", "tool_search", "mcp")
"""Server tools: they bill per use (or their results bill as input) beyond the request."""

_IMAGE_MAX_EDGE = 2576
"""The longest native image edge of any Claude model (earlier models: 1568 px); a larger
image is scaled down to it before it is billed."""
_IMAGE_PIXELS_PER_TOKEN = 750
_IMAGE_PATCH_PX = 28
_IMAGE_UNKNOWN_SIZE_TOKENS = math.ceil(_IMAGE_MAX_EDGE * _IMAGE_MAX_EDGE / _IMAGE_PIXELS_PER_TOKEN)
"""An image whose size is not in the request (a URL or a file id): the largest one."""

_MESSAGE_FRAMING_TOKENS = 4
"""Role markers around one message in Claude's prompt (not documented; errs high)."""


class AnthropicMessages:
    """The Messages dialect (Anthropic's API, and gateways that serve it)."""

    name = "anthropic_messages"
    endpoint = _ENDPOINT
    cap_field = "max_tokens"

    def __init__(self) -> None:
        self._trim_view = AnthropicHistory(self)

    def matches(self, method: str, path: str) -> bool:
        # Not /v1/messages/count_tokens (free) nor /v1/messages/batches (not metered).
        return method == "POST" and path.rstrip("/").endswith(_ENDPOINT)

    @property
    def trim_view(self) -> HistoryView:
        return self._trim_view

    def messages(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        return list(_chat_view(body, with_images=True))

    def count_input(self, body: Mapping[str, Any], model: str, counter: TokenCounter) -> int:
        tokens = counter.count_messages(list(_chat_view(body, with_images=False)), model)
        tokens += _MESSAGE_FRAMING_TOKENS * len(_list(body.get("messages")))
        tools = _list(body.get("tools"))
        if tools:
            tokens += counter.count_tools(tools, model) + _tool_prompt_tokens(model)
            built_in = sum(1 for tool in tools if _built_in_client_tool(tool))
            tokens += built_in * _BUILT_IN_CLIENT_TOOL_TOKENS
        return tokens + sum(claude_image_tokens(source) for source in _image_sources(body))

    def output_cap(self, body: Mapping[str, Any]) -> int | None:
        cap = _positive(body.get("max_tokens"))
        if cap is None:
            return None
        thinking = body.get("thinking")
        budget = _positive(thinking.get("budget_tokens")) if isinstance(thinking, Mapping) else None
        # Thinking is generated within max_tokens; only interleaved thinking may name a larger
        # budget (for a whole turn), and then the larger number is the safe bound.
        return max(cap, budget or 0)

    def set_output_cap(self, body: dict[str, Any], tokens: int, model: str) -> None:
        body["max_tokens"] = tokens

    def ask_stream_usage(self, body: dict[str, Any]) -> bool:
        return False  # every Messages stream reports its usage

    def stored_by_provider(self, body: Mapping[str, Any]) -> bool:
        return False

    def previous_response(self, body: Mapping[str, Any]) -> str | None:
        return None

    def streaming(self, body: Mapping[str, Any]) -> bool:
        return bool(body.get("stream"))

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
        if budgeted:
            self.refuse_unbounded(body, output_capped=output_capped)
        # A margin over the estimate: the provider's framing of messages and tool calls.
        input_tokens = counted_input + counted_input // 20 + 16
        price = pricer.price(model)
        usd = price.worst_case(input_tokens, max_output_tokens, cache_writes=cache_writes(body))
        return Bound(usd, input_tokens, max_output_tokens, price, None)

    def refuse_unbounded(self, body: Mapping[str, Any], *, output_capped: bool) -> None:
        problem = _unbounded(body, output_capped)
        if problem is not None:
            reason, fix, field = problem
            raise UnmeteredRequest(
                f"refused before sending: {reason}, so the call's worst-case cost cannot be "
                f"bounded and the session runs under a budget; {fix}",
                endpoint=_ENDPOINT,
                reason=reason,
                field=field,
            )

    def answer(self, payload: Mapping[str, Any]) -> Answer:
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in _list(payload.get("content")):
            if not isinstance(block, Mapping):
                continue
            if block.get("type") == "text":
                text.append(str(block.get("text") or ""))
            elif block.get("type") == "tool_use":
                calls.append(ToolCall(str(block.get("name", "")), _arguments(block.get("input"))))
        response_id = payload.get("id")
        declined = payload.get("stop_reason") == "refusal"
        return Answer(
            text="".join(text),
            tool_calls=calls,
            usage=Usage.from_anthropic(payload.get("usage")),
            response_id=response_id if isinstance(response_id, str) else None,
            refusal=("".join(text).strip() or "stop_reason refusal") if declined else None,
        )

    def tap(self, *, strip_usage: bool) -> AnthropicMessagesTap:
        return AnthropicMessagesTap()

    def error_message(self, payload: object) -> str | None:
        error = payload.get("error") if isinstance(payload, Mapping) else None
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        return None

    def replay(self, client: Any, request: Mapping[str, Any]) -> Any:
        kept = {key: value for key, value in request.items() if key != "stream"}
        return client.messages.create(**kept)


ANTHROPIC_MESSAGES = AnthropicMessages()

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The ``error.type`` Anthropic gives an HTTP status (``api_error`` for any other)."""
    return _ERROR_TYPES.get(status, "api_error")


# -- the request --------------------------------------------------------------------------------


def _positive(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _blocks(content: object) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return _list(content)


def _arguments(value: object) -> str:
    """A tool call's input as canonical JSON (stream and whole answers compare equal)."""
    return json.dumps(value if value is not None else {}, sort_keys=True, separators=(",", ":"))


def _block_text(block: Mapping[str, Any]) -> str:
    """What a non-image block puts before the model, as text."""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "thinking":
        return str(block.get("thinking") or "")
    if kind == "redacted_thinking":
        return str(block.get("data") or "")
    if kind == "document":
        source = block.get("source")
        if isinstance(source, Mapping) and source.get("type") == "text":
            return str(source.get("data") or "")
        if isinstance(source, Mapping) and source.get("type") == "content":
            return "".join(
                _block_text(part)
                for part in _list(source.get("content"))
                if isinstance(part, Mapping)
            )
    return json.dumps(block, ensure_ascii=False, separators=(",", ":"), default=str)


def _result_content(content: object, *, with_images: bool) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = _parts(_list(content), with_images=with_images)
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _parts(blocks: list[Any], *, with_images: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "image":
            if with_images:
                parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
            continue
        parts.append({"type": "text", "text": _block_text(block)})
    return parts


def _image_url(block: Mapping[str, Any]) -> str:
    source = block.get("source")
    if not isinstance(source, Mapping):
        return ""
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"
    return str(source.get("url") or source.get("file_id") or "")


def _chat_view(body: Mapping[str, Any], *, with_images: bool) -> Iterator[dict[str, Any]]:
    """The request as chat messages: system first, ``tool_use`` blocks as assistant
    ``tool_calls``, ``tool_result`` blocks as ``tool`` messages (images left out unless asked:
    they are counted by Anthropic's own formula)."""
    system = body.get("system")
    if isinstance(system, str) and system:
        yield {"role": "system", "content": system}
    elif isinstance(system, list) and system:
        yield {
            "role": "system",
            "content": "".join(p["text"] for p in _parts(system, with_images=False)),
        }
    for message in _list(body.get("messages")):
        if not isinstance(message, Mapping):
            continue
        blocks = _blocks(message.get("content"))
        if message.get("role") == "assistant":
            yield _assistant(blocks)
            continue
        for block in blocks:
            if isinstance(block, Mapping) and block.get("type") == "tool_result":
                yield {
                    "role": "tool",
                    "tool_call_id": str(block.get("tool_use_id", "")),
                    "content": _result_content(block.get("content", ""), with_images=with_images),
                }
        rest = [
            block
            for block in blocks
            if not (isinstance(block, Mapping) and block.get("type") == "tool_result")
        ]
        if rest:
            parts = _parts(rest, with_images=with_images)
            if all(part["type"] == "text" for part in parts):
                yield {"role": "user", "content": "".join(part["text"] for part in parts)}
            else:
                yield {"role": "user", "content": parts}


def _assistant(blocks: list[Any]) -> dict[str, Any]:
    text = []
    calls = []
    for block in blocks:
        if not isinstance(block, Mapping):
            continue
        if block.get("type") in ("tool_use", "server_tool_use"):
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": _arguments(block.get("input")),
                    },
                }
            )
        else:
            text.append(_block_text(block))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_prompt_tokens(model: str) -> int:
    name = model.rsplit("/", 1)[-1].lower()
    for prefix, tokens in _TOOL_PROMPT_TOKENS:
        if name.startswith(prefix):
            return tokens
    return _DEFAULT_TOOL_PROMPT_TOKENS


def _tool_type(tool: object) -> str:
    kind = tool.get("type") if isinstance(tool, Mapping) else None
    return kind if isinstance(kind, str) else "custom"


def _built_in_client_tool(tool: object) -> bool:
    kind = _tool_type(tool)
    return kind != "custom" and not kind.startswith(_METERED_TOOL_PREFIXES)


def _walk_blocks(body: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every content block of the request: system, messages, and those inside tool results."""
    pending: list[Any] = list(_blocks(body.get("system")))
    for message in _list(body.get("messages")):
        if isinstance(message, Mapping):
            pending.extend(_blocks(message.get("content")))
    while pending:
        block = pending.pop()
        if not isinstance(block, Mapping):
            continue
        yield block
        if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
            pending.extend(block["content"])


def _image_sources(body: Mapping[str, Any]) -> Iterator[object]:
    for block in _walk_blocks(body):
        if block.get("type") == "image":
            yield block.get("source")


def claude_image_tokens(source: object) -> int:
    """The input tokens one image block's ``source`` bills, at most.

    Anthropic bills about ``width * height / 750`` tokens after scaling the image down to the
    model's largest native size (here the largest of any Claude model, 2576 px on the long
    edge), and newer models count 28 px patches; the larger of the two is taken. The size is
    read from a base64 source's header; a URL or file source counts as the largest image.
    """
    size = None
    if isinstance(source, Mapping) and source.get("type") == "base64":
        data = source.get("data")
        media = source.get("media_type") or "image/png"
        if isinstance(data, str):
            size = image_size(f"data:{media};base64,{data}")
    if size is None:
        return _IMAGE_UNKNOWN_SIZE_TOKENS
    width, height = size
    scale = min(1.0, _IMAGE_MAX_EDGE / max(width, height))
    width, height = max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))
    by_area = math.ceil(width * height / _IMAGE_PIXELS_PER_TOKEN)
    by_patch = math.ceil(width / _IMAGE_PATCH_PX) * math.ceil(height / _IMAGE_PATCH_PX)
    return max(by_area, by_patch)


def cache_writes(body: Mapping[str, Any]) -> CacheWrites:
    """The longest prompt-cache lifetime the request asks for anywhere (a top-level
    ``cache_control``, tools, system, messages, tool results), or ``"none"``."""
    found: CacheWrites = "none"
    marked: list[object] = [body, *_list(body.get("tools")), *_walk_blocks(body)]
    for item in marked:
        control = item.get("cache_control") if isinstance(item, Mapping) else None
        if not isinstance(control, Mapping):
            continue
        if control.get("ttl") == "1h":
            return "1h"
        found = "5m"
    return found


_KNOWN_BLOCKS = frozenset(
    {
        "text",
        "image",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "document",
        "search_result",
        "server_tool_use",
    }
)


def _unbounded(body: Mapping[str, Any], output_capped: bool) -> tuple[str, str, str] | None:
    """Why the request's cost cannot be bounded, with the fix and the field: or ``None``."""
    if not output_capped:
        return (
            "the request sets no max_tokens and limits.enforce_output_cap is off",
            "set max_tokens on the request, or limits.enforce_output_cap = true",
            "limits.enforce_output_cap",
        )
    for index, tool in enumerate(_list(body.get("tools"))):
        kind = _tool_type(tool)
        if kind.startswith(_METERED_TOOL_PREFIXES):
            return (
                f"tools[{index}] is the server tool {kind[:60]!r}, which bills per use beyond "
                f"the request's tokens",
                "run the tool on the client side instead, or call without a budget",
                f"tools[{index}]",
            )
    if body.get("mcp_servers"):
        return (
            "the request uses the MCP connector (mcp_servers), whose tool results bill as "
            "input the request does not show",
            "call the MCP tools on the client side, or call without a budget",
            "mcp_servers",
        )
    for block in _walk_blocks(body):
        block_type = block.get("type")
        if block_type == "document":
            source = block.get("source")
            if not (isinstance(source, Mapping) and source.get("type") in ("text", "content")):
                return (
                    "a document block holds a PDF or file, whose pages bill as text and images "
                    "of unknown size",
                    "send the document's text instead, or call without a budget",
                    "messages.content.document",
                )
        elif block_type not in _KNOWN_BLOCKS:
            return (
                f"a content block of type {str(block_type)[:40]!r}, which agentguard does not know "
                f"how to price",
                "send text, image, tool_use and tool_result blocks only, or call without a budget",
                "messages.content",
            )
    return None


# -- the stream ---------------------------------------------------------------------------------


class AnthropicMessagesTap(SseReader):
    """Reads a Messages stream's server-sent events as they pass (all are handed on).

    Collects the text, the tool calls (``content_block_start`` + ``input_json_delta``) and the
    usage (``message_start``, updated by the cumulative counts of ``message_delta``); done at
    ``message_stop``. An ``error`` event is kept in :attr:`error` and leaves the stream not
    done, so the engine charges it at its worst case.
    """

    __slots__ = ("_blocks", "_final", "_usage", "error", "response_id", "text_parts")

    def __init__(self) -> None:
        super().__init__()
        self._usage: dict[str, Any] = {}
        self._final = False
        self._blocks: dict[int, dict[str, str]] = {}
        self.text_parts: list[str] = []
        self.error: dict[str, Any] | None = None
        self.response_id: str | None = None

    def answer(self) -> Answer:
        calls = [
            ToolCall(block["name"], _canonical(block["json"]))
            for _, block in sorted(self._blocks.items())
        ]
        return Answer(
            text="".join(self.text_parts),
            tool_calls=calls,
            # message_start's output count is a placeholder; only message_delta's is final.
            usage=Usage.from_anthropic(self._usage) if self._final else None,
            response_id=self.response_id,
        )

    def read_data(self, event: str | None, data: bytes) -> bool:
        try:
            payload = json.loads(data)
        except ValueError:
            return True
        if not isinstance(payload, dict):
            return True
        self.events += 1
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._merge_usage(message.get("usage"))
                if isinstance(message.get("id"), str):
                    self.response_id = message["id"]
        elif kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                self._blocks[int(payload.get("index", 0))] = {
                    "name": str(block.get("name", "")),
                    "json": "",
                }
            elif isinstance(block, dict) and block.get("type") == "text" and block.get("text"):
                self.text_parts.append(str(block["text"]))
        elif kind == "content_block_delta":
            self._read_delta(payload)
        elif kind == "message_delta":
            self._merge_usage(payload.get("usage"))
            self._final = True
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            error = payload.get("error")
            self.error = error if isinstance(error, dict) else {"message": str(error)}
        return True

    def _read_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return
        if delta.get("type") == "text_delta":
            self.text_parts.append(str(delta.get("text") or ""))
        elif delta.get("type") == "input_json_delta":
            block = self._blocks.get(int(payload.get("index", 0)))
            if block is not None:
                block["json"] += str(delta.get("partial_json") or "")

    def _merge_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            self._usage.update({key: value for key, value in usage.items() if value is not None})


def _canonical(text: str) -> str:
    try:
        return _arguments(json.loads(text)) if text.strip() else _arguments({})
    except ValueError:
        return text
