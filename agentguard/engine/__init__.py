"""The engine every model call passes through: the pipeline (a generator that decides),
the actions it yields (data), and the drivers that perform them (sync and async).

::

    call ─► limits ─► route ─► trim ─► measure ─► reserve ─► send (retry) ─► escalate ─► settle
"""

from __future__ import annotations

from agentguard.engine.actions import (
    Action,
    Confirm,
    KeepContext,
    Outcome,
    Park,
    Prepare,
    ReadBudget,
    RecallContext,
    Release,
    Reply,
    ReportHealth,
    Reserve,
    Send,
    Settle,
    Sleep,
    TransportFailure,
)
from agentguard.engine.drivers import Effects, drive_async, drive_sync
from agentguard.engine.pipeline import CallContext, CallStage, Pipeline

__all__ = [
    "Action",
    "CallContext",
    "CallStage",
    "Confirm",
    "Effects",
    "KeepContext",
    "Outcome",
    "Park",
    "Pipeline",
    "Prepare",
    "ReadBudget",
    "RecallContext",
    "Release",
    "Reply",
    "ReportHealth",
    "Reserve",
    "Send",
    "Settle",
    "Sleep",
    "TransportFailure",
    "drive_async",
    "drive_sync",
]
