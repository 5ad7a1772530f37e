"""Anthropic's ``system`` and ``messages`` as trimming sees them (:class:`AnthropicHistory`).

The entries: the top-level ``system`` (a string or blocks) as a leading prompt entry, then
each message, except that a user message holding ``tool_result`` blocks is split so each
result is an entry of its own (``{"role": "user", "content": [result]}``) and the blocks after
them one more. An assistant message is one entry, so its ``thinking`` blocks stay with its
text and ``tool_use`` blocks, and it is never rewritten when it holds anything but text. An
assistant message with ``tool_use`` blocks and the ``tool_result`` entries that follow it are
kept or dropped together; a long ``tool_result`` is elided the way a chat tool output is (its
other fields, ``cache_control`` included, stay). Writing back joins the pieces of each message
again, in order: a message whose pieces are all unchanged is the caller's object.

Prompt-cache breakpoints: every block the guard rewrites (an elision, a cut) is re-applied
byte for byte on the following calls, so a ``cache_control`` on it keeps marking a stable
prefix. A breakpoint on a dropped block moves to the note that stands in for the dropped
messages (the last one, whose lifetime fits where the note sits), so the stable part of the
prompt (system, task, note) stays cached without adding a breakpoint. Digests ignore
``cache_control``, so an agent that moves its breakpoint to the newest message each call still
gets the same cut re-applied.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agentguard.tokens import message_digest
from agentguard.trimming.chat import NOTE_ROLE

if TYPE_CHECKING:
    from agentguard.dialects.base import Dialect
    from agentguard.tokens import TokenCounter

__all__ = ["AnthropicHistory", "validate_anthropic_messages"]

_SYSTEM = -1
"""The origin of the system entry (messages are numbered from 0)."""


def _is_result(block: object) -> bool:
    return isinstance(block, Mapping) and block.get("type") == "tool_result"


def _is_result_entry(entry: Mapping[str, Any]) -> bool:
    content = entry.get("content")
    return (
        entry.get("role") == "user"
        and isinstance(content, list)
        and len(content) == 1
        and _is_result(content[0])
    )


def _tool_uses(entry: Mapping[str, Any]) -> list[str]:
    content = entry.get("content")
    if entry.get("role") != "assistant" or not isinstance(content, list):
        return []
    return [
        str(block.get("id", ""))
        for block in content
        if isinstance(block, Mapping) and block.get("type") == "tool_use"
    ]


def _split(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's entries: each ``tool_result`` block alone, the other blocks in runs."""
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list):
        return [message]
    if not any(_is_result(block) for block in content):
        return [message]
    pieces: list[dict[str, Any]] = []
    run: list[Any] = []
    for block in content:
        if _is_result(block):
            if run:
                pieces.append({"role": "user", "content": run})
                run = []
            pieces.append({"role": "user", "content": [block]})
        else:
            run.append(block)
    if run:
        pieces.append({"role": "user", "content": run})
    return [message] if len(pieces) == 1 else pieces


def _entries(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[int]] | None:
    """The entries of a request and the message each came from (``_SYSTEM`` for system)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    entries: list[dict[str, Any]] = []
    origins: list[int] = []
    system = body.get("system")
    if isinstance(system, str | list) and system:
        entries.append({"role": "system", "content": system})
        origins.append(_SYSTEM)
    for index, message in enumerate(messages):
        pieces = _split(message)
        entries.extend(pieces)
        origins.extend([index] * len(pieces))
    return entries, origins


def _without_cache_control(value: Any) -> Any:
    """``value`` with every ``cache_control`` removed (the same object when it has none)."""
    if isinstance(value, Mapping):
        stripped = {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
        if len(stripped) == len(value) and all(stripped[k] is value[k] for k in stripped):
            return value
        return stripped
    if isinstance(value, list):
        items = [_without_cache_control(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _cache_controls(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        if isinstance(value.get("cache_control"), Mapping):
            yield value["cache_control"]
        for item in value.values():
            yield from _cache_controls(item)
    elif isinstance(value, list):
        for item in value:
            yield from _cache_controls(item)


def _blocks_text(blocks: Any) -> str | None:
    """The text of text-only content (a string or text blocks), else ``None``."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list) or not blocks:
        return None
    texts = []
    for block in blocks:
        if not (isinstance(block, Mapping) and block.get("type") == "text"):
            return None
        texts.append(str(block.get("text", "")))
    return "\n".join(texts)


def _as_body(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A request holding only this entry (what the dialect's own counting reads)."""
    if entry.get("role") == "system":
        return {"system": entry.get("content"), "messages": []}
    return {"messages": [entry]}


def validate_anthropic_messages(entries: Sequence[Mapping[str, Any]]) -> None:
    """Check the rules the Messages API enforces on ``tool_use`` and ``tool_result``, over
    entries (or messages): the ``tool_use`` blocks of an assistant message are each answered
    by a ``tool_result`` right after it, before anything else, and every ``tool_result``
    answers one of them.

    Raises:
        ValueError: the first rule broken, naming the entry's index.
    """
    pending: set[str] = set()
    caller = -1
    for index, entry in enumerate(entries):
        role = entry.get("role") if isinstance(entry, Mapping) else None
        if role not in ("user", "assistant") and not (role == "system" and index == 0):
            raise ValueError(f"entry {index} has role {role!r}, expected 'user' or 'assistant'")
        content = entry.get("content")
        if not content:
            raise ValueError(f"entry {index} ({role}) has no content")
        blocks = content if isinstance(content, list) else []
        results = [block for block in blocks if _is_result(block)]
        if results:
            if role != "user" or blocks[: len(results)] != results:
                raise ValueError(f"entry {index}: tool_result blocks must open a user message")
            for block in results:
                call_id = str(block.get("tool_use_id", ""))
                if call_id not in pending:
                    raise ValueError(
                        f"entry {index} answers tool_use {call_id!r}, which entry {caller} "
                        "did not make or which was answered already"
                    )
                pending.discard(call_id)
            if len(results) < len(blocks) and pending:
                raise ValueError(f"entry {caller}: tool_use {sorted(pending)} not answered")
            continue
        if pending:
            raise ValueError(
                f"entry {caller} calls tools {sorted(pending)} whose results do not follow it"
            )
        uses = _tool_uses(entry)
        pending, caller = set(uses), index
    if pending:
        raise ValueError(
            f"entry {caller} calls tools {sorted(pending)} whose results do not follow it"
        )


class AnthropicHistory:
    """The :class:`~agentguard.trimming.view.HistoryView` of ``POST /v1/messages``.

    Args:
        dialect: the Messages dialect, whose counting (the calibrated Claude estimate, the
            message framing, images by Anthropic's formula) each entry is counted with.
    """

    __slots__ = ("dialect",)

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    # -- the body ----------------------------------------------------------------------------

    def read(self, body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        found = _entries(body)
        return None if found is None else found[0]

    def write(
        self,
        body: dict[str, Any],
        entries: Sequence[Mapping[str, Any]],
        sources: Sequence[int | None],
    ) -> None:
        found = _entries(body)
        if found is None:
            raise ValueError("messages: write() needs the body read() read")
        originals, origins = found
        messages_in: list[dict[str, Any]] = body["messages"]
        kept = {source for source in sources if source is not None}
        dropped_marks = [
            mark
            for index, entry in enumerate(originals)
            if index not in kept
            for mark in _cache_controls(entry)
        ]
        messages: list[dict[str, Any]] = []
        group: list[tuple[Mapping[str, Any], int]] = []

        def flush() -> None:
            if group:
                messages.append(self._joined(group, originals, origins, messages_in))
                group.clear()

        for entry, source in zip(entries, sources, strict=True):
            if source is None:
                flush()
                messages.append(self._note(entry, dropped_marks))
            elif origins[source] == _SYSTEM:
                body["system"] = entry["content"]
            else:
                if group and origins[group[0][1]] != origins[source]:
                    flush()
                group.append((entry, source))
        flush()
        body["messages"] = messages

    @staticmethod
    def _joined(
        group: Sequence[tuple[Mapping[str, Any], int]],
        originals: Sequence[Mapping[str, Any]],
        origins: Sequence[int],
        messages: Sequence[dict[str, Any]],
    ) -> dict[str, Any]:
        """One message from the kept entries of one original message."""
        origin = origins[group[0][1]]
        message = messages[origin]
        pieces = [index for index, o in enumerate(origins) if o == origin]
        if len(pieces) == 1:
            return dict(group[0][0]) if group[0][0] is not message else message
        if [source for _entry, source in group] == pieces and all(
            entry == originals[source] for entry, source in group
        ):
            return message
        content: list[Any] = []
        for entry, _source in group:
            content.extend(entry["content"])
        return {**message, "content": content}

    @staticmethod
    def _note(entry: Mapping[str, Any], dropped_marks: list[Any]) -> dict[str, Any]:
        if not dropped_marks:
            return dict(entry)
        # Breakpoints are ordered longest lifetime first; the last dropped one fits here.
        block = {"type": "text", "text": entry["content"], "cache_control": dropped_marks[-1]}
        return {**entry, "content": [block]}

    def caches_prefix(self, body: Mapping[str, Any]) -> bool:
        # Claude caches only at the breakpoints a request asks for.
        return any(True for _mark in _cache_controls(dict(body)))

    # -- counting ----------------------------------------------------------------------------

    def counts(
        self,
        entries: Sequence[Mapping[str, Any]],
        model: str,
        counter: TokenCounter,
        *,
        digests: Sequence[bytes] | None = None,
    ) -> list[int]:
        # As the dialect counts a request holding the entry alone: its chat view, the
        # message's framing, its images.
        framing = counter.request_overhead(model)
        return [
            self.dialect.count_input(_as_body(entry), model, counter) - framing for entry in entries
        ]

    def overhead(
        self, model: str, counter: TokenCounter, tools: Sequence[Mapping[str, Any]] | None
    ) -> int:
        return self.dialect.count_input(
            {"messages": [], "tools": list(tools or ())}, model, counter
        )

    def digest(self, entry: Mapping[str, Any]) -> bytes:
        return message_digest(_without_cache_control(entry))

    # -- layout ------------------------------------------------------------------------------

    def validate(self, entries: Sequence[Mapping[str, Any]]) -> None:
        validate_anthropic_messages(entries)

    def units(self, entries: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
        """An assistant message with ``tool_use`` blocks and the results that follow it;
        any other entry alone."""
        units: list[tuple[int, int]] = []
        n = len(entries)
        start = 0
        while start < n:
            end = start + 1
            if _tool_uses(entries[start]):
                while end < n and _is_result_entry(entries[end]):
                    end += 1
            units.append((start, end))
            start = end
        return units

    def is_prompt(self, entry: Mapping[str, Any]) -> bool:
        return entry.get("role") == "system"

    def is_user(self, entry: Mapping[str, Any]) -> bool:
        return entry.get("role") == "user" and not _is_result_entry(entry)

    def is_reply(self, entry: Mapping[str, Any]) -> bool:
        return entry.get("role") == "assistant"

    def is_tool_output(self, entry: Mapping[str, Any]) -> bool:
        return _is_result_entry(entry)

    def tool_names(self, entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        names: dict[str, str] = {}
        for entry in entries:
            content = entry.get("content")
            if entry.get("role") != "assistant" or not isinstance(content, list):
                continue
            for block in content:
                if isinstance(block, Mapping) and block.get("type") in (
                    "tool_use",
                    "server_tool_use",
                ):
                    names[str(block.get("id"))] = str(block.get("name") or "unknown")
        return names

    def tool_name(self, entry: Mapping[str, Any], names: Mapping[str, str]) -> str:
        block = entry["content"][0]
        return names.get(str(block.get("tool_use_id")), "unknown")

    # -- text --------------------------------------------------------------------------------

    def text(self, entry: Mapping[str, Any]) -> str | None:
        if _is_result_entry(entry):
            return _blocks_text(entry["content"][0].get("content"))
        return _blocks_text(entry.get("content"))

    def output_text(self, entry: Mapping[str, Any]) -> str:
        content = entry["content"][0].get("content")
        if isinstance(content, str):
            return content
        return "\n".join(
            str(block.get("text", ""))
            for block in content or ()
            if isinstance(block, Mapping) and block.get("type") == "text"
        )

    def with_text(self, entry: Mapping[str, Any], text: str) -> dict[str, Any]:
        if _is_result_entry(entry):
            return {**entry, "content": [{**entry["content"][0], "content": text}]}
        content = entry.get("content")
        if not isinstance(content, list):
            return {**entry, "content": text}
        block: dict[str, Any] = {"type": "text", "text": text}
        marks = list(_cache_controls(content))
        if marks:
            block["cache_control"] = marks[-1]
        return {**entry, "content": [block]}

    def note(self, text: str) -> dict[str, Any]:
        return {"role": NOTE_ROLE, "content": text}

    def as_chat(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [message for entry in entries for message in self.dialect.messages(_as_body(entry))]
