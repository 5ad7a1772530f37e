"""One request's history as trimming plans it: its layout (head, turns, tail, the last unit),
the pieces a trimmed request is made of (elisions, cuts, the note), and the plan itself."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentguard.errors import ContextTooLarge
from agentguard.tokens import TokenCounter, _as_mapping
from agentguard.trimming.chat import CHAT_VIEW

if TYPE_CHECKING:
    from agentguard.trimming.view import HistoryView

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


@dataclass(slots=True)
class Cut:
    """A plan for one request: which messages are elided, cut in the middle or dropped.

    Indices refer to the untrimmed history; the dropped span keeps ``kept_in_span`` (the last
    user message) and, when ``noted``, gets one note in its place.
    """

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


@dataclass(slots=True)
class Assembled:
    """A trimmed request: its messages, their digests, where each came from (the index of
    the message it was made from; ``None`` for the note) and its tokens."""

    messages: list[dict[str, Any]]
    digests: list[bytes]
    sources: list[int | None]
    tokens: int


def combined_digest(digests: Sequence[bytes]) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for digest in digests:
        hasher.update(digest)
    return hasher.hexdigest()


def drop_note(count: int) -> str:
    noun = "message" if count == 1 else "messages"
    return (
        f"[agentguard: {count} earlier {noun} of this conversation were dropped to fit the "
        "context window]"
    )


def summary_note(count: int, summary: str) -> str:
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


class History:
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
        view: HistoryView = CHAT_VIEW,
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
        self.digests = [view.digest(message) for message in self.messages]
        self.counts = view.counts(self.messages, model, counter, digests=self.digests)
        self.overhead = view.overhead(model, counter, tools)
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
            text = self.view.output_text(self.messages[index])
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
        return self.view.counts([message], self.model, self.counter)[0]

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
    ) -> Cut:
        """The least cut that brings the request to ``target`` (or as close as it can).

        Each degradation is used only when the ones before it, taken as far as they go, cannot
        bring the request within ``limit``; once used, it goes as far as ``target`` needs.
        With ``elide_kept_for_target``, the kept turns' long outputs are also elided when
        dropping old turns cannot reach ``target`` (a target set by cost, not by room).

        Raises:
            ContextTooLarge: even the most trimming leaves more than ``limit`` tokens.
        """
        if self.total <= target:
            return Cut()
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
            cut = self.truncate(cut, target, limit, note_tokens, session_id)
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
    ) -> tuple[Cut, int]:
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
        cut = Cut(drop_start=self.head_end, drop_end=chosen_end)
        if pinned is not None and self.head_end <= pinned < chosen_end:
            cut.kept_in_span = (pinned,)
        if not cut.dropped:
            cut = Cut()
        size = self.size(cut, note_tokens)
        for index, (tokens_cut, saved) in candidates.items():
            if size <= target:
                break
            if not cut.drops(index):
                cut.elided[index] = tokens_cut
                size -= saved
        return cut, size

    def size(self, cut: Cut, note_tokens: Callable[[int], int]) -> int:
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

    def truncate(
        self,
        cut: Cut,
        target: int,
        limit: int,
        note_tokens: Callable[[int], int],
        session_id: str | None = None,
    ) -> Cut:
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
            return self.size(cut, note_tokens) - sum(
                current[index] - smallest[index] for index in smallest if not cut.drops(index)
            )

        if floor() > limit and cut.kept_in_span:
            cut.kept_in_span = ()
        if floor() > limit and cut.dropped:
            cut.noted = False
        if floor() > limit:
            raise self._too_large(floor(), limit, session_id)

        size = self.size(cut, note_tokens)
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

    def assemble(self, cut: Cut, note: str | None, head_tokens: int) -> Assembled:
        """The trimmed messages, their digests, their tokens (request overhead included) and
        where each came from."""
        out = Assembled([], [], [], self.overhead)

        def add(message: dict[str, Any], source: int | None) -> None:
            out.messages.append(message)
            out.digests.append(self.view.digest(message))
            out.sources.append(source)
            out.tokens += self.count(message)

        for index, message in enumerate(self.messages):
            if index == cut.drop_start and cut.drop_end > cut.drop_start and note is not None:
                add(self.note_message(note), None)
            if cut.drops(index):
                continue
            if index in cut.truncated:
                add(self.truncated_message(index, *cut.truncated[index]), index)
            elif index in cut.elided:
                head = self.elision_head(index, head_tokens)
                add(self.elided_message(index, cut.elided[index], head), index)
            else:
                out.messages.append(message)
                out.digests.append(self.digests[index])
                out.sources.append(index)
                out.tokens += self.counts[index]
        return out


def drop_note_tokens(history: History) -> Callable[[int], int]:
    return lambda dropped: history.count(history.note_message(drop_note(dropped)))
