"""OpenAI's Responses API (``POST /v1/responses``) in the simulated provider.

``input`` (a string or items), ``instructions``, function tools (answered as ``function_call``
output items), ``max_output_tokens`` and ``previous_response_id`` are honoured. The sim keeps
every response it gives, as the provider does with ``store``: a request naming a previous
response is answered, and billed, as if it carried that whole earlier conversation again.
Streams send the provider's named events (``response.created`` ... ``response.completed``),
each with its ``sequence_number``. Errors keep OpenAI's error shape; as the provider does, an
output whose call is missing, a call without its output and a reasoning item without the item
it belongs to are answered with a 400.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from agentguard.sim.dialect import Answer, Dialect, DialectError, ErrorAnswer, Event, Turn
from agentguard.sim.payloads import Completion, _split_words, default_error_body, error_body

__all__ = ["ResponsesDialect"]

# The smallest max_output_tokens the provider accepts.
_MIN_OUTPUT_TOKENS = 16
_ARGUMENT_FRAGMENT_CHARS = 16


def _invalid(message: str, param: str | None = None, code: str | None = None) -> DialectError:
    return DialectError(ErrorAnswer(400, error_body(message, "invalid_request_error", param, code)))


def _text_of(content: Any) -> str | list[Any]:
    """A message item's content as chat content: a string, or its parts as chat parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[Any] = []
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif isinstance(part, dict) and part.get("type") == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part.get("image_url", "")}})
        else:
            parts.append(part)
    return parts


def input_messages(items: Any) -> list[dict[str, Any]]:
    """Translate ``input`` (a string or a list of items) into chat messages.

    A run of assistant output (a message and the function calls that follow it) becomes one
    assistant message, so the step count matches the chat endpoint's for the same agent.

    Raises:
        DialectError: ``input`` is neither a string nor a list of items.
    """
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise _invalid("Invalid type for 'input': expected a string or an array.", "input")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _invalid(
                f"Invalid type for 'input[{index}]': expected an object.", f"input[{index}]"
            )
        kind = item.get("type", "message")
        if kind == "message" or (kind is None and "role" in item):
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _invalid(
                    f"Invalid value for 'input[{index}].role': {role!r}.", f"input[{index}].role"
                )
            content = _text_of(item.get("content"))
            if role == "assistant" and messages and messages[-1].get("_open"):
                previous = messages[-1]
                previous["content"] = (previous.get("content") or "") + (
                    content if isinstance(content, str) else ""
                )
                continue
            message: dict[str, Any] = {"role": role, "content": content}
            if role == "assistant":
                message["_open"] = True
            messages.append(message)
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {
                    "name": str(item.get("name", "")),
                    "arguments": str(item.get("arguments", "")),
                },
            }
            if messages and messages[-1].get("_open"):
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append(
                    {"role": "assistant", "content": None, "tool_calls": [call], "_open": True}
                )
        elif kind == "function_call_output":
            output = item.get("output", "")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
        elif kind == "reasoning":
            continue  # the provider does not bill earlier reasoning again as input
        else:
            messages.append({"role": "user", "content": json.dumps(item)})
    for message in messages:
        message.pop("_open", None)
    return messages


_CALLS = ("function_call", "custom_tool_call")
_OUTPUTS = ("function_call_output", "custom_tool_call_output")


def check_pairing(earlier: list[dict[str, Any]], items: Any) -> None:
    """Reject, as the provider does, an output whose call is neither in ``input`` before it nor
    in the continued conversation, a call in ``input`` whose output it lacks, and a reasoning
    item not followed by the model's item it belongs to.

    Raises:
        DialectError: 400, naming the call or item.
    """
    if not isinstance(items, list):
        return
    made = {
        str(call.get("id"))
        for message in earlier
        for call in message.get("tool_calls") or ()
        if isinstance(call, dict)
    }
    answered: set[str] = set()
    awaiting: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        call_id = str(item.get("call_id", ""))
        if kind in _CALLS:
            made.add(call_id)
            awaiting.append(call_id)
        elif kind in _OUTPUTS:
            if call_id not in made:
                raise _invalid(
                    f"No tool call found for function call output with call_id {call_id}.",
                    "input",
                )
            answered.add(call_id)
        elif kind == "reasoning":
            following = items[index + 1] if index + 1 < len(items) else None
            if not _model_item(following):
                raise _invalid(
                    f"Item '{item.get('id', '')}' of type 'reasoning' was provided without its "
                    "required following item.",
                    "input",
                )
    for call_id in awaiting:
        if call_id not in answered:
            raise _invalid(f"No tool output found for function call {call_id}.", "input")


def _model_item(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    kind = item.get("type", "message")
    if kind == "message":
        return item.get("role") == "assistant"
    return isinstance(kind, str) and not kind.endswith("_output")


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Responses function tools (flat) as chat tools, for counting; other tools kept as is."""
    if not isinstance(tools, list) or not tools:
        return None
    converted: list[dict[str, Any]] = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            function = {key: value for key, value in tool.items() if key != "type"}
            converted.append({"type": "function", "function": function})
        else:
            converted.append(tool)
    return converted


class ResponsesDialect(Dialect):
    """The Responses API; remembers its answers for ``previous_response_id``.

    Args:
        max_remembered: how many responses to keep (the oldest are forgotten first).
    """

    name = "responses"

    def __init__(self, *, max_remembered: int = 10_000) -> None:
        self._conversations: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._max_remembered = max_remembered
        self._lock = threading.Lock()

    # -- errors -----------------------------------------------------------------------------

    def error(
        self, status: int, message: str | None = None, type_: str | None = None
    ) -> ErrorAnswer:
        """OpenAI's error shape (the Responses API shares it)."""
        body = default_error_body(status)
        if message is not None:
            body["error"]["message"] = message
        if type_ is not None:
            body["error"]["type"] = type_
        return ErrorAnswer(status, body)

    # -- requests ---------------------------------------------------------------------------

    def prepare(self, body: Any) -> Turn:
        """Check a Responses request and translate it into a chat request."""
        if not isinstance(body, dict):
            raise _invalid("We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid(
                "Missing required parameter: 'model'.", "model", "missing_required_parameter"
            )
        if "input" not in body:
            raise _invalid(
                "Missing required parameter: 'input'.", "input", "missing_required_parameter"
            )
        cap = body.get("max_output_tokens")
        if cap is not None:
            if not isinstance(cap, int) or isinstance(cap, bool):
                raise _invalid(
                    "Invalid type for 'max_output_tokens': expected an integer.",
                    "max_output_tokens",
                    "invalid_type",
                )
            if cap < _MIN_OUTPUT_TOKENS:
                raise _invalid(
                    "Invalid 'max_output_tokens': integer below minimum value. Expected a value "
                    f">= {_MIN_OUTPUT_TOKENS}, but got {cap} instead.",
                    "max_output_tokens",
                    "integer_below_min_value",
                )
        earlier: list[dict[str, Any]] = []
        previous_id = body.get("previous_response_id")
        if previous_id is not None:
            with self._lock:
                found = self._conversations.get(str(previous_id))
            if found is None:
                raise _invalid(
                    f"Previous response with id '{previous_id}' not found.",
                    "previous_response_id",
                    "previous_response_not_found",
                )
            earlier = found
        check_pairing(earlier, body["input"])
        conversation = [*earlier, *input_messages(body["input"])]
        messages = list(conversation)
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            # Instructions apply to this response only; they are not carried to the next.
            messages.insert(0, {"role": "developer", "content": instructions})
        chat: dict[str, Any] = {"model": model, "messages": messages}
        tools = chat_tools(body.get("tools"))
        if tools:
            chat["tools"] = tools
        if cap is not None:
            chat["max_completion_tokens"] = cap
        if body.get("prompt_cache_key"):
            chat["prompt_cache_key"] = body["prompt_cache_key"]
        return Turn(
            chat,
            stream=bool(body.get("stream")),
            context={"request": body, "conversation": conversation},
        )

    # -- answers ----------------------------------------------------------------------------

    def answer(self, turn: Turn, completion: Completion, partition: bytes) -> Answer:
        """The ``response`` object, and its event stream."""
        request: dict[str, Any] = turn.context["request"]
        response_id = f"resp_{uuid.uuid4().hex}"
        turn.context["response_id"] = response_id
        items = self._output_items(completion)
        truncated = completion.finish_reason == "length"
        usage = {
            "input_tokens": completion.prompt_tokens,
            # The sim bills no premium for cache writes, so it reports none.
            "input_tokens_details": {
                "cached_tokens": completion.cached_tokens,
                "cache_write_tokens": 0,
            },
            "output_tokens": completion.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": completion.reasoning_tokens},
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        }
        final = self._response(request, response_id, turn.chat["model"])
        final.update(
            status="incomplete" if truncated else "completed",
            incomplete_details={"reason": "max_output_tokens"} if truncated else None,
            output=items,
            usage=usage,
        )
        if not truncated:
            final["completed_at"] = int(time.time())
        events = list(self._events(final, items)) if turn.stream else []
        return Answer(
            body=final,
            events=events,
            prompt_tokens=completion.prompt_tokens,
            cached_tokens=completion.cached_tokens,
            completion_tokens=completion.completion_tokens,
        )

    def remember(self, turn: Turn, answer: Answer) -> None:
        """Keep the conversation so far under the response's id (unless ``store`` is false,
        as the provider then keeps nothing to continue from)."""
        if turn.context["request"].get("store") is False:
            return
        reply: dict[str, Any] = {"role": "assistant", "content": None}
        calls: list[dict[str, Any]] = []
        for item in answer.body["output"]:
            if item["type"] == "message":
                reply["content"] = "".join(part["text"] for part in item["content"])
            elif item["type"] == "function_call":
                calls.append(
                    {
                        "id": item["call_id"],
                        "type": "function",
                        "function": {"name": item["name"], "arguments": item["arguments"]},
                    }
                )
        if calls:
            reply["tool_calls"] = calls
        if reply["content"] is None and not calls:
            reply["content"] = ""
        conversation = [*turn.context["conversation"], reply]
        with self._lock:
            self._conversations[turn.context["response_id"]] = conversation
            while len(self._conversations) > self._max_remembered:
                self._conversations.popitem(last=False)

    @staticmethod
    def _response(request: dict[str, Any], response_id: str, model: str) -> dict[str, Any]:
        tools = request.get("tools") if isinstance(request.get("tools"), list) else []
        return {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": model,
            "output": [],
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": request.get("previous_response_id"),
            "prompt_cache_key": request.get("prompt_cache_key"),
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None,
            "service_tier": "default",
            "store": request.get("store", True),
            "temperature": request.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": tools,
            "top_logprobs": 0,
            "top_p": request.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": request.get("metadata") or {},
        }

    @staticmethod
    def _output_items(completion: Completion) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if completion.reasoning_tokens:
            items.append({"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": []})
        status = "incomplete" if completion.finish_reason == "length" else "completed"
        if completion.content or not completion.tool_calls:
            items.append(
                {
                    "id": f"msg_{uuid.uuid4().hex}",
                    "type": "message",
                    "status": status,
                    "role": "assistant",
                    "content": [
                        {
                            "type": "output_text",
                            "annotations": [],
                            "logprobs": [],
                            "text": completion.content or "",
                        }
                    ],
                }
            )
        for call in completion.tool_calls:
            function = call["function"]
            items.append(
                {
                    "id": f"fc_{uuid.uuid4().hex}",
                    "type": "function_call",
                    "status": "completed",
                    "arguments": function["arguments"],
                    "call_id": call["id"],
                    "name": function["name"],
                }
            )
        return items

    @staticmethod
    def _events(final: dict[str, Any], items: list[dict[str, Any]]) -> Iterator[Event]:
        """The provider's stream: lifecycle events around each output item's own events."""
        sequence = 0

        def event(kind: str, **data: Any) -> Event:
            nonlocal sequence
            payload = {"type": kind, "sequence_number": sequence, **data}
            sequence += 1
            return kind, payload

        opening = {**final, "status": "in_progress", "output": [], "usage": None}
        opening.pop("completed_at", None)
        opening["incomplete_details"] = None
        yield event("response.created", response=opening)
        yield event("response.in_progress", response=opening)
        for index, item in enumerate(items):
            if item["type"] == "message":
                started = {**item, "status": "in_progress", "content": []}
                yield event("response.output_item.added", output_index=index, item=started)
                part = item["content"][0]
                empty = {**part, "text": ""}
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                yield event("response.content_part.added", **where, part=empty)
                for piece in _split_words(part["text"]) if part["text"] else []:
                    yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
                yield event("response.output_text.done", **where, text=part["text"], logprobs=[])
                yield event("response.content_part.done", **where, part=part)
            elif item["type"] == "function_call":
                started = {**item, "status": "in_progress", "arguments": ""}
                yield event("response.output_item.added", output_index=index, item=started)
                arguments: str = item["arguments"]
                for start in range(0, len(arguments), _ARGUMENT_FRAGMENT_CHARS * 4):
                    yield event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=arguments[start : start + _ARGUMENT_FRAGMENT_CHARS * 4],
                    )
                yield event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=arguments,
                )
            else:
                yield event("response.output_item.added", output_index=index, item=item)
            yield event("response.output_item.done", output_index=index, item=item)
        closing = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield event(closing, response=final)
