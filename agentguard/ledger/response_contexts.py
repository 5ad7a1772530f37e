"""The size of the conversations the provider keeps: what ``previous_response_id`` bills.

A Responses call that names a previous response is billed for that response's whole
conversation again (its input and its output) on top of its own input. The guard remembers
the billed size of every response it settled, in the store so that every process (and a
daemon resuming a parked call) sees it, and adds it to the next call's worst case.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentguard.store import Store

__all__ = ["ResponseContexts"]

# The provider keeps a stored response for 30 days; a little longer does no harm.
_KEEP_MS = 31 * 24 * 3600 * 1000
_MEMORY = 4096


class ResponseContexts:
    """Response id → the tokens a call continuing it is billed again.

    Args:
        store: where the sizes are kept for every process (``None``: this process only).
    """

    def __init__(self, store: Store | None) -> None:
        self._store = store
        self._memory: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._writes = 0

    def remember(self, response_id: str, tokens: int) -> None:
        """Record that continuing ``response_id`` bills ``tokens`` again."""
        with self._lock:
            self._memory[response_id] = tokens
            self._memory.move_to_end(response_id)
            while len(self._memory) > _MEMORY:
                self._memory.popitem(last=False)
            self._writes += 1
            prune = self._writes % 1000 == 1
        if self._store is None:
            return
        now = int(time.time() * 1000)
        with self._store.cursor() as cursor:
            cursor.execute(
                "INSERT INTO agentguard_response_contexts (response_id, tokens, at_ms)"
                " VALUES (:id, :tokens, :at) ON CONFLICT (response_id)"
                " DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms",
                {"id": response_id, "tokens": tokens, "at": now},
            )
            if prune:
                cursor.execute(
                    "DELETE FROM agentguard_response_contexts WHERE at_ms < :before",
                    {"before": now - _KEEP_MS},
                )

    def tokens(self, response_id: str) -> int | None:
        """The tokens continuing ``response_id`` bills again, or ``None`` if it is unknown."""
        with self._lock:
            known = self._memory.get(response_id)
        if known is not None or self._store is None:
            return known
        with self._store.cursor(write=False) as cursor:
            row = cursor.one(
                "SELECT tokens FROM agentguard_response_contexts WHERE response_id = :id",
                {"id": response_id},
            )
        if row is None:
            return None
        with self._lock:
            self._memory[response_id] = int(row[0])
        return int(row[0])
