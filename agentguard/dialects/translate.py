"""Requests and answers translated between Anthropic's Messages API and OpenAI's Chat
Completions, for a fallback chain that crosses providers.

Only what both APIs express the same way is translated: text, base64 and URL images, tool
definitions, tool calls and their results, the system prompt, ``max_tokens``, stop sequences,
``temperature`` and ``top_p``, the tool choice. Anything else (extended thinking, prompt
caching, server tools, structured output, ``n > 1``...) makes :func:`untranslatable`
say why, and the fallback skips the model: never a silent mistranslation.

Streams are translated as they pass by :mod:`agentguard.dialects.translate_stream`.
Everything here is pure: dictionaries in, dictionaries out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from agentguard.dialects.anthropic_messages import anthropic_error_type
from agentguard.redact import redact_text

__all__ = [
    "ANTHROPIC",
    "CHAT",
    "Untranslatable",
    "translate_reply",
    "translate_request",
    "untranslatable",
]

ANTHROPIC = "anthropic_messages"
CHAT = "openai_chat"

_ANTHROPIC_KEYS = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "metadata",
        "stream",
    }
)
_CHAT_KEYS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "n",
        "stream",
        "stream_options",
        "response_format",
    }
)
CHAT_STOP = {
    # Anthropic's stop_reason -> chat's finish_reason
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
ANTHROPIC_STOP = {
    # chat's finish_reason -> Anthropic's stop_reason
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class Untranslatable(ValueError):
    """A request or answer that cannot be said faithfully in the other API."""


# -- what cannot be translated ------------------------------------------------------------------


def untranslatable(body: Mapping[str, Any], source: str, target: str) -> str | None:
    """Why ``body`` (a request in API ``source``) cannot be sent in API ``target``, or
    ``None`` when it can."""
    if source == target:
        return None
    try:
        translate_request(body, source, target, str(body.get("model", "")))
    except Untranslatable as exc:
        return str(exc)
    return None


def translate_request(
    body: Mapping[str, Any], source: str, target: str, model: str
) -> dict[str, Any]:
    """``body``, a request in API ``source``, as a request in API ``target`` for ``model``.

    Raises:
        Untranslatable: a part of the request has no faithful equivalent.
    """
    if (source, target) == (ANTHROPIC, CHAT):
        return _anthropic_to_chat(body, model)
    if (source, target) == (CHAT, ANTHROPIC):
        return _chat_to_anthropic(body, model)
    raise Untranslatable(f"requests in {source} are not translated to {target}")


def translate_reply(status: int, body: bytes | None, source: str, target: str) -> bytes:
    """An answer (or an error) of API ``source`` as API ``target`` would have given it.

    Raises:
        Untranslatable: the answer holds something the target API cannot carry.
    """
    try:
        payload = json.loads(body or b"")
    except ValueError:
        payload = None
    if status >= 400 or not isinstance(payload, dict):
        # Redacted: a gateway's error may echo the key it was sent.
        message = redact_text((_error_message(payload) or "the fallback model failed")[:300])
        return _error(status, message, target)
    if (source, target) == (CHAT, ANTHROPIC):
        answer = _chat_answer_to_anthropic(payload)
    elif (source, target) == (ANTHROPIC, CHAT):
        answer = _anthropic_answer_to_chat(payload)
    else:
        raise Untranslatable(f"answers of {source} are not translated to {target}")
    return json.dumps(answer, separators=(",", ":")).encode()


def _refuse(condition: object, what: str) -> None:
    if condition:
        raise Untranslatable(what)


# -- Anthropic Messages -> Chat Completions -------------------------------------------------------


def _anthropic_to_chat(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    extra = sorted(set(body) - _ANTHROPIC_KEYS)
    _refuse(extra, f"the request sets {', '.join(extra)[:80]}, which Chat Completions lacks")
    _refuse(_has_cache_control(body), "prompt caching (cache_control) has no Chat equivalent")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list) and system:
        messages.append({"role": "system", "content": _texts(system, "system")})
    for message in _list(body.get("messages")):
        _refuse(not isinstance(message, Mapping), "a message is not an object")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else _list(content)
        if message.get("role") == "assistant":
            messages.append(_assistant_to_chat(blocks))
        else:
            messages.extend(_user_to_chat(blocks))
    out: dict[str, Any] = {"model": model, "messages": messages}
    if body.get("stream"):
        out["stream"] = True  # the engine asks for the usage chunk it settles from
    cap = body.get("max_tokens")
    if isinstance(cap, int):
        field = "max_completion_tokens" if model.startswith(_REASONING_PREFIXES) else "max_tokens"
        out[field] = cap
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    stops = body.get("stop_sequences")
    if stops:
        _refuse(len(stops) > 4, "more than 4 stop_sequences (Chat Completions takes 4)")
        out["stop"] = list(stops)
    tools = _list(body.get("tools"))
    if tools:
        out["tools"] = [_tool_to_chat(tool) for tool in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        out.update(_choice_to_chat(choice))
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and metadata.get("user_id"):
        out["user"] = str(metadata["user_id"])
    return out


def _has_cache_control(body: Mapping[str, Any]) -> bool:
    from agentguard.dialects.anthropic_messages import cache_writes

    return cache_writes(body) != "none"


def _texts(blocks: list[Any], where: str) -> str:
    parts = []
    for block in blocks:
        _refuse(
            not isinstance(block, Mapping) or block.get("type") != "text",
            f"a {where} block that is not text",
        )
        parts.append(str(block.get("text") or ""))
    return "".join(parts)


def _chat_tool_call(block: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic ``tool_use`` block as a chat ``tool_calls`` entry."""
    arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
    return {
        "id": str(block.get("id", "")),
        "type": "function",
        "function": {"name": str(block.get("name", "")), "arguments": arguments},
    }


def _assistant_to_chat(blocks: list[Any]) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append(_chat_tool_call(block))
        else:
            raise Untranslatable(f"an assistant {kind!s:.30} block has no Chat equivalent")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user_to_chat(blocks: list[Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "tool_result":
            results.append(_tool_result_to_chat(block))
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        else:
            raise Untranslatable(f"a user {kind!s:.30} block has no Chat equivalent")
    messages = results
    if parts:
        plain = all(part["type"] == "text" for part in parts)
        content = "".join(part["text"] for part in parts) if plain else parts
        messages.append({"role": "user", "content": content})
    return messages


def _tool_result_to_chat(block: Mapping[str, Any]) -> dict[str, Any]:
    content = block.get("content", "")
    text = content if isinstance(content, str) else _texts(_list(content), "tool_result")
    if block.get("is_error"):
        # Chat has no error flag on a tool result: the text says it instead.
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}


def _image_url(block: Mapping[str, Any]) -> str:
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "base64":
        return f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"
    if isinstance(source, Mapping) and source.get("type") == "url" and source.get("url"):
        return str(source["url"])
    raise Untranslatable("an image given by file id has no Chat equivalent")


def _tool_to_chat(tool: Any) -> dict[str, Any]:
    _refuse(not isinstance(tool, Mapping), "a tool is not an object")
    kind = tool.get("type", "custom")
    _refuse(kind not in (None, "custom"), f"the Anthropic tool {kind!s:.40} has no Chat equivalent")
    function: dict[str, Any] = {
        "name": str(tool.get("name", "")),
        "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = str(tool["description"])
    return {"type": "function", "function": function}


def _choice_to_chat(choice: Mapping[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    chosen: object
    if kind == "auto":
        chosen = "auto"
    elif kind == "any":
        chosen = "required"
    elif kind == "none":
        chosen = "none"
    elif kind == "tool":
        chosen = {"type": "function", "function": {"name": str(choice.get("name", ""))}}
    else:
        raise Untranslatable(f"tool_choice {kind!s:.30} has no Chat equivalent")
    out: dict[str, Any] = {"tool_choice": chosen}
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


# -- Chat Completions -> Anthropic Messages -------------------------------------------------------


def _chat_to_anthropic(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    extra = sorted(set(body) - _CHAT_KEYS)
    _refuse(extra, f"the request sets {', '.join(extra)[:80]}, which the Messages API lacks")
    _refuse(body.get("n") not in (None, 1), "n > 1 (several choices) has no Messages equivalent")
    format_ = body.get("response_format")
    _refuse(
        format_ is not None and format_ != {"type": "text"},
        "response_format (JSON output) has no Messages equivalent",
    )
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in _list(body.get("messages")):
        _refuse(not isinstance(message, Mapping), "a message is not an object")
        role = message.get("role")
        if role in ("system", "developer"):
            _refuse(messages, "a system message after the conversation began")
            system.append(_chat_text(message.get("content"), "system"))
        elif role == "assistant":
            _append(messages, "assistant", _assistant_to_anthropic(message))
        elif role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id", "")),
                "content": _chat_text(message.get("content"), "tool"),
            }
            _append(messages, "user", [block])
        elif role == "user":
            _append(messages, "user", _user_to_anthropic(message.get("content")))
        else:
            raise Untranslatable(f"a {role!s:.20} message has no Messages equivalent")
    out: dict[str, Any] = {"model": model, "messages": messages}
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(cap, int):
        # Without one, the engine's output cap sets it (limits.enforce_output_cap).
        out["max_tokens"] = cap
    if body.get("stream"):
        out["stream"] = True  # every Messages stream reports its usage
    if system:
        out["system"] = "\n\n".join(system)
    temperature = body.get("temperature")
    if temperature is not None:
        _refuse(temperature > 1, "temperature above 1 (the Messages API takes 0 to 1)")
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = _list(body.get("tools"))
    if tools:
        out["tools"] = [_tool_to_anthropic(tool) for tool in tools]
    choice = _choice_to_anthropic(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    return out


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add blocks as a turn of ``role``: the Messages API alternates roles, so consecutive
    turns of one role (tool results, then the user's words) become one message."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": list(blocks)})


def _chat_text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    parts = _list(content)
    _refuse(
        any(not isinstance(p, Mapping) or p.get("type") != "text" for p in parts),
        f"a {where} message part that is not text",
    )
    return "".join(str(part.get("text") or "") for part in parts)


def _user_to_anthropic(content: object) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[dict[str, Any]] = []
    for part in _list(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "image_url":
            blocks.append({"type": "image", "source": _image_source(part.get("image_url"))})
        else:
            raise Untranslatable(f"a user {kind!s:.30} part has no Messages equivalent")
    return blocks


def _image_source(image: object) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str):
        raise Untranslatable("an image part without a URL")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media = header.removeprefix("data:").split(";", 1)[0]
        _refuse(";base64" not in header, "an image data URL that is not base64")
        return {"type": "base64", "media_type": media, "data": data}
    _refuse(not url.startswith(("http://", "https://")), "an image URL that is not http(s)")
    return {"type": "url", "url": url}


def _assistant_to_anthropic(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    for name in ("refusal", "audio", "function_call"):
        _refuse(message.get(name), f"an assistant message with {name} has no Messages equivalent")
    blocks: list[dict[str, Any]] = []
    text = _chat_text(message.get("content"), "assistant")
    if text:
        blocks.append({"type": "text", "text": text})
    for call in _list(message.get("tool_calls")):
        function = call.get("function") if isinstance(call, Mapping) else None
        _refuse(not isinstance(function, Mapping), "a tool call that is not a function call")
        try:
            arguments = json.loads(function.get("arguments") or "{}")  # type: ignore[union-attr]
        except ValueError:
            arguments = None
        _refuse(not isinstance(arguments, dict), "tool call arguments that are not a JSON object")
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id", "")),
                "name": str(function.get("name", "")),  # type: ignore[union-attr]
                "input": arguments,
            }
        )
    return blocks


def _tool_to_anthropic(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    _refuse(
        not isinstance(function, Mapping) or tool.get("type") != "function",
        "a tool that is not a function",
    )
    assert isinstance(function, Mapping)
    _refuse(function.get("strict"), "a strict function schema has no Messages equivalent")
    out: dict[str, Any] = {
        "name": str(function.get("name", "")),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = str(function["description"])
    return out


def _choice_to_anthropic(choice: object) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    function = choice.get("function") if isinstance(choice, Mapping) else None
    if isinstance(function, Mapping) and function.get("name"):
        return {"type": "tool", "name": str(function["name"])}
    raise Untranslatable("a tool_choice the Messages API has no equivalent for")


# -- answers --------------------------------------------------------------------------------------


def _chat_answer_to_anthropic(payload: Mapping[str, Any]) -> dict[str, Any]:
    choices = _list(payload.get("choices"))
    choice = _mapping(choices[0] if choices else None)
    message = _mapping(choice.get("message"))
    content: list[dict[str, Any]] = []
    stop = ANTHROPIC_STOP.get(str(choice.get("finish_reason")), "end_turn")
    text = message.get("content")
    if message.get("refusal"):
        text, stop = message["refusal"], "refusal"
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in _list(message.get("tool_calls")):
        function = _mapping(_mapping(call).get("function"))
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise Untranslatable("the fallback model's tool call arguments are not a JSON object")
        content.append(
            {
                "type": "tool_use",
                "id": str(_mapping(call).get("id", "")),
                "name": str(function.get("name", "")),
                "input": arguments,
            }
        )
    usage = _mapping(payload.get("usage"))
    cached = int(_mapping(usage.get("prompt_tokens_details")).get("cached_tokens") or 0)
    return {
        "id": f"msg_{payload.get('id', '')}",
        "type": "message",
        "role": "assistant",
        "model": str(payload.get("model", "")),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens") or 0) - cached,
            "output_tokens": int(usage.get("completion_tokens") or 0),
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        },
    }


def _anthropic_answer_to_chat(payload: Mapping[str, Any]) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _list(payload.get("content")):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append(_chat_tool_call(block))
        elif kind not in ("thinking", "redacted_thinking"):
            raise Untranslatable(f"the fallback model answered a {kind!s:.30} block")
    stop = str(payload.get("stop_reason"))
    refused = stop == "refusal"
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if refused else ("".join(text) if text or not calls else None),
        "refusal": "".join(text) if refused else None,
    }
    if calls:
        message["tool_calls"] = calls
    usage = _mapping(payload.get("usage"))
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = (
        int(usage.get("input_tokens") or 0)
        + cached
        + int(usage.get("cache_creation_input_tokens") or 0)
    )
    output = int(usage.get("output_tokens") or 0)
    return {
        "id": f"chatcmpl-{payload.get('id', '')}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(payload.get("model", "")),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": CHAT_STOP.get(stop, "stop"),
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def _error_message(payload: object) -> str | None:
    error = payload.get("error") if isinstance(payload, Mapping) else None
    if isinstance(error, Mapping) and error.get("message"):
        return str(error["message"])
    return None


def _error(status: int, message: str, target: str) -> bytes:
    if target == ANTHROPIC:
        kind = anthropic_error_type(status)
        payload: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
        payload = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return json.dumps(payload, separators=(",", ":")).encode()


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
