"""The Responses API's ``input`` as trimming sees it (:class:`ResponsesHistory`).

The entries are the ``input`` items themselves (a string input is one user message), after
one leading prompt entry for ``instructions``. What must stay together is one response's
output and the outputs of its calls: a run of the model's items (reasoning, assistant
messages, ``function_call``, ``custom_tool_call`` and the other ``*_call`` items) with every
item answering one of its calls (``function_call_output`` ... paired by ``call_id``). So a
reasoning item is never separated from the call or message that follows it, and no call from
its output. Long ``function_call_output``, ``custom_tool_call_output`` and
``local_shell_call_output`` outputs may be elided (their start kept, with a marker).

A request that continues ``previous_response_id`` or a stored ``conversation`` carries context
the provider keeps and the guard cannot see or cut: it is not trimmed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agentguard.tokens import message_digest
from agentguard.trimming.chat import NOTE_ROLE

if TYPE_CHECKING:
    from agentguard.dialects.base import Dialect
    from agentguard.tokens import TokenCounter

__all__ = ["ResponsesHistory", "validate_input_items"]

_PROMPT_ROLES = frozenset({"system", "developer"})
_ELIDABLE_OUTPUTS = frozenset(
    {"function_call_output", "custom_tool_call_output", "local_shell_call_output"}
)
"""Outputs whose ``output`` may be a plain string: an elision keeps them valid."""
_ANSWERED_CALLS = frozenset(
    {
        "function_call",
        "custom_tool_call",
        "computer_call",
        "local_shell_call",
        "shell_call",
        "apply_patch_call",
    }
)
"""Calls the caller runs: the API wants each one's output in the same input."""
_ID_PAIRED = frozenset({"local_shell_call", "local_shell_call_output", "mcp_approval_request"})
"""Items paired by ``id`` as well as (or instead of) ``call_id``."""
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _kind(item: Mapping[str, Any]) -> str | None:
    kind = item.get("type")
    if kind is None and "role" in item:
        return "message"  # an easy input message: {"role": ..., "content": ...}
    return kind if isinstance(kind, str) else None


def _is_output(kind: str | None) -> bool:
    return kind is not None and (kind.endswith("_output") or kind == "mcp_approval_response")


def _pair_keys(item: Mapping[str, Any]) -> list[str]:
    """The ids that tie a call to its output."""
    keys = []
    kind = _kind(item)
    for name in ("call_id", "approval_request_id"):
        value = item.get(name)
        if isinstance(value, str) and value:
            keys.append(value)
    if kind in _ID_PAIRED and isinstance(item.get("id"), str) and item["id"]:
        keys.append(item["id"])
    return keys


def _parts_text(parts: Any) -> str | None:
    """The text of a list of text parts, or ``None`` if any part is not text."""
    if not isinstance(parts, list) or not parts:
        return None
    texts = []
    for part in parts:
        if not (isinstance(part, Mapping) and part.get("type") in _TEXT_PARTS):
            return None
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def validate_input_items(items: Sequence[Mapping[str, Any]]) -> None:
    """Check the pairing rules of a Responses ``input`` the API enforces.

    Every output answers a call made by an earlier item; every call the caller runs
    (``function_call``, ``custom_tool_call`` ...) is answered; every reasoning item is
    followed by the model's item it belongs to.

    Raises:
        ValueError: the first rule broken, naming the item's index.
    """
    made: set[str] = set()
    answered: set[str] = set()
    awaiting: dict[str, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"input[{index}] is a {type(item).__name__}, not an item")
        kind = _kind(item)
        if kind is None:
            raise ValueError(f"input[{index}] has no type")
        keys = _pair_keys(item)
        if _is_output(kind):
            for key in keys:
                if key not in made:
                    raise ValueError(
                        f"input[{index}] is the output of call {key!r}, which no earlier item made"
                    )
                answered.add(key)
        else:
            made.update(keys)
            if kind in _ANSWERED_CALLS:
                awaiting.update({key: index for key in keys})
        if kind == "reasoning":
            following = items[index + 1] if index + 1 < len(items) else None
            if following is None or not _is_reply(following):
                raise ValueError(
                    f"input[{index}] is a reasoning item without the model's item that follows it"
                )
    for key, index in awaiting.items():
        if key not in answered:
            raise ValueError(f"input[{index}] calls {key!r}, whose output does not follow")


def _is_reply(item: Mapping[str, Any]) -> bool:
    kind = _kind(item)
    if kind == "message":
        return item.get("role") == "assistant"
    return kind is not None and not _is_output(kind)


class ResponsesHistory:
    """The :class:`~agentguard.trimming.view.HistoryView` of ``POST /responses``.

    Args:
        dialect: the Responses dialect, whose counting each entry is counted with.
    """

    __slots__ = ("dialect",)

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    # -- the body ----------------------------------------------------------------------------

    def read(self, body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        if body.get("previous_response_id") or body.get("conversation"):
            return None  # the provider adds context the guard cannot cut
        given = body.get("input")
        if isinstance(given, str):
            items: list[dict[str, Any]] = [{"role": "user", "content": given}]
        elif isinstance(given, list) and given and all(isinstance(i, dict) for i in given):
            items = list(given)
        else:
            return None
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            items.insert(0, {"role": "developer", "content": instructions})
        return items

    def write(
        self,
        body: dict[str, Any],
        entries: Sequence[Mapping[str, Any]],
        sources: Sequence[int | None],
    ) -> None:
        instructions = body.get("instructions")
        offset = 1 if isinstance(instructions, str) and instructions else 0
        items: list[dict[str, Any]] = []
        for entry, source in zip(entries, sources, strict=True):
            if offset and source == 0:
                body["instructions"] = entry["content"]
            else:
                items.append(entry if isinstance(entry, dict) else dict(entry))
        if isinstance(body.get("input"), str) and len(items) == 1:
            body["input"] = items[0]["content"]
        else:
            body["input"] = items

    def caches_prefix(self, body: Mapping[str, Any]) -> bool:
        return True  # OpenAI caches every long enough prefix by itself

    # -- counting ----------------------------------------------------------------------------

    def counts(
        self,
        entries: Sequence[Mapping[str, Any]],
        model: str,
        counter: TokenCounter,
        *,
        digests: Sequence[bytes] | None = None,
    ) -> list[int]:
        # Each item as the dialect counts a request holding it alone; calls made together
        # count a little more apart than as one message, which errs high.
        framing = counter.request_overhead(model)
        return [
            self.dialect.count_input({"input": [entry]}, model, counter) - framing
            for entry in entries
        ]

    def overhead(
        self, model: str, counter: TokenCounter, tools: Sequence[Mapping[str, Any]] | None
    ) -> int:
        return self.dialect.count_input({"input": [], "tools": list(tools or ())}, model, counter)

    def digest(self, entry: Mapping[str, Any]) -> bytes:
        return message_digest(entry)

    # -- layout ------------------------------------------------------------------------------

    def validate(self, entries: Sequence[Mapping[str, Any]]) -> None:
        validate_input_items(entries)

    def units(self, entries: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
        """One response's run of the model's items with the outputs of its calls (and
        whatever lies between them); any other item alone."""
        last: dict[str, int] = {}
        for index, entry in enumerate(entries):
            for key in _pair_keys(entry):
                last[key] = index
        units: list[tuple[int, int]] = []
        n = len(entries)
        start = 0
        while start < n:
            end = start + 1
            if _is_reply(entries[start]):
                while end < n and _is_reply(entries[end]):
                    end += 1
            index = start
            while index < end:
                for key in _pair_keys(entries[index]):
                    end = max(end, last[key] + 1)
                index += 1
            units.append((start, end))
            start = end
        return units

    def is_prompt(self, entry: Mapping[str, Any]) -> bool:
        return _kind(entry) == "message" and entry.get("role") in _PROMPT_ROLES

    def is_user(self, entry: Mapping[str, Any]) -> bool:
        return _kind(entry) == "message" and entry.get("role") == "user"

    def is_reply(self, entry: Mapping[str, Any]) -> bool:
        return _is_reply(entry)

    def is_tool_output(self, entry: Mapping[str, Any]) -> bool:
        return _kind(entry) in _ELIDABLE_OUTPUTS and isinstance(entry.get("output"), str | list)

    def tool_names(self, entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        names: dict[str, str] = {}
        for entry in entries:
            kind = _kind(entry)
            if kind is None or _is_output(kind) or kind == "message":
                continue
            name = entry.get("name")
            for key in _pair_keys(entry):
                names[key] = str(name) if isinstance(name, str) else kind.removesuffix("_call")
        return names

    def tool_name(self, entry: Mapping[str, Any], names: Mapping[str, str]) -> str:
        for key in _pair_keys(entry):
            if key in names:
                return names[key]
        return str(entry.get("name") or "unknown")

    # -- text --------------------------------------------------------------------------------

    def text(self, entry: Mapping[str, Any]) -> str | None:
        kind = _kind(entry)
        field = "content" if kind == "message" else "output" if kind in _ELIDABLE_OUTPUTS else None
        if field is None:
            return None
        value = entry.get(field)
        return value if isinstance(value, str) else _parts_text(value)

    def output_text(self, entry: Mapping[str, Any]) -> str:
        output = entry.get("output")
        if isinstance(output, str):
            return output
        if isinstance(output, list):
            return "\n".join(
                str(part.get("text", ""))
                for part in output
                if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            )
        return ""

    def with_text(self, entry: Mapping[str, Any], text: str) -> dict[str, Any]:
        if _kind(entry) != "message":
            return {**entry, "output": text}
        content = entry.get("content")
        if isinstance(content, list) and content and isinstance(content[0], Mapping):
            # Keep the parts' shape: an assistant's output message takes output_text parts.
            kind = content[0].get("type", "input_text")
            part: dict[str, Any] = {"type": kind, "text": text}
            if kind == "output_text":
                part["annotations"] = []
            return {**entry, "content": [part]}
        return {**entry, "content": text}

    def note(self, text: str) -> dict[str, Any]:
        return {"role": NOTE_ROLE, "content": text}

    def as_chat(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self.dialect.messages({"input": [dict(entry) for entry in entries]})
