"""The OpenAI chat wire format, as trimming sees it: what a valid request is, and the view
the planner reads a history through (another wire format can bring its own view)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agentguard.tokens import message_digest

if TYPE_CHECKING:
    from agentguard.tokens import TokenCounter

__all__ = ["CHAT_VIEW", "NOTE_ROLE", "ChatView", "validate_messages"]

NOTE_ROLE = "user"
"""The role of the note that stands in for dropped turns (see the module docstring for why)."""
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Check that messages form a request OpenAI's chat completions endpoint accepts.

    Checks roles, that content is present where required, and the tool-call pairing rules:
    every ``tool`` message directly follows (with its siblings) the assistant message whose
    ``tool_calls`` holds its ``tool_call_id``; every tool call of an assistant message is
    answered exactly once before the next non-tool message.

    Raises:
        ValueError: the first rule broken, naming the message's index.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of message dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a request needs at least one message")
    pending: set[str] | None = None  # tool calls of the open assistant message still unanswered
    caller = -1
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{index}] is a {type(message).__name__}, not a message dict")
        role = message.get("role")
        if role not in _ROLES:
            raise ValueError(
                f"messages[{index}] has role {role!r}, expected one of {sorted(_ROLES)}"
            )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise ValueError(f"messages[{index}] is a tool message without a tool_call_id")
            if pending is None:
                raise ValueError(
                    f"messages[{index}] is the result of tool call {call_id!r} but does not follow "
                    "an assistant message with tool_calls"
                )
            if call_id not in pending:
                raise ValueError(
                    f"messages[{index}] answers tool call {call_id!r}, which messages[{caller}] "
                    "did not make or which was answered already"
                )
            pending.discard(call_id)
            _check_content(index, role, message.get("content"), required=True)
            continue
        if pending:
            raise ValueError(
                f"messages[{caller}] calls tools {sorted(pending)} whose results do not follow it "
                f"(messages[{index}] is a {role} message)"
            )
        pending = None
        if role == "assistant":
            tool_calls = message.get("tool_calls")
            if tool_calls is not None:
                pending = _check_tool_calls(index, tool_calls)
                caller = index
            has_other = bool(tool_calls or message.get("function_call") or message.get("refusal"))
            _check_content(index, role, message.get("content"), required=not has_other)
        else:
            _check_content(index, role, message.get("content"), required=True)
    if pending:
        raise ValueError(
            f"messages[{caller}] calls tools {sorted(pending)} whose results do not follow it "
            "(the messages end there)"
        )


def _check_tool_calls(index: int, tool_calls: Any) -> set[str]:
    if not isinstance(tool_calls, list) or not tool_calls:
        raise ValueError(f"messages[{index}].tool_calls must be a non-empty list")
    ids: set[str] = set()
    for number, call in enumerate(tool_calls):
        where = f"messages[{index}].tool_calls[{number}]"
        if not isinstance(call, Mapping):
            raise ValueError(f"{where} is not a dict")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"{where} has no id")
        if call_id in ids:
            raise ValueError(f"{where} repeats the id {call_id!r}")
        ids.add(call_id)
        spec = (
            call.get("function")
            if call.get("type", "function") == "function"
            else call.get("custom")
        )
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise ValueError(f"{where} has no function name")
    return ids


def _check_content(index: int, role: str, content: Any, *, required: bool) -> None:
    if content is None:
        if required:
            raise ValueError(f"messages[{index}] ({role}) has no content")
        return
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise ValueError(
            f"messages[{index}] ({role}) content must be a string or a list of parts, "
            f"got {type(content).__name__}"
        )
    for number, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise ValueError(f"messages[{index}].content[{number}] is not a typed content part")


def content_text(content: Any) -> str:
    """A chat content's text: the string, or its parts' texts one per line."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, Mapping) else str(part)
            for part in content
        )
    return "" if content is None else str(content)


class ChatView:
    """What trimming needs to know about the OpenAI chat wire format, in one place.

    The planner sees a history only through these questions (which messages are prompts, which
    belong together, what text a message carries and how to replace it), so another wire
    format can bring its own view.
    """

    prompt_roles = frozenset({"system", "developer"})

    def read(self, body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        messages = body.get("messages")
        return messages if isinstance(messages, list) else None

    def write(
        self,
        body: dict[str, Any],
        entries: Sequence[Mapping[str, Any]],
        sources: Sequence[int | None],
    ) -> None:
        body["messages"] = list(entries)

    def caches_prefix(self, body: Mapping[str, Any]) -> bool:
        return True  # OpenAI caches every long enough prefix by itself

    def counts(
        self,
        entries: Sequence[Mapping[str, Any]],
        model: str,
        counter: TokenCounter,
        *,
        digests: Sequence[bytes] | None = None,
    ) -> list[int]:
        return counter.message_counts(entries, model, digests=digests)

    def overhead(
        self, model: str, counter: TokenCounter, tools: Sequence[Mapping[str, Any]] | None
    ) -> int:
        overhead = counter.request_overhead(model)
        return overhead + counter.count_tools(tools, model) if tools else overhead

    def digest(self, entry: Mapping[str, Any]) -> bytes:
        return message_digest(entry)

    def as_chat(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [dict(entry) for entry in entries]

    def output_text(self, entry: Mapping[str, Any]) -> str:
        return content_text(entry.get("content"))

    def validate(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Raise ``ValueError`` unless the messages form a valid request (see
        :func:`validate_messages`)."""
        validate_messages(messages)

    def units(self, messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
        """``(start, end)`` of each group that must be kept or dropped whole: an assistant
        message with ``tool_calls`` and the tool results that follow it; any other message alone.
        """
        units: list[tuple[int, int]] = []
        index = 0
        n = len(messages)
        while index < n:
            end = index + 1
            message = messages[index]
            if message.get("role") == "assistant" and message.get("tool_calls"):
                while end < n and messages[end].get("role") == "tool":
                    end += 1
            units.append((index, end))
            index = end
        return units

    def is_prompt(self, message: Mapping[str, Any]) -> bool:
        return message.get("role") in self.prompt_roles

    def is_user(self, message: Mapping[str, Any]) -> bool:
        return message.get("role") == "user"

    def is_reply(self, message: Mapping[str, Any]) -> bool:
        """Whether the message is the model's (a turn ends with one)."""
        return message.get("role") == "assistant"

    def is_tool_output(self, message: Mapping[str, Any]) -> bool:
        return message.get("role") == "tool"

    def tool_names(self, messages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Tool call id -> the name of the tool called."""
        names: dict[str, str] = {}
        for message in messages:
            calls = message.get("tool_calls") if message.get("role") == "assistant" else None
            for call in calls or ():
                if isinstance(call, Mapping):
                    spec = call.get("function") or call.get("custom") or {}
                    name = spec.get("name") if isinstance(spec, Mapping) else None
                    names[str(call.get("id"))] = str(name or "unknown")
        return names

    def tool_name(self, message: Mapping[str, Any], names: Mapping[str, str]) -> str:
        return names.get(str(message.get("tool_call_id"))) or str(message.get("name") or "unknown")

    def text(self, message: Mapping[str, Any]) -> str | None:
        """The message's text when it is text only (a string or text parts), else ``None``."""
        content = message.get("content")
        if isinstance(content, str):
            return content
        if (
            isinstance(content, list)
            and content
            and all(isinstance(part, Mapping) and part.get("type") == "text" for part in content)
        ):
            return "\n".join(str(part.get("text", "")) for part in content)
        return None

    def with_text(self, message: Mapping[str, Any], text: str) -> dict[str, Any]:
        """The message with its content replaced by ``text`` (every other field kept)."""
        return {**message, "content": text}

    def note(self, text: str) -> dict[str, Any]:
        return {"role": NOTE_ROLE, "content": text}


CHAT_VIEW = ChatView()
