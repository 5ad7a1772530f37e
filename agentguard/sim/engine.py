"""The simulated model: checks a chat completion request and generates its answer.

Pure apart from the caches it keeps; the HTTP server only drives it.
"""

from __future__ import annotations

from typing import Any

from agentguard.sim.payloads import Completion, error_body
from agentguard.sim.script import Reply, Script, default_answer, step_index
from agentguard.sim.tokens import PrefixCache, TokenCounter

__all__ = ["ChatEngine", "InvalidRequest", "validate_chat_request"]


class InvalidRequest(Exception):
    """A request OpenAI would refuse with a 400; ``body`` is the OpenAI-shaped error."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = 400
        self.body = error_body(message, "invalid_request_error", param, code)


def validate_chat_request(body: Any) -> dict[str, Any]:
    """Check a chat completion request body the way OpenAI does, for the parts the sim uses.

    Returns:
        The body, typed as a dict.

    Raises:
        InvalidRequest: the body is not a valid chat completion request.
    """
    if not isinstance(body, dict):
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise InvalidRequest(
            "Invalid type for 'messages': expected an array.", "messages", "invalid_type"
        )
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "messages",
            "empty_array",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"Invalid type for 'messages[{index}]': expected an object.",
                f"messages[{index}]",
                "invalid_type",
            )
        if "role" not in message:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{index}].role'.",
                f"messages[{index}].role",
                "missing_required_parameter",
            )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequest(
                f"Invalid type for '{name}': expected an integer.", name, "invalid_type"
            )
        if value < 1:
            raise InvalidRequest(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got "
                f"{value} instead.",
                name,
                "integer_below_min_value",
            )
    if body.get("stream_options") is not None and not body.get("stream"):
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    return body


class ChatEngine:
    """Turns a request and its scripted reply into a :class:`Completion` with exact usage.

    Args:
        counter: counts tokens (and caches the counts per message).
        prefix_cache: simulates prompt caching, for ``cached_tokens``.
    """

    def __init__(
        self, counter: TokenCounter | None = None, prefix_cache: PrefixCache | None = None
    ) -> None:
        self.counter = counter or TokenCounter()
        self.prefix_cache = prefix_cache or PrefixCache()

    def complete(
        self, body: dict[str, Any], reply: Reply, script: Script, partition: bytes = b""
    ) -> Completion:
        """Generate the answer to a (validated) request.

        Args:
            body: the request body.
            reply: the scripted reply for this step.
            script: the script (for its default answer's length).
            partition: separates prompt caches (a digest of the API key, say).
        """
        model: str = body["model"]
        messages: list[Any] = body["messages"]
        counter = self.counter
        prompt = counter.prompt(messages, body.get("tools"), model)
        cache_key = body.get("prompt_cache_key")
        partition = b"\x00".join(
            (partition, model.encode(), str(cache_key).encode() if cache_key else b"")
        )
        cached = self.prefix_cache.lookup_and_store(partition, prompt)

        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        reasoning = reply.reasoning_tokens
        budget: int | None = None
        if max_tokens is not None:
            reasoning = min(reasoning, max_tokens)
            budget = max_tokens - reasoning
        truncated = reasoning < reply.reasoning_tokens

        content = reply.content
        if reply.is_default:
            content, _ = counter.truncate(
                default_answer(
                    messages, script.default_output_tokens, lambda text: counter.count(text, model)
                ),
                script.default_output_tokens,
                model,
            )
        visible = 0
        if content is not None:
            full = counter.count(content, model)
            if budget is not None and full > budget:
                content, full = counter.truncate(content, budget, model)
                truncated = True
            visible += full

        step = step_index(messages)
        tool_calls: list[dict[str, Any]] = []
        for index, call in enumerate(reply.tool_calls or ()):
            if truncated:
                break
            openai_call = call.to_openai(step, index)
            function = openai_call["function"]
            name_tokens = counter.count(function["name"], model)
            argument_tokens = counter.count(function["arguments"], model)
            if budget is not None and visible + name_tokens + argument_tokens > budget:
                room = budget - visible - name_tokens
                if room < 0:
                    truncated = True
                    break
                function["arguments"], argument_tokens = counter.truncate(
                    function["arguments"], room, model
                )
                truncated = True
            visible += name_tokens + argument_tokens
            tool_calls.append(openai_call)

        if truncated:
            finish_reason = "length"
        elif reply.finish_reason is not None:
            finish_reason = reply.finish_reason
        else:
            finish_reason = "tool_calls" if tool_calls else "stop"
        if content is None and not tool_calls:
            content = ""  # every tool call was cut: the model said nothing visible
        return Completion(
            content=content,
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            prompt_tokens=prompt.total,
            completion_tokens=visible + reasoning,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
        )
