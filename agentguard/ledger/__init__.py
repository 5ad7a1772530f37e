"""The budget ledger: budget lines and windows, holds and settlements in the store.

``windows`` says what a budget is (lines, windows, money); ``ledger`` keeps it in the SQL store
(reservations, lease slices, settlements, sweeps of holds whose outcome stayed unknown);
``history`` reads past windows' spend; ``response_contexts`` remembers what a stored response
makes the provider bill again when a later call continues it.
"""

from agentguard.ledger.ledger import Ledger, Reservation
from agentguard.ledger.windows import BudgetLine, BudgetStatus, from_nusd, to_nusd

__all__ = ["BudgetLine", "BudgetStatus", "Ledger", "Reservation", "from_nusd", "to_nusd"]
