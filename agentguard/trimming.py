"""Fitting an agent's growing context into a token budget without breaking the request.

The history is read as a *head* (the leading system/developer prompts and the first user
message, the task), then *turns*, each ending with an assistant message: a user message and the
assistant reply that follows it are one turn, and an assistant message with ``tool_calls`` is
never separated from its tool results. The last ``keep_last_turns`` turns are the *tail*. The
head, the tail and the last user message are kept whole. To make room, trimming

1. elides old tool outputs longer than ``tool_output_max_tokens``, oldest first, only as far as
   needed: the output's first lines stay, followed by
   ``[agentguard: 1234 tokens of output from tool read_file elided]``;
2. when that is not enough, drops the oldest whole turns and puts one note in their place;
3. only when even dropping every turn outside the tail cannot reach the limit, elides the long
   tool outputs of the tail's older turns as well (never the newest turn's), because agent
   tails routinely hold several multi-thousand-token file reads and failing the call helps
   nobody. If the request still does not fit, :class:`~agentguard.ContextTooLarge` is raised.

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

Summarizer = Callable[[list[dict[str, Any]]], str]
"""Turns the dropped messages into a short text that replaces them."""

_PROMPT_ROLES = frozenset({"system", "developer"})
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


# -- the engine ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Cut:
    elided: dict[int, int] = field(default_factory=dict)  # index -> tokens cut
    drop_start: int = 0
    drop_end: int = 0
    kept_in_span: tuple[int, ...] = ()

    @property
    def dropped(self) -> int:
        return self.drop_end - self.drop_start - len(self.kept_in_span)

    @property
    def empty(self) -> bool:
        return not self.elided and self.drop_end <= self.drop_start

    @property
    def covered(self) -> int:
        return max([self.drop_end, *(index + 1 for index in self.elided)])


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


class _History:
    """One request's messages with what trimming needs to know about them."""

    def __init__(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str,
        counter: TokenCounter,
        keep_last_turns: int,
        tool_output_max_tokens: int,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> None:
        self.messages: list[dict[str, Any]] = [
            message if isinstance(message, dict) else dict(_as_mapping(message))
            for message in messages
        ]
        self.model = model
        self.counter = counter
        self.tool_output_max_tokens = tool_output_max_tokens
        self.head_tokens = min(ELIDED_HEAD_MAX_TOKENS, tool_output_max_tokens // 4)
        self._heads: dict[tuple[int, int], str] = {}
        self.digests = [message_digest(message) for message in self.messages]
        self.counts = counter.message_counts(self.messages, model, digests=self.digests)
        self.overhead = counter.request_overhead(model) + counter.count_tools(tools, model)
        self.total = self.overhead + sum(self.counts)
        self._layout(max(keep_last_turns, 1))

    def _layout(self, keep_last_turns: int) -> None:
        # The last turn is always kept, even with keep_last_turns=0: it is what the model is
        # answering.
        messages = self.messages
        n = len(messages)
        units: list[tuple[int, int]] = []
        self.tool_names: dict[str, str] = {}
        index = 0
        while index < n:
            end = index + 1
            message = messages[index]
            if message.get("role") == "assistant" and message.get("tool_calls"):
                while end < n and messages[end].get("role") == "tool":
                    end += 1
                for call in message["tool_calls"]:
                    if isinstance(call, Mapping):
                        spec = call.get("function") or call.get("custom") or {}
                        name = spec.get("name") if isinstance(spec, Mapping) else None
                        self.tool_names[str(call.get("id"))] = str(name or "unknown")
            units.append((index, end))
            index = end

        prompts = 0
        while prompts < n and messages[prompts].get("role") in _PROMPT_ROLES:
            prompts += 1
        first_user = next((i for i in range(prompts, n) if messages[i].get("role") == "user"), None)
        head_end = prompts
        if first_user is not None:
            head_end = next(end for start, end in units if start <= first_user < end)
        self.head_end = head_end

        # A turn ends with an assistant unit; trailing messages form the open, current turn.
        turns: list[tuple[int, int]] = []
        start = head_end
        for unit_start, unit_end in units:
            if unit_start < head_end:
                continue
            if messages[unit_start].get("role") == "assistant":
                turns.append((start, unit_end))
                start = unit_end
        if start < n:
            turns.append((start, n))
        self.turns = turns
        self.tail_start = turns[-keep_last_turns][0] if len(turns) >= keep_last_turns else head_end
        self.droppable = [turn for turn in turns if turn[1] <= self.tail_start]
        last_user = next(
            (i for i in range(n - 1, -1, -1) if messages[i].get("role") == "user"), None
        )
        self.pinned_user = (
            last_user if last_user is not None and head_end <= last_user < self.tail_start else None
        )

    # -- pieces of a trimmed request ----------------------------------------------------------

    def tool_name(self, index: int) -> str:
        message = self.messages[index]
        call_id = message.get("tool_call_id")
        return self.tool_names.get(str(call_id)) or str(message.get("name") or "unknown")

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
        return {**self.messages[index], "content": f"{head}\n{marker}" if head else marker}

    def elision(self, index: int) -> tuple[int, dict[str, Any], int]:
        """Tokens cut, the elided message, and its token count, for a fresh elision."""
        head = self.elision_head(index, self.head_tokens)
        head_only = {**self.messages[index], "content": head}
        head_count = self.counter.message_counts([head_only], self.model)[0]
        tokens_cut = max(self.counts[index] - head_count, 0)
        message = self.elided_message(index, tokens_cut, head)
        return tokens_cut, message, self.count(message)

    def count(self, message: Mapping[str, Any]) -> int:
        return self.counter.message_counts([message], self.model)[0]

    def note_message(self, text: str) -> dict[str, Any]:
        return {"role": NOTE_ROLE, "content": text}

    # -- planning -----------------------------------------------------------------------------

    def plan(
        self,
        *,
        target: int,
        limit: int,
        elide: bool,
        note_tokens: Callable[[int], int],
        session_id: str | None,
    ) -> _Cut:
        """The least cut that brings the request to ``target`` (or as close as it can).

        Raises:
            ContextTooLarge: even the most trimming leaves more than ``limit`` tokens.
        """
        if self.total <= target:
            return _Cut()
        newest_turn = self.turns[-1][0] if self.turns else len(self.messages)
        old: dict[int, tuple[int, int]] = {}  # index -> (tokens cut, tokens saved)
        kept_turns: dict[int, tuple[int, int]] = {}
        if elide:
            for index in range(newest_turn):
                if (
                    self.messages[index].get("role") == "tool"
                    and self.counts[index] > self.tool_output_max_tokens
                ):
                    tokens_cut, _message, elided_count = self.elision(index)
                    if elided_count < self.counts[index]:
                        into = old if index < self.tail_start else kept_turns
                        into[index] = (tokens_cut, self.counts[index] - elided_count)
        old_savings = sum(saved for _cut, saved in old.values())

        # Dropping d oldest turns: find the fewest that, with every remaining old output elided,
        # reach the target. Running sums keep this linear in the history's length.
        best_size, best_drop = self.total - old_savings, 0
        chosen: int | None = 0 if best_size <= target else None
        dropped_tokens = dropped_savings = dropped_messages = 0
        if chosen is None:
            for number, (start, end) in enumerate(self.droppable, start=1):
                for index in range(start, end):
                    if index == self.pinned_user:
                        continue
                    dropped_tokens += self.counts[index]
                    dropped_messages += 1
                    if index in old:
                        dropped_savings += old[index][1]
                size = (
                    self.total
                    - dropped_tokens
                    + note_tokens(dropped_messages)
                    - (old_savings - dropped_savings)
                )
                if size < best_size:
                    best_size, best_drop = size, number
                if size <= target:
                    chosen = number
                    break
        candidates = old
        if chosen is None:
            chosen = best_drop
            if best_size > limit:
                # Last resort, rather than failing the call: elide the long outputs of the kept
                # turns too, oldest first. The newest turn is never touched.
                smallest = best_size - sum(saved for _cut, saved in kept_turns.values())
                if smallest > limit:
                    raise self._too_large(smallest, limit, session_id)
                candidates = {**old, **kept_turns}

        cut = _Cut()
        size = self.total
        if chosen:
            cut.drop_start = self.head_end
            cut.drop_end = self.droppable[chosen - 1][1]
            if self.pinned_user is not None and self.pinned_user < cut.drop_end:
                cut.kept_in_span = (self.pinned_user,)
            size -= sum(
                self.counts[i]
                for i in range(cut.drop_start, cut.drop_end)
                if i not in cut.kept_in_span
            )
            size += note_tokens(cut.dropped)
        for index, (tokens_cut, saved) in candidates.items():
            if size <= target:
                break
            if cut.drop_start <= index < cut.drop_end:
                continue
            cut.elided[index] = tokens_cut
            size -= saved
        return cut

    def _too_large(self, smallest: int, limit: int, session_id: str | None) -> ContextTooLarge:
        where = f" of session {session_id!r}" if session_id else ""
        return ContextTooLarge(
            f"the messages{where} take {self.total} tokens and cannot be trimmed below "
            f"{smallest}, more than the {limit} allowed: the system prompt, the first and the "
            "last user message and the newest turn are kept whole, and the "
            f"{len(self.turns) - len(self.droppable)} most recent turn(s) are not dropped",
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
        kept_in_span = set(cut.kept_in_span)
        for index, message in enumerate(self.messages):
            if cut.drop_start <= index < cut.drop_end:
                if index == cut.drop_start and note is not None:
                    placeholder = self.note_message(note)
                    out.append(placeholder)
                    digests.append(message_digest(placeholder))
                    tokens += self.count(placeholder)
                if index not in kept_in_span:
                    continue
            if index in cut.elided:
                head = self.elision_head(index, head_tokens)
                elided = self.elided_message(index, cut.elided[index], head)
                out.append(elided)
                digests.append(message_digest(elided))
                tokens += self.count(elided)
                continue
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

    Keeps the system/developer prompts at the start, the first user message, the last user
    message and the last ``keep_last_turns`` turns whole. First elides old tool outputs longer
    than ``tool_output_max_tokens`` (oldest first, only as many as needed), then drops the oldest
    whole turns and puts one user-role note where they were; as a last resort it elides long
    outputs of the kept turns too, except the newest turn's. A tool call is never separated from
    its results. The input is not modified; messages kept unchanged are the same dict objects.

    Args:
        messages: OpenAI chat message dicts.
        max_tokens: the tokens the request may take.
        model: the model, for counting.
        keep_last_turns: recent turns kept whole (the last one always is).
        tool_output_max_tokens: tool outputs longer than this may be elided.
        counter: the token counter (default: the process-wide one).
        strategy: ``"elide"`` (elide, then drop) or ``"window"`` (drop only).
        tools: the request's tool definitions, whose tokens count against ``max_tokens``.

    Returns:
        The trimmed messages; a new list (the original messages when they fit).

    Raises:
        ContextTooLarge: the kept parts alone exceed ``max_tokens``; names both sizes.
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
    note = _drop_note(cut.dropped) if cut.dropped or cut.kept_in_span else None
    out, _digests, _tokens = history.assemble(cut, note, history.head_tokens)
    return out


class Trimmer:
    """The trimming stage: fits each request of a session, keeping the prefix cache-stable.

    When a request exceeds ``max_tokens``, it is trimmed down to ``low_watermark`` of it; the
    following requests of the session get the same cut (byte for byte) as long as they fit,
    so they extend the previous request instead of rewriting it. Pass each call's
    ``result.state`` to the next call.

    Strategies: ``window`` drops turns only; ``elide`` elides old tool outputs, then drops turns;
    ``summarize`` does what ``elide`` does and, given a ``summarizer``, replaces the dropped
    turns with its summary of them (computed once per dropped span and kept in the state).

    Args:
        config: the trimming policy.
        counter: the token counter (default: the process-wide one).
        summarizer: for ``strategy="summarize"``: turns the dropped messages into a text.
        summary_max_tokens: a longer summary is cut to this.
    """

    def __init__(
        self,
        config: TrimmingConfig | None = None,
        counter: TokenCounter | None = None,
        *,
        summarizer: Summarizer | None = None,
        summary_max_tokens: int = 1024,
    ) -> None:
        self.config = config or TrimmingConfig()
        self.counter = counter or default_counter()
        self.summarizer = summarizer
        self.summary_max_tokens = summary_max_tokens

    def fit(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str,
        max_tokens: int | None = None,
        state: TrimState | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        session_id: str | None = None,
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

        Returns:
            The trimmed request and what was done; ``result.state`` goes to the next call.

        Raises:
            ContextTooLarge: the kept parts alone exceed ``max_tokens``.
        """
        config = self.config
        history = _History(
            messages,
            model=model,
            counter=self.counter,
            keep_last_turns=config.keep_last_turns,
            tool_output_max_tokens=config.tool_output_max_tokens,
            tools=tools,
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
                if result.tokens_after <= limit and _is_valid(result.messages):
                    return result
        elif history.total <= limit:
            return self._result(history, _Cut(), None, previous, retrimmed=False)

        target = max(math.floor(config.low_watermark * limit), 1)
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
        )
        note = None
        summary_digest = None
        if cut.dropped or cut.kept_in_span:
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

    def _reapply(self, history: _History, state: TrimState) -> tuple[_Cut, str | None] | None:
        """The state's cut, if it still applies to this history (its prefix is unchanged)."""
        if state.covered > len(history.messages):
            return None
        if _combined_digest(history.digests[: state.covered]) != state.covered_digest:
            return None
        cut = _Cut(
            elided=dict(state.elided),
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
            prefix_reused=prefix_reused,
            retrimmed=retrimmed,
            state=state,
        )


def _is_valid(messages: Sequence[Mapping[str, Any]]) -> bool:
    try:
        validate_messages(messages)
    except ValueError:
        return False
    return True
