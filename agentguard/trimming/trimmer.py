"""Trimming a request (:func:`trim_messages`) and a session's requests, cache-stably
(:class:`Trimmer`); see :mod:`agentguard.trimming` for how."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from agentguard.config import TrimmingConfig
from agentguard.tokens import TokenCounter, default_counter
from agentguard.trimming.chat import CHAT_VIEW
from agentguard.trimming.history import (
    Cut,
    History,
    combined_digest,
    drop_note,
    drop_note_tokens,
    summary_note,
)

if TYPE_CHECKING:
    from agentguard.trimming.view import HistoryView

__all__ = ["Summarizer", "TrimResult", "TrimState", "Trimmer", "trim_messages"]

_log = structlog.get_logger("agentguard")

Summarizer = Callable[[list[dict[str, Any]]], str]
"""Turns the dropped messages into a short text that replaces them."""


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
        sources: for each of ``messages``, the index of the message it was made from
            (``None`` for the note that stands in for dropped messages).
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
    sources: list[int | None] = field(default_factory=list)

    @property
    def trimmed(self) -> bool:
        """Whether ``messages`` differ from the request as given."""
        return bool(self.elided_tool_outputs or self.dropped_messages or self.truncated_messages)


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
    history = History(
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
        note_tokens=drop_note_tokens(history),
        session_id=None,
    )
    if cut.empty:
        return list(history.messages)
    note = drop_note(cut.dropped) if cut.dropped and cut.noted else None
    return history.assemble(cut, note, history.head_tokens).messages


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
        view: how to read the wire format's history (OpenAI chat messages by default; each
            call may name its own).
    """

    def __init__(
        self,
        config: TrimmingConfig | None = None,
        counter: TokenCounter | None = None,
        *,
        summarizer: Summarizer | None = None,
        summary_max_tokens: int = 1024,
        view: HistoryView = CHAT_VIEW,
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
        view: HistoryView | None = None,
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
            view: how to read ``messages`` (default: the trimmer's view); the entries of a
                Responses or Anthropic request come from their dialect's view.

        Returns:
            The trimmed request and what was done; ``result.state`` goes to the next call.

        Raises:
            ContextTooLarge: even the prompts, the task and the last message, each cut down to
                its marker, exceed ``max_tokens`` (see :func:`trim_messages`).
        """
        config = self.config
        history = History(
            messages,
            model=model,
            counter=self.counter,
            keep_last_turns=config.keep_last_turns,
            tool_output_max_tokens=config.tool_output_max_tokens,
            tools=tools,
            view=view or self.view,
        )
        limit = max_tokens if max_tokens is not None else config.max_context_tokens
        previous = state or TrimState()
        if not config.enabled or limit is None or not history.messages:
            return self._result(history, Cut(), None, previous, retrimmed=False)

        reapplied = self._reapply(history, previous)
        if reapplied is not None:
            cut, note = reapplied
            if cut.empty and history.total <= limit:
                return self._result(history, cut, None, previous, retrimmed=False)
            if not cut.empty:
                result = self._result(
                    history, cut, note, previous, retrimmed=False, head_tokens=previous.head_tokens
                )
                if result.tokens_after <= limit and self._is_valid(history, result.messages):
                    return result
        elif history.total <= limit:
            return self._result(history, Cut(), None, previous, retrimmed=False)

        target = max(math.floor(config.low_watermark * limit), 1)
        break_even = None
        if cached_input_ratio is not None:
            break_even = max(history.cache_break_even(cached_input_ratio), 1)
            target = min(target, break_even)
        summarize = config.strategy == "summarize" and self.summarizer is not None
        reserve = min(self.summary_max_tokens, max(32, target // 8))
        note_tokens = drop_note_tokens(history)
        if summarize:
            # The summary does not exist yet: plan for the longest one allowed.
            summary_tokens = history.count(history.note_message(summary_note(10**6, ""))) + (
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
            note = drop_note(cut.dropped)
            if summarize:
                note, summary_digest = self._summary(history, cut, previous, reserve)
                if cut.truncated:
                    cut = self._replan_for_note(history, cut, note, target=target, limit=limit)
        result = self._result(
            history, cut, note, previous, retrimmed=True, summary_digest=summary_digest
        )
        if result.tokens_after > limit and summary_digest is not None:
            # The summary came out longer than planned; the plain note always fits the plan.
            result = self._result(history, cut, drop_note(cut.dropped), previous, retrimmed=True)
        return result

    def _replan_for_note(
        self, history: History, cut: Cut, note: str, *, target: int, limit: int
    ) -> Cut:
        """The messages a plan cut in the middle, cut again for the summary's real size: the
        plan reserved room for the longest summary allowed, and one that came out shorter may
        leave room for them whole. The dropped span stays (the summary is of it)."""
        actual = history.count(history.note_message(note))
        uncut = Cut(
            elided=dict(cut.elided),
            drop_start=cut.drop_start,
            drop_end=cut.drop_end,
            kept_in_span=cut.kept_in_span,
            noted=cut.noted,
        )
        if history.size(uncut, lambda _dropped: actual) <= limit:
            return uncut
        return history.truncate(uncut, target, limit, lambda _dropped: actual)

    def _is_valid(self, history: History, messages: Sequence[Mapping[str, Any]]) -> bool:
        try:
            history.view.validate(messages)
        except ValueError:
            return False
        return True

    def _reapply(self, history: History, state: TrimState) -> tuple[Cut, str | None] | None:
        """The state's cut, if it still applies to this history (its prefix is unchanged)."""
        if state.covered > len(history.messages):
            return None
        if combined_digest(history.digests[: state.covered]) != state.covered_digest:
            return None
        cut = Cut(
            elided=dict(state.elided),
            truncated={index: (kept, tokens_cut) for index, kept, tokens_cut in state.truncated},
            drop_start=state.drop_start,
            drop_end=state.drop_end,
            kept_in_span=tuple(state.kept_in_span),
        )
        return cut, state.note

    def _summary(
        self, history: History, cut: Cut, previous: TrimState, reserve: int
    ) -> tuple[str, str | None]:
        kept = set(cut.kept_in_span)
        span = [i for i in range(cut.drop_start, cut.drop_end) if i not in kept]
        span_digest = combined_digest([history.digests[i] for i in span])
        if previous.summary_digest == span_digest and previous.note is not None:
            return previous.note, span_digest
        assert self.summarizer is not None
        try:
            summary = self.summarizer(history.view.as_chat([history.messages[i] for i in span]))
        except Exception as exc:
            # A failing summarizer must not fail the model call; the plain note is always valid.
            _log.warning(
                "trim_summary_failed",
                error=f"{type(exc).__name__}: {exc}",
                dropped_messages=len(span),
            )
            return drop_note(cut.dropped), None
        summary = history.counter.truncate_text(str(summary), reserve, history.model)
        return summary_note(cut.dropped, summary), span_digest

    def _result(
        self,
        history: History,
        cut: Cut,
        note: str | None,
        previous: TrimState,
        *,
        retrimmed: bool,
        head_tokens: int | None = None,
        summary_digest: str | None = None,
    ) -> TrimResult:
        if head_tokens is None:
            head_tokens = history.head_tokens
        assembled = history.assemble(cut, note, head_tokens)
        out, digests = assembled.messages, assembled.digests
        prefix_reused = (
            previous.output_length > 0
            and len(digests) >= previous.output_length
            and combined_digest(digests[: previous.output_length]) == previous.output_digest
        )
        covered = 0 if cut.empty else cut.covered
        if summary_digest is None and not retrimmed:
            summary_digest = previous.summary_digest
        state = TrimState(
            covered=covered,
            covered_digest=combined_digest(history.digests[:covered]),
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
            output_digest=combined_digest(digests),
            trims=previous.trims + (1 if retrimmed else 0),
        )
        return TrimResult(
            messages=out,
            tokens_before=history.total,
            tokens_after=assembled.tokens,
            elided_tool_outputs=len(cut.elided),
            dropped_messages=cut.dropped if cut.drop_end > cut.drop_start else 0,
            truncated_messages=len(cut.truncated),
            prefix_reused=prefix_reused,
            retrimmed=retrimmed,
            state=state,
            sources=assembled.sources,
        )
