"""Fitting an agent's growing context into a token budget without breaking the request.

The history is read as a *head* (the leading system/developer prompts and the first user
message, the task), then *turns*, each ending with an assistant message: a user message and the
assistant reply that follows it are one turn, and an assistant message with ``tool_calls`` is
never separated from its tool results. The last ``keep_last_turns`` turns are the *tail*.

The prompts, the task and the last message are always kept; the last user message and the tail
are kept whole when they can be. To make room, trimming degrades step by step, each step only
when the ones before it, taken as far as they go, cannot make the request fit:

1. elides old tool outputs longer than ``tool_output_max_tokens``, oldest first, only as far as
   needed: the output's first lines stay, followed by
   ``[agentguard: 1234 tokens of output from tool read_file elided]``;
2. drops the oldest whole turns and puts one note in their place;
3. elides the long tool outputs of the kept turns as well, oldest first, the newest turn's last
   (never the last message itself), because agent tails routinely hold several
   multi-thousand-token file reads and failing the call helps nobody;
4. keeps fewer turns, down to the group that holds the last message (an assistant message
   with ``tool_calls`` and its results, parallel calls included, stay together);
5. cuts the middle out of the largest message left, then the next largest, only as far as
   needed: its start and end stay around
   ``[agentguard: 1234 tokens cut from the middle of this message to fit the context window]``.
   The last message is the step's input, so it is cut only when cutting every other message
   cannot make room (and then first, so the system prompt and the task stay whole if they can).

:class:`~agentguard.ContextTooLarge` is raised only when even that cannot fit: the prompts, the
task and the last message, each cut down to its marker, with everything else dropped (the last
user message and the note go last). Its message gives the sizes.

The note is a **user** message. Every OpenAI-compatible server accepts a user message at a turn
boundary, after the system prompt and after tool results, whereas a ``system`` message in the
middle of a conversation is rejected by several compatible servers' chat templates, and on
reasoning models carries developer authority a bookkeeping note should not have. The note sits
where the dropped turns were, so it never lands between a tool call and its results.

:func:`trim_messages` is the pure, one-shot version. :class:`Trimmer` keeps a session's context
*cache-stable*: when a request exceeds the budget it trims down to ``low_watermark`` of it, then
re-applies the very same cut (same elisions, same dropped span, same note, byte for byte) to the
following, longer requests while they fit, so consecutive requests share their prefix and the
provider's prompt cache stays warm. The cut lives in a small :class:`TrimState`, which is stored
with the session.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from agentguard.config import TrimmingConfig
from agentguard.errors import ContextTooLarge
from agentguard.tokens import TokenCounter, _as_mapping, default_counter, message_digest

__all__ = [
    "NOTE_ROLE",
    "ChatView",
    "Summarizer",
    "TrimResult",
    "TrimState",
    "Trimmer",
    "trim_messages",
    "validate_messages",
]

_log = structlog.get_logger("agentguard")

NOTE_ROLE = "user"
"""The role of the note that stands in for dropped turns (see the module docstring for why)."""
ELIDED_HEAD_MAX_TOKENS = 200
"""At most this much of an elided tool output is kept (and at most a quarter of
``tool_output_max_tokens``), so the model still sees what the output was."""

PROMPT_CACHE_MIN_TOKENS = 1024
"""Prompts shorter than this are not cached (OpenAI)."""
PROMPT_CACHE_STEP = 128
"""Cached prefixes are whole multiples of this many tokens (OpenAI)."""

CACHE_BREAK_EVEN_MARGIN = 0.97
"""A cache-aware cut aims this far below the break-even size: a provider counts a request's
framing a little differently, by up to about 2% on tool-heavy histories."""

Summarizer = Callable[[list[dict[str, Any]]], str]
"""Turns the dropped messages into a short text that replaces them."""

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


# -- validity -----------------------------------------------------------------------------------


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


# -- state and results ----------------------------------------------------------------------------


class TrimState(BaseModel):
    """The cut a :class:`Trimmer` made for a session, so the next call can repeat it.

    Small and serialisable: it holds positions, counts and digests, never message text, except
    the one note or summary that replaced the dropped turns. Indices refer to the session's full
    (untrimmed) history.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    covered: int = 0
    """The cut applies to the first ``covered`` messages of the history."""
    covered_digest: str = ""
    """Digest of those messages: a history that changed there gets a fresh cut."""
    elided: list[tuple[int, int]] = Field(default_factory=list)
    """``(index, tokens cut)`` of each elided tool output."""
    head_tokens: int = 0
    """How much of each elided output was kept."""
    truncated: list[tuple[int, int, int]] = Field(default_factory=list)
    """``(index, tokens kept, tokens cut)`` of each message cut in the middle."""
    drop_start: int = 0
    drop_end: int = 0
    """The dropped span ``[drop_start, drop_end)``; empty when equal."""
    kept_in_span: list[int] = Field(default_factory=list)
    """Messages inside the span that were kept (the last user message)."""
    note: str | None = None
    """The exact text of the message that replaced the span (a note or a summary)."""
    summary_digest: str | None = None
    """Digest of the span ``note`` summarises, when it is a summary."""
    output_length: int = 0
    output_digest: str = ""
    """Length and digest of the request the last call produced (for ``prefix_reused``)."""
    trims: int = 0
    """How many times a new cut was made in this session."""


@dataclass(frozen=True, slots=True)
class TrimResult:
    """What :meth:`Trimmer.fit` did.

    Attributes:
        messages: the request's messages, trimmed (or the originals when they fit).
        tokens_before: tokens of the request as given (tools included when passed).
        tokens_after: tokens of the trimmed request.
        elided_tool_outputs: how many tool outputs are elided in ``messages``.
        dropped_messages: how many messages the dropped span removed.
        truncated_messages: how many messages had their middle cut out (the last resort).
        prefix_reused: the previous call's trimmed request is a prefix of this one, byte for
            byte (a provider prompt cache can serve it).
        retrimmed: a new cut was made in this call (the previous one no longer fit).
        state: pass it to the next call of the same session.
    """

    messages: list[dict[str, Any]]
    tokens_before: int
    tokens_after: int
    elided_tool_outputs: int
    dropped_messages: int
    prefix_reused: bool
    retrimmed: bool
    state: TrimState
    truncated_messages: int = 0

    @property
    def trimmed(self) -> bool:
        """Whether ``messages`` differ from the request as given."""
        return bool(self.elided_tool_outputs or self.dropped_messages or self.truncated_messages)


# -- the engine ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Cut:
    elided: dict[int, int] = field(default_factory=dict)  # index -> tokens cut
    truncated: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (kept, cut)
    drop_start: int = 0
    drop_end: int = 0
    kept_in_span: tuple[int, ...] = ()
    noted: bool = True  # a note stands where the dropped messages were

    def drops(self, index: int) -> bool:
        return self.drop_start <= index < self.drop_end and index not in self.kept_in_span

    @property
    def dropped(self) -> int:
        return max(self.drop_end - self.drop_start - len(self.kept_in_span), 0)

    @property
    def empty(self) -> bool:
        return not self.elided and not self.truncated and self.drop_end <= self.drop_start

    @property
    def covered(self) -> int:
        return max(
            [
                self.drop_end,
                *(index + 1 for index in self.elided),
                *(index + 1 for index in self.truncated),
            ]
        )


def _combined_digest(digests: Sequence[bytes]) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for digest in digests:
        hasher.update(digest)
    return hasher.hexdigest()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, Mapping) else str(part)
            for part in content
        )
    return "" if content is None else str(content)


def _drop_note(count: int) -> str:
    noun = "message" if count == 1 else "messages"
    return (
        f"[agentguard: {count} earlier {noun} of this conversation were dropped to fit the "
        "context window]"
    )


def _summary_note(count: int, summary: str) -> str:
    noun = "message" if count == 1 else "messages"
    return (
        f"[agentguard: summary of {count} earlier {noun}, dropped to fit the context window]\n"
        f"{summary}"
    )


def _cached_tokens(prefix_tokens: int) -> int:
    """How much of a prefix a provider's prompt cache serves (OpenAI's rule: in steps of
    :data:`PROMPT_CACHE_STEP`, from :data:`PROMPT_CACHE_MIN_TOKENS`)."""
    cached = prefix_tokens // PROMPT_CACHE_STEP * PROMPT_CACHE_STEP
    return cached if cached >= PROMPT_CACHE_MIN_TOKENS else 0


def _cut_marker(tokens_cut: int) -> str:
    return (
        f"[agentguard: {tokens_cut} tokens cut from the middle of this message to fit the "
        "context window]"
    )


class ChatView:
    """What trimming needs to know about the OpenAI chat wire format, in one place.

    The planner sees a history only through these questions (which messages are prompts, which
    belong together, what text a message carries and how to replace it), so another wire
    format can bring its own view.
    """

    prompt_roles = frozenset({"system", "developer"})

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


class _History:
    """One request's messages with what trimming needs to know about them.

    The layout: the *head* (leading prompts and the first user message), then *turns*, each
    ending with a reply; the last ``keep_last_turns`` turns are the *tail*; the *last unit* is
    the group holding the last message (with, for a tool result, its call and sibling results).
    """

    def __init__(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str,
        counter: TokenCounter,
        keep_last_turns: int,
        tool_output_max_tokens: int,
        tools: Sequence[Mapping[str, Any]] | None,
        view: ChatView = CHAT_VIEW,
    ) -> None:
        self.messages: list[dict[str, Any]] = [
            message if isinstance(message, dict) else dict(_as_mapping(message))
            for message in messages
        ]
        self.view = view
        self.model = model
        self.counter = counter
        self.tool_output_max_tokens = tool_output_max_tokens
        self.head_tokens = min(ELIDED_HEAD_MAX_TOKENS, tool_output_max_tokens // 4)
        self._heads: dict[tuple[int, int], str] = {}
        self._elisions: dict[int, tuple[int, int]] = {}
        self.digests = [message_digest(message) for message in self.messages]
        self.counts = counter.message_counts(self.messages, model, digests=self.digests)
        self.overhead = counter.request_overhead(model) + counter.count_tools(tools, model)
        self.total = self.overhead + sum(self.counts)
        self.tool_names = view.tool_names(self.messages)
        self._layout(max(keep_last_turns, 1))

    def _layout(self, keep_last_turns: int) -> None:
        # The newest turn is always kept first and given up last: it is what the model answers.
        messages = self.messages
        view = self.view
        n = len(messages)
        units = view.units(messages)
        prompts = 0
        while prompts < n and view.is_prompt(messages[prompts]):
            prompts += 1
        first_user = next((i for i in range(prompts, n) if view.is_user(messages[i])), None)
        head_end = prompts
        if first_user is not None:
            head_end = next(end for start, end in units if start <= first_user < end)
        self.head_end = head_end

        # A turn ends with a reply unit; trailing messages form the open, current turn.
        turns: list[tuple[int, int]] = []
        start = head_end
        for unit_start, unit_end in units:
            if unit_start < head_end:
                continue
            if view.is_reply(messages[unit_start]):
                turns.append((start, unit_end))
                start = unit_end
        if start < n:
            turns.append((start, n))
        self.turns = turns
        self.last_unit_start = units[-1][0] if units else n
        tail_start = turns[-keep_last_turns][0] if len(turns) >= keep_last_turns else head_end
        self.tail_start = tail_start
        newest_start = turns[-1][0] if turns else n
        # Drop points: ends of old turns (the first degradation), then of the tail's turns, then
        # of the units of the newest turn before the last one (keeping fewer turns).
        self.old_ends = [end for _start, end in turns if end <= tail_start]
        self.tail_ends = [end for start, end in turns[:-1] if start >= tail_start] + [
            end for start, end in units if newest_start <= start and end <= self.last_unit_start
        ]
        last_user = next((i for i in range(n - 1, -1, -1) if view.is_user(messages[i])), None)
        self.pinned_user = (
            last_user
            if last_user is not None and head_end <= last_user < self.last_unit_start
            else None
        )

    # -- pieces of a trimmed request ----------------------------------------------------------

    def tool_name(self, index: int) -> str:
        return self.view.tool_name(self.messages[index], self.tool_names)

    def elision_head(self, index: int, head_tokens: int) -> str:
        """The start of a tool output an elision keeps (the same text every time)."""
        key = (index, head_tokens)
        head = self._heads.get(key)
        if head is None:
            text = _content_text(self.messages[index].get("content"))
            head = self.counter.truncate_text(text, head_tokens, self.model)
            # End on a line break when one is near the end, so the kept head reads cleanly.
            cut = head.rfind("\n")
            if cut > len(head) // 2:
                head = head[:cut]
            self._heads[key] = head
        return head

    def elided_message(self, index: int, tokens_cut: int, head: str) -> dict[str, Any]:
        marker = (
            f"[agentguard: {tokens_cut} tokens of output from tool {self.tool_name(index)} elided]"
        )
        return self.view.with_text(self.messages[index], f"{head}\n{marker}" if head else marker)

    def elision(self, index: int) -> tuple[int, int]:
        """Tokens cut and the elided message's token count, for a fresh elision."""
        cached = self._elisions.get(index)
        if cached is None:
            head = self.elision_head(index, self.head_tokens)
            head_count = self.count(self.view.with_text(self.messages[index], head))
            tokens_cut = max(self.counts[index] - head_count, 0)
            cached = (tokens_cut, self.count(self.elided_message(index, tokens_cut, head)))
            self._elisions[index] = cached
        return cached

    def truncated_message(self, index: int, kept: int, tokens_cut: int) -> dict[str, Any]:
        """The message with its middle cut: ``kept`` tokens of its text stay, half at each end."""
        text = self.view.text(self.messages[index]) or ""
        head = self.counter.truncate_text(text, kept - kept // 2, self.model)
        tail = self.counter.truncate_text_end(text, kept // 2, self.model)
        parts = [part for part in (head, _cut_marker(tokens_cut), tail) if part]
        return self.view.with_text(self.messages[index], "\n".join(parts))

    def truncated_size(self, index: int, kept: int) -> tuple[int, int]:
        """Tokens cut and the new count when ``kept`` tokens of the message's text stay."""
        text = self.view.text(self.messages[index]) or ""
        head = self.counter.truncate_text(text, kept - kept // 2, self.model)
        tail = self.counter.truncate_text_end(text, kept // 2, self.model)
        tokens_cut = max(
            self.counter.count_text(text, self.model)
            - self.counter.count_text(head, self.model)
            - self.counter.count_text(tail, self.model),
            0,
        )
        return tokens_cut, self.count(self.truncated_message(index, kept, tokens_cut))

    def smallest_truncation(self, index: int) -> int | None:
        """The count of the message cut down to its marker, or ``None`` if it has no text."""
        if self.view.text(self.messages[index]) is None:
            return None
        return self.truncated_size(index, 0)[1]

    def truncation(self, index: int, allowed: int) -> tuple[int, int, int]:
        """``(tokens kept, tokens cut, new count)`` of the least middle cut that brings the
        message to ``allowed`` tokens, or down to its marker alone when that is not possible.
        """
        text = self.view.text(self.messages[index]) or ""
        kept = max(self.counter.count_text(text, self.model) - (self.counts[index] - allowed), 0)
        while True:
            tokens_cut, size = self.truncated_size(index, kept)
            if size <= allowed or kept == 0:
                return kept, tokens_cut, size
            # Token counts are close to linear in the text kept: step down by the excess.
            kept = max(kept - max(size - allowed, 1), 0)

    def count(self, message: Mapping[str, Any]) -> int:
        return self.counter.message_counts([message], self.model)[0]

    def cache_break_even(self, cached_input_ratio: float) -> int:
        """The largest trimmed request that costs no more than the untrimmed one, with caching.

        The untrimmed request would find its previous version (everything before the last
        reply) in the provider's cache; a freshly cut one finds only the messages before the
        cut, the head. With ``r`` the cached price ratio, ``P`` and ``P_cached`` the untrimmed
        request and its cached part, and ``K`` the head's cached part, a cut request of ``T``
        tokens costs no more when ``T <= K * (1 - r) + r * P_cached + (P - P_cached)``.
        """
        last_reply = next(
            (
                index
                for index in range(len(self.messages) - 1, -1, -1)
                if self.view.is_reply(self.messages[index])
            ),
            None,
        )
        previous = self.overhead + sum(self.counts[:last_reply]) if last_reply is not None else 0
        head = self.overhead + sum(self.counts[: self.head_end])
        untrimmed_cached = _cached_tokens(previous)
        head_cached = _cached_tokens(min(head, previous))
        return math.floor(
            CACHE_BREAK_EVEN_MARGIN
            * (
                head_cached * (1 - cached_input_ratio)
                + cached_input_ratio * untrimmed_cached
                + (self.total - untrimmed_cached)
            )
        )

    def note_message(self, text: str) -> dict[str, Any]:
        return self.view.note(text)

    # -- planning -----------------------------------------------------------------------------

    def plan(
        self,
        *,
        target: int,
        limit: int,
        elide: bool,
        note_tokens: Callable[[int], int],
        session_id: str | None,
        elide_kept_for_target: bool = False,
    ) -> _Cut:
        """The least cut that brings the request to ``target`` (or as close as it can).

        Each degradation is used only when the ones before it, taken as far as they go, cannot
        bring the request within ``limit``; once used, it goes as far as ``target`` needs.
        With ``elide_kept_for_target``, the kept turns' long outputs are also elided when
        dropping old turns cannot reach ``target`` (a target set by cost, not by room).

        Raises:
            ContextTooLarge: even the most trimming leaves more than ``limit`` tokens.
        """
        if self.total <= target:
            return _Cut()
        old, kept = self._elision_candidates() if elide else ({}, {})
        cut, size = self._drop_and_elide(self.old_ends, 0, old, target, note_tokens)
        if size > target and elide_kept_for_target and kept:
            cut, size = self._drop_and_elide(
                self.old_ends, len(self.old_ends), {**old, **kept}, target, note_tokens
            )
        if size > limit:
            cut, size = self._drop_and_elide(
                self.old_ends + self.tail_ends,
                len(self.old_ends),
                {**old, **kept},
                target,
                note_tokens,
            )
        if size > limit:
            cut = self._truncate(cut, target, limit, note_tokens, session_id)
        return cut

    def _elision_candidates(
        self,
    ) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
        """Tool outputs worth eliding, ``index -> (tokens cut, tokens saved)``, oldest first:
        those before the tail, and those inside it (the newest last; never the last message).
        """
        old: dict[int, tuple[int, int]] = {}
        kept: dict[int, tuple[int, int]] = {}
        for index in range(len(self.messages) - 1):
            if (
                self.view.is_tool_output(self.messages[index])
                and self.counts[index] > self.tool_output_max_tokens
            ):
                tokens_cut, elided_count = self.elision(index)
                if elided_count < self.counts[index]:
                    into = old if index < self.tail_start else kept
                    into[index] = (tokens_cut, self.counts[index] - elided_count)
        return old, kept

    def _drop_and_elide(
        self,
        ends: Sequence[int],
        fewest: int,
        candidates: Mapping[int, tuple[int, int]],
        target: int,
        note_tokens: Callable[[int], int],
    ) -> tuple[_Cut, int]:
        """Drop the fewest leading groups (at least ``fewest``) that, with every candidate
        elided, reach ``target``, or the number that comes closest; then elide only as many
        candidates as still needed, in their order. Running sums keep this linear.
        """
        pinned = self.pinned_user
        all_savings = sum(saved for _cut, saved in candidates.values())
        dropped_tokens = dropped_messages = dropped_savings = 0
        position = self.head_end
        best_size, best_number = self.total + 1, fewest
        chosen_end = self.head_end
        for number in range(len(ends) + 1):
            if number:
                for index in range(position, ends[number - 1]):
                    if index == pinned:
                        continue
                    dropped_tokens += self.counts[index]
                    dropped_messages += 1
                    if index in candidates:
                        dropped_savings += candidates[index][1]
                position = ends[number - 1]
            if number < fewest:
                continue
            note = note_tokens(dropped_messages) if dropped_messages else 0
            size = self.total - dropped_tokens + note - (all_savings - dropped_savings)
            if size < best_size:
                best_size, best_number = size, number
            if size <= target:
                break
        if best_number:
            chosen_end = ends[best_number - 1]
        cut = _Cut(drop_start=self.head_end, drop_end=chosen_end)
        if pinned is not None and self.head_end <= pinned < chosen_end:
            cut.kept_in_span = (pinned,)
        if not cut.dropped:
            cut = _Cut()
        size = self._size(cut, note_tokens)
        for index, (tokens_cut, saved) in candidates.items():
            if size <= target:
                break
            if not cut.drops(index):
                cut.elided[index] = tokens_cut
                size -= saved
        return cut, size

    def _size(self, cut: _Cut, note_tokens: Callable[[int], int]) -> int:
        """The planned request's tokens for a cut (elisions and cuts are counted as kept)."""
        size = self.overhead
        for index, count in enumerate(self.counts):
            if cut.drops(index):
                continue
            if index in cut.elided:
                count = self.elision(index)[1]
            size += count
        if cut.dropped and cut.noted:
            size += note_tokens(cut.dropped)
        return size

    def _truncate(
        self,
        cut: _Cut,
        target: int,
        limit: int,
        note_tokens: Callable[[int], int],
        session_id: str | None,
    ) -> _Cut:
        """The last resort: cut the middle out of the largest kept messages.

        The last message is cut only when nothing else can make room. When even every kept
        message cut down to its marker does not fit, the last user message (when it is not the
        last message) and then the note are given up before :class:`ContextTooLarge` is raised.
        """
        kept = [index for index in range(len(self.messages)) if not cut.drops(index)]
        current = {
            index: self.elision(index)[1] if index in cut.elided else self.counts[index]
            for index in kept
        }
        smallest: dict[int, int] = {}
        for index in kept:
            fewest = self.smallest_truncation(index)
            if fewest is not None and fewest < current[index]:
                smallest[index] = fewest

        def floor() -> int:
            return self._size(cut, note_tokens) - sum(
                current[index] - smallest[index] for index in smallest if not cut.drops(index)
            )

        if floor() > limit and cut.kept_in_span:
            cut.kept_in_span = ()
        if floor() > limit and cut.dropped:
            cut.noted = False
        if floor() > limit:
            raise self._too_large(floor(), limit, session_id)

        size = self._size(cut, note_tokens)
        last = len(self.messages) - 1
        others = sorted(
            (index for index in smallest if index != last and not cut.drops(index)),
            key=lambda index: (-current[index], index),
        )
        without_last = size - sum(current[index] - smallest[index] for index in others)
        order = others if without_last <= limit or last not in smallest else [last, *others]
        for index in order:
            if size <= target:
                break
            allowed = max(current[index] - (size - target), smallest[index])
            tokens_kept, tokens_cut, count = self.truncation(index, allowed)
            cut.truncated[index] = (tokens_kept, tokens_cut)
            cut.elided.pop(index, None)
            size += count - current[index]
        return cut

    def _too_large(self, smallest: int, limit: int, session_id: str | None) -> ContextTooLarge:
        where = f" of session {session_id!r}" if session_id else ""
        head = sum(self.counts[: self.head_end])
        kept = (
            f"the system prompt and the task take {head} tokens and the last message "
            f"{self.counts[-1]}"
            if self.last_unit_start >= self.head_end
            else f"the system prompt and the task (the last message) take {head} tokens"
        )
        return ContextTooLarge(
            f"the messages{where} take {self.total} tokens and cannot be trimmed below "
            f"{smallest}, more than the {limit} allowed: {kept}; with every other message "
            "dropped and these cut down to a marker each, they still do not fit",
            tokens=smallest,
            max_tokens=limit,
            session_id=session_id,
        )

    # -- assembly -----------------------------------------------------------------------------

    def assemble(
        self, cut: _Cut, note: str | None, head_tokens: int
    ) -> tuple[list[dict[str, Any]], list[bytes], int]:
        """The trimmed messages, their digests and their tokens (request overhead included)."""
        out: list[dict[str, Any]] = []
        digests: list[bytes] = []
        tokens = self.overhead

        def add(message: dict[str, Any]) -> None:
            nonlocal tokens
            out.append(message)
            digests.append(message_digest(message))
            tokens += self.count(message)

        for index, message in enumerate(self.messages):
            if index == cut.drop_start and cut.drop_end > cut.drop_start and note is not None:
                add(self.note_message(note))
            if cut.drops(index):
                continue
            if index in cut.truncated:
                add(self.truncated_message(index, *cut.truncated[index]))
            elif index in cut.elided:
                head = self.elision_head(index, head_tokens)
                add(self.elided_message(index, cut.elided[index], head))
            else:
                out.append(message)
                digests.append(self.digests[index])
                tokens += self.counts[index]
        return out, digests, tokens


def _drop_note_tokens(history: _History) -> Callable[[int], int]:
    return lambda dropped: history.count(history.note_message(_drop_note(dropped)))


def trim_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    max_tokens: int,
    model: str,
    keep_last_turns: int = 6,
    tool_output_max_tokens: int = 2000,
    counter: TokenCounter | None = None,
    strategy: Literal["elide", "window"] = "elide",
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Trim a chat history to ``max_tokens``, keeping it a valid OpenAI request.

    Always keeps the system/developer prompts at the start, the first user message (the task)
    and the last message, and prefers to keep the last user message and the last
    ``keep_last_turns`` turns whole. It degrades in this order, each step only when the ones
    before it cannot make the request fit:

    1. elides old tool outputs longer than ``tool_output_max_tokens`` (oldest first, only as
       many as needed);
    2. drops the oldest whole turns and puts one user-role note where they were;
    3. elides long tool outputs inside the kept turns (oldest first, the newest turn's last;
       never the last message);
    4. keeps fewer turns, down to the group that holds the last message;
    5. cuts the middle out of the largest remaining message (then the next largest), leaving
       its start and end around a marker that says how many tokens were cut. The last message
       is the step's input: it is cut only when cutting every other message cannot make room,
       and then before the others.

    A tool call is never separated from its results. The input is not modified; messages kept
    unchanged are the same dict objects.

    Args:
        messages: OpenAI chat message dicts.
        max_tokens: the tokens the request may take.
        model: the model, for counting.
        keep_last_turns: recent turns kept whole (the last one always is).
        tool_output_max_tokens: tool outputs longer than this may be elided.
        counter: the token counter (default: the process-wide one).
        strategy: ``"elide"`` (every step above) or ``"window"`` (no eliding: drop turns,
            then, as the last resort, cut the middle of a message).
        tools: the request's tool definitions, whose tokens count against ``max_tokens``.

    Returns:
        The trimmed messages; a new list (the original messages when they fit).

    Raises:
        ContextTooLarge: even with every other message dropped and every kept one cut down to
            its marker, the request exceeds ``max_tokens``; names the sizes.
    """
    if not messages:
        return []
    history = _History(
        messages,
        model=model,
        counter=counter or default_counter(),
        keep_last_turns=keep_last_turns,
        tool_output_max_tokens=tool_output_max_tokens,
        tools=tools,
    )
    cut = history.plan(
        target=max_tokens,
        limit=max_tokens,
        elide=strategy != "window",
        note_tokens=_drop_note_tokens(history),
        session_id=None,
    )
    if cut.empty:
        return list(history.messages)
    note = _drop_note(cut.dropped) if cut.dropped and cut.noted else None
    out, _digests, _tokens = history.assemble(cut, note, history.head_tokens)
    return out


class Trimmer:
    """The trimming stage: fits each request of a session, keeping the prefix cache-stable.

    When a request exceeds ``max_tokens``, it is trimmed down to ``low_watermark`` of it; the
    following requests of the session get the same cut (byte for byte) as long as they fit,
    so they extend the previous request instead of rewriting it. Pass each call's
    ``result.state`` to the next call.

    Strategies: ``window`` drops turns and never elides; ``elide`` degrades in the order
    :func:`trim_messages` describes; ``summarize`` does what ``elide`` does and, given a
    ``summarizer``, replaces the dropped turns with its summary of them (computed once per
    dropped span and kept in the state). Under any strategy, cutting the middle of a message is
    the last resort before :class:`~agentguard.ContextTooLarge`.

    Given the model's cached-input price ratio (``cached_input_ratio``, which the pipeline
    takes from the price data when ``trimming.cache_aware`` is on), a new cut also goes deep
    enough that its call costs no more than the untrimmed request would with the provider's
    prompt cache, dropping old turns and eliding long outputs (of the kept turns too) for it,
    but never giving up the kept turns or cutting a message for cost alone.

    Args:
        config: the trimming policy.
        counter: the token counter (default: the process-wide one).
        summarizer: for ``strategy="summarize"``: turns the dropped messages into a text.
        summary_max_tokens: a longer summary is cut to this.
        view: how to read the wire format's messages (OpenAI chat messages by default).
    """

    def __init__(
        self,
        config: TrimmingConfig | None = None,
        counter: TokenCounter | None = None,
        *,
        summarizer: Summarizer | None = None,
        summary_max_tokens: int = 1024,
        view: ChatView = CHAT_VIEW,
    ) -> None:
        self.config = config or TrimmingConfig()
        self.counter = counter or default_counter()
        self.summarizer = summarizer
        self.summary_max_tokens = summary_max_tokens
        self.view = view

    def fit(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str,
        max_tokens: int | None = None,
        state: TrimState | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        session_id: str | None = None,
        cached_input_ratio: float | None = None,
    ) -> TrimResult:
        """Fit one request of a session into ``max_tokens``.

        Args:
            messages: the session's full history (OpenAI message dicts); not modified.
            model: the model the request goes to.
            max_tokens: the tokens the request may take; ``None`` uses
                ``config.max_context_tokens``, and when that is ``None`` too nothing is trimmed.
            state: the previous call's ``result.state`` (``None`` for a session's first call).
            tools: the request's tool definitions, whose tokens count against ``max_tokens``.
            session_id: named in errors.
            cached_input_ratio: the model's price of a cached input token over an uncached
                one. When given, a new cut goes deep enough (where dropping and eliding old
                turns can) that this call costs no more than the untrimmed request would with
                its prefix in the provider's prompt cache: a new cut is sent uncached after the
                system prompt and the task, so a cheap cache makes it worth cutting further.

        Returns:
            The trimmed request and what was done; ``result.state`` goes to the next call.

        Raises:
            ContextTooLarge: even the prompts, the task and the last message, each cut down to
                its marker, exceed ``max_tokens`` (see :func:`trim_messages`).
        """
        config = self.config
        history = _History(
            messages,
            model=model,
            counter=self.counter,
            keep_last_turns=config.keep_last_turns,
            tool_output_max_tokens=config.tool_output_max_tokens,
            tools=tools,
            view=self.view,
        )
        limit = max_tokens if max_tokens is not None else config.max_context_tokens
        previous = state or TrimState()
        if not config.enabled or limit is None or not history.messages:
            return self._result(history, _Cut(), None, previous, retrimmed=False)

        reapplied = self._reapply(history, previous)
        if reapplied is not None:
            cut, note = reapplied
            if cut.empty and history.total <= limit:
                return self._result(history, cut, None, previous, retrimmed=False)
            if not cut.empty:
                result = self._result(
                    history, cut, note, previous, retrimmed=False, head_tokens=previous.head_tokens
                )
                if result.tokens_after <= limit and self._is_valid(result.messages):
                    return result
        elif history.total <= limit:
            return self._result(history, _Cut(), None, previous, retrimmed=False)

        target = max(math.floor(config.low_watermark * limit), 1)
        break_even = None
        if cached_input_ratio is not None:
            break_even = max(history.cache_break_even(cached_input_ratio), 1)
            target = min(target, break_even)
        summarize = config.strategy == "summarize" and self.summarizer is not None
        reserve = min(self.summary_max_tokens, max(32, target // 8))
        note_tokens = _drop_note_tokens(history)
        if summarize:
            # The summary does not exist yet: plan for the longest one allowed.
            summary_tokens = history.count(history.note_message(_summary_note(10**6, ""))) + (
                math.ceil(reserve * 1.05)
            )
            note_tokens = lambda _dropped: summary_tokens  # noqa: E731
        cut = history.plan(
            target=target,
            limit=limit,
            elide=config.strategy != "window",
            note_tokens=note_tokens,
            session_id=session_id,
            elide_kept_for_target=break_even is not None and break_even == target,
        )
        note = None
        summary_digest = None
        if cut.dropped and cut.noted:
            note = _drop_note(cut.dropped)
            if summarize:
                note, summary_digest = self._summary(history, cut, previous, reserve)
        result = self._result(
            history, cut, note, previous, retrimmed=True, summary_digest=summary_digest
        )
        if result.tokens_after > limit and summary_digest is not None:
            # The summary came out longer than planned; the plain note always fits the plan.
            result = self._result(history, cut, _drop_note(cut.dropped), previous, retrimmed=True)
        return result

    def _is_valid(self, messages: Sequence[Mapping[str, Any]]) -> bool:
        try:
            self.view.validate(messages)
        except ValueError:
            return False
        return True

    def _reapply(self, history: _History, state: TrimState) -> tuple[_Cut, str | None] | None:
        """The state's cut, if it still applies to this history (its prefix is unchanged)."""
        if state.covered > len(history.messages):
            return None
        if _combined_digest(history.digests[: state.covered]) != state.covered_digest:
            return None
        cut = _Cut(
            elided=dict(state.elided),
            truncated={index: (kept, tokens_cut) for index, kept, tokens_cut in state.truncated},
            drop_start=state.drop_start,
            drop_end=state.drop_end,
            kept_in_span=tuple(state.kept_in_span),
        )
        return cut, state.note

    def _summary(
        self, history: _History, cut: _Cut, previous: TrimState, reserve: int
    ) -> tuple[str, str | None]:
        kept = set(cut.kept_in_span)
        span = [i for i in range(cut.drop_start, cut.drop_end) if i not in kept]
        span_digest = _combined_digest([history.digests[i] for i in span])
        if previous.summary_digest == span_digest and previous.note is not None:
            return previous.note, span_digest
        assert self.summarizer is not None
        try:
            summary = self.summarizer([dict(history.messages[i]) for i in span])
        except Exception as exc:
            # A failing summarizer must not fail the model call; the plain note is always valid.
            _log.warning(
                "trim_summary_failed",
                error=f"{type(exc).__name__}: {exc}",
                dropped_messages=len(span),
            )
            return _drop_note(cut.dropped), None
        summary = history.counter.truncate_text(str(summary), reserve, history.model)
        return _summary_note(cut.dropped, summary), span_digest

    def _result(
        self,
        history: _History,
        cut: _Cut,
        note: str | None,
        previous: TrimState,
        *,
        retrimmed: bool,
        head_tokens: int | None = None,
        summary_digest: str | None = None,
    ) -> TrimResult:
        if head_tokens is None:
            head_tokens = history.head_tokens
        out, digests, tokens = history.assemble(cut, note, head_tokens)
        prefix_reused = (
            previous.output_length > 0
            and len(digests) >= previous.output_length
            and _combined_digest(digests[: previous.output_length]) == previous.output_digest
        )
        covered = 0 if cut.empty else cut.covered
        if summary_digest is None and not retrimmed:
            summary_digest = previous.summary_digest
        state = TrimState(
            covered=covered,
            covered_digest=_combined_digest(history.digests[:covered]),
            elided=sorted(cut.elided.items()),
            truncated=sorted(
                (index, kept, tokens_cut) for index, (kept, tokens_cut) in cut.truncated.items()
            ),
            head_tokens=head_tokens,
            drop_start=cut.drop_start,
            drop_end=cut.drop_end,
            kept_in_span=list(cut.kept_in_span),
            note=note,
            summary_digest=summary_digest if note is not None else None,
            output_length=len(out),
            output_digest=_combined_digest(digests),
            trims=previous.trims + (1 if retrimmed else 0),
        )
        return TrimResult(
            messages=out,
            tokens_before=history.total,
            tokens_after=tokens,
            elided_tool_outputs=len(cut.elided),
            dropped_messages=cut.dropped if cut.drop_end > cut.drop_start else 0,
            truncated_messages=len(cut.truncated),
            prefix_reused=prefix_reused,
            retrimmed=retrimmed,
            state=state,
        )
