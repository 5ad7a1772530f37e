"""Which budget lines a session's calls draw on, and what is left on them.

The config's ``[[budgets]]`` name keys with a dollar limit per window; ``limits.max_session_usd``
gives every root session a budget of its own. :class:`Budgets` turns both into ledger lines and
reads their status, so a session is handed its lines and never needs the guard that made it.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from agentguard.errors import ConfigError
from agentguard.ledger.windows import BudgetLine, BudgetStatus

if TYPE_CHECKING:
    from agentguard.config import GuardConfig
    from agentguard.ledger.ledger import Ledger

__all__ = ["DEFAULT_BUDGET_KEY", "Budgets"]

DEFAULT_BUDGET_KEY = "default"
"""The key of sessions that name none; it needs no ``[[budgets]]`` entry (unlimited without)."""


class Budgets:
    """The config's budgets over one ledger.

    Args:
        config: the guard's config (its ``budgets`` and ``limits.max_session_usd``).
        ledger: where the lines' spend and holds are kept.
    """

    __slots__ = ("config", "ledger")

    def __init__(self, config: GuardConfig, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger

    def check_key(self, key: str) -> None:
        """Check that sessions may name ``key``: a ``[[budgets]]`` entry configures it (with or
        without a ``limit_usd``), or it is the implicit ``"default"`` key.

        Raises:
            ConfigError: the key is not configured (a misspelt key would otherwise run the
                session with no budget at all).
        """
        if key == DEFAULT_BUDGET_KEY or self.config.budget(key) is not None:
            return
        configured = [budget.key for budget in self.config.budgets]
        close = difflib.get_close_matches(key, configured, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        listed = ", ".join(repr(name) for name in configured) or "none"
        raise ConfigError(
            f"budget key {key!r} is not configured; {hint}configured: {listed}. Add a "
            f'[[budgets]] entry with key = "{key}" (without limit_usd to only record its '
            f"spend), or name a configured key",
            field="budgets.key",
            expected=f"one of: {listed}",
        )

    def line(self, key: str) -> BudgetLine:
        """The ledger line of a budget key (unlimited if no budget is configured for it)."""
        budget = self.config.budget(key)
        if budget is None:
            return BudgetLine(key, None)
        return BudgetLine(budget.key, budget.limit_usd, budget.window_length, budget.window_mode)

    def lines_for(self, budget_key: str, root_id: str) -> tuple[BudgetLine, ...]:
        """The lines a call draws on: its budget key's window and, with
        ``limits.max_session_usd``, the own budget of its root session ``root_id``."""
        lines = [self.line(budget_key)]
        per_session = self.config.limits.max_session_usd
        if per_session is not None:
            lines.append(BudgetLine(f"session:{root_id}", per_session))
        return tuple(lines)

    def statuses(self, lines: tuple[BudgetLine, ...]) -> list[BudgetStatus]:
        """The status of each line's current window."""
        return [self.ledger.status(line) for line in lines]
