"""What trimming asks of a wire format: the :class:`HistoryView` protocol.

The planner (:mod:`agentguard.trimming.history`) and the cache-stable :class:`~agentguard.
trimming.Trimmer` are written once. They see a request's history only as a list of *entries*
(dicts) and ask the view every question that depends on the wire format: which entries are
prompts, the task, replies or tool outputs, which must stay together, what text an entry
carries and how to replace it, how many tokens each adds, and how to read the entries from a
request body and write the trimmed ones back. Each dialect brings its view
(:attr:`agentguard.dialects.Dialect.trim_view`): chat messages are their own entries; the
Responses API's ``input`` items are too, with ``instructions`` as a leading prompt entry;
Anthropic's messages are split so that each ``tool_result`` block is an entry of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agentguard.tokens import TokenCounter

__all__ = ["HistoryView"]


class HistoryView(Protocol):
    """One wire format's history, as trimming reads and rewrites it.

    Entries are plain dicts; the planner never looks inside one itself. Indices in a
    :class:`~agentguard.trimming.TrimState` refer to the entries :meth:`read` returns, so
    ``read`` must be deterministic and must keep a growing conversation's earlier entries
    unchanged.
    """

    # -- the body --------------------------------------------------------------------------

    def read(self, body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """The request's history as entries, or ``None`` when the request has none the guard
        can trim (it continues context the provider keeps, or its input is not a list)."""
        ...

    def write(
        self,
        body: dict[str, Any],
        entries: Sequence[Mapping[str, Any]],
        sources: Sequence[int | None],
    ) -> None:
        """Put trimmed entries back into ``body`` (replacing its top-level keys only).

        Args:
            body: the request body (the one :meth:`read` read).
            entries: the trimmed entries, in order.
            sources: for each entry, the index of the entry it was made from (``None`` for
                the note that stands in for dropped entries).
        """
        ...

    def caches_prefix(self, body: Mapping[str, Any]) -> bool:
        """Whether the provider serves this request's unchanged prefix from a prompt cache
        (what a cache-aware cut weighs)."""
        ...

    # -- counting ----------------------------------------------------------------------------

    def counts(
        self,
        entries: Sequence[Mapping[str, Any]],
        model: str,
        counter: TokenCounter,
        *,
        digests: Sequence[bytes] | None = None,
    ) -> list[int]:
        """The tokens each entry adds to a request, counted as the dialect counts its input
        (never less than the dialect's count of a request made of these entries)."""
        ...

    def overhead(
        self, model: str, counter: TokenCounter, tools: Sequence[Mapping[str, Any]] | None
    ) -> int:
        """The tokens a request adds beyond its entries: framing and tool definitions."""
        ...

    def digest(self, entry: Mapping[str, Any]) -> bytes:
        """A content hash of an entry: equal for entries the provider reads the same."""
        ...

    # -- layout ------------------------------------------------------------------------------

    def validate(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Raise ``ValueError`` unless the entries form a request the provider accepts."""
        ...

    def units(self, entries: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
        """``(start, end)`` of each group of entries that must be kept or dropped whole (a
        tool call with its results), covering every entry in order."""
        ...

    def is_prompt(self, entry: Mapping[str, Any]) -> bool:
        """A system or developer prompt (kept at the start)."""
        ...

    def is_user(self, entry: Mapping[str, Any]) -> bool:
        """Something the user said (the first one is the task)."""
        ...

    def is_reply(self, entry: Mapping[str, Any]) -> bool:
        """The model's (a turn ends with a group that starts with one)."""
        ...

    def is_tool_output(self, entry: Mapping[str, Any]) -> bool:
        """A tool's result whose output may be elided (replaced by text)."""
        ...

    def tool_names(self, entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Tool call id -> the name of the tool called."""
        ...

    def tool_name(self, entry: Mapping[str, Any], names: Mapping[str, str]) -> str:
        """The name of the tool whose output ``entry`` is."""
        ...

    # -- text --------------------------------------------------------------------------------

    def text(self, entry: Mapping[str, Any]) -> str | None:
        """The entry's text when it is text only (it may then be cut in the middle), else
        ``None``."""
        ...

    def output_text(self, entry: Mapping[str, Any]) -> str:
        """The text of a tool output (what an elision keeps the start of)."""
        ...

    def with_text(self, entry: Mapping[str, Any], text: str) -> dict[str, Any]:
        """The entry with its text (or tool output) replaced by ``text``, all else kept."""
        ...

    def note(self, text: str) -> dict[str, Any]:
        """The entry that stands in for dropped entries."""
        ...

    def as_chat(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The entries as OpenAI chat messages (what a summarizer reads)."""
        ...
