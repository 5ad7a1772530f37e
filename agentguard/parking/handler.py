"""The parking stage: what a limit error or an exhausted budget does to the session.

Waits up to ``parking.wait_inline_max_s`` are slept in-process and the call retried. Longer
limits park the session: its pending request and counters are written to the store in one
transaction, and :class:`~agentguard.SessionParked` is raised to the caller. An exhausted
account quota is recorded as ``failed`` (waiting cannot help) and the provider's error is
handed back.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agentguard.errors import AgentGuardError, BudgetExceeded, SessionParked
from agentguard.log import logger
from agentguard.parking.classify import (
    Decision,
    LimitVerdict,
    classify_limit_error,
    decide_limit,
    resume_time,
)
from agentguard.parking.record import ParkedSession, ParkReason
from agentguard.parking.store import ParkedStore, active_claim
from agentguard.redact import redact_text

if TYPE_CHECKING:
    from agentguard.config import ParkingConfig
    from agentguard.engine.actions import Reply
    from agentguard.engine.call import CallContext
    from agentguard.session import Session

__all__ = ["Decision", "Parker", "request_url"]

request_url: ContextVar[object | None] = ContextVar("agentguard_request_url", default=None)
"""The URL of the call being guarded (set by the transport; a string or an ``httpx.URL``,
made a string only when a refusal needs it): which gateway refused it."""

_LIMIT_STATUSES = frozenset({400, 402, 403, 422, 429})
# Call parameters a replay must not repeat: they belong to the transport, not the request.
_NOT_REPLAYED = frozenset({"stream_options"})


class Parker:
    """Parks sessions in a :class:`ParkedStore`.

    Args:
        config: the parking section of the config.
        store: where records go.
        max_retry_after_s: longest wait a response may ask for (longer ones are capped).
    """

    def __init__(
        self, config: ParkingConfig, store: ParkedStore, *, max_retry_after_s: float = 86400.0
    ) -> None:
        self.config = config
        self.store = store
        self.max_retry_after_s = max_retry_after_s

    def classify(self, reply: Reply) -> LimitVerdict | None:
        """The kind of limit an error response is, or ``None`` if it is not one."""
        if reply.status not in _LIMIT_STATUSES:
            return None
        return classify_limit_error(reply.status, reply.headers, reply.body, self.config.rules)

    def decide(self, verdict: LimitVerdict, retries_done: int, max_retries: int) -> Decision:
        """Wait in-process, park, or fail (:func:`~agentguard.parking.classify.decide_limit`)."""
        return decide_limit(
            verdict,
            retries_done=retries_done,
            max_retries=max_retries,
            wait_inline_max_s=self.config.wait_inline_max_s,
            parking=self.config.enabled,
            records=True,
        )

    # -- writing records (I/O: the pipeline runs these through its driver) ----------------------

    def park_limit(
        self, call: CallContext, verdict: LimitVerdict, *, failed: bool
    ) -> ParkedSession:
        now = datetime.now(UTC)
        if verdict.wait_s is None:
            url = request_url.get()
            gateway = self.gateway_reset(None if url is None else str(url), now)
            if gateway is not None:
                verdict = replace(verdict, wait_s=gateway[0], reset_source=gateway[1])
        resume_at, source = resume_time(
            verdict,
            window_hours=self.config.window_hours,
            max_wait_s=self.max_retry_after_s,
            now=now,
        )
        if verdict.wait_s is not None and verdict.wait_s > self.max_retry_after_s:
            logger.warning(
                "retry_after_capped",
                session_id=call.session.id,
                asked_s=verdict.wait_s,
                capped_s=self.max_retry_after_s,
            )
        reason = ParkReason(
            kind=verdict.kind,
            status=verdict.status,
            error_type=verdict.error_type,
            error_code=verdict.error_code,
            message=verdict.message,
            headers=verdict.headers,
            reset_source=source,
            budget_key=call.session.budget_key,
        )
        return self.park_session(
            call.session,
            call.original_body,
            reason,
            None if failed else resume_at,
            failed=failed,
            dialect=call.caller_dialect.name,
        )

    def gateway_reset(self, url: str | None, now: datetime) -> tuple[float, str] | None:
        """Seconds until the window of the configured gateway ``url`` belongs to ends, and the
        source to record; ``None`` if no ``parking.gateways`` entry matches."""
        if not url:
            return None
        for gateway in self.config.gateways:
            if not url.startswith(gateway.base_url.rstrip("/")):
                continue
            length = gateway.window_length.total_seconds()
            # A first-spend window began at the latest now, so it ends within one length.
            fixed = gateway.window_mode == "fixed"
            wait = length - now.timestamp() % length if fixed else length
            return wait, (
                f"parking.gateways ({gateway.base_url}: {gateway.window} {gateway.window_mode})"
            )
        return None

    def park_budget(self, call: CallContext, error: BudgetExceeded) -> ParkedSession:
        reason = ParkReason(
            kind="local_budget",
            message=str(error),
            reset_source="ledger",
            budget_key=error.key,
        )
        return self.park_session(
            call.session,
            call.original_body,
            reason,
            error.resets_at,
            failed=False,
            dialect=call.caller_dialect.name,
        )

    def park_session(
        self,
        session: Session,
        pending_request: Mapping[str, Any],
        reason: ParkReason,
        resume_at: datetime | None,
        *,
        failed: bool = False,
        dialect: str = "openai_chat",
    ) -> ParkedSession:
        """Write (or update) the session's parked record in one transaction.

        A session that is being resumed parks again with ``attempts + 1``; past
        ``parking.max_attempts`` the record is ``failed``.
        """
        request = {k: v for k, v in pending_request.items() if k not in _NOT_REPLAYED}
        max_attempts = self.config.max_attempts

        claim = active_claim.get()
        fenced_by = claim[1] if claim is not None and claim[0] == session.id else None

        def change(current: ParkedSession | None) -> ParkedSession | None:
            if fenced_by is not None and (
                current is None or current.state != "resuming" or current.lease_owner != fenced_by
            ):
                return None  # this resume lost its claim: the record is someone else's now
            resuming = current is not None and current.state == "resuming"
            # A record that is still parked or resuming is this same live session: its history
            # goes on. A finished one (resumed, failed, dropped) belonged to an earlier run
            # that reused the id: the new record starts afresh.
            live = current is not None and current.state in ("parked", "resuming")
            attempts = current.attempts + 1 if resuming and current is not None else 0
            record = ParkedSession(
                session_id=session.id,
                parent_id=session.parent.id if session.parent is not None else session.parent_id,
                budget_key=session.budget_key,
                framework=session.framework,
                resumer=session.resumer,
                request=request,
                dialect=dialect,
                iterations=session.state.iterations,
                spent_usd=session.state.spent_usd,
                session_state=session.state.model_dump(mode="json"),
                metadata=_jsonable(
                    {**session.metadata, "root_session_id": session.root_id}
                    if session.root_id != session.id
                    else session.metadata
                ),
                reason=reason,
                attempts=attempts,
                resume_at=resume_at,
                history=list(current.history) if live and current is not None else [],
                parked_at=current.parked_at
                if resuming and current is not None
                else datetime.now(UTC),
            )
            if failed:
                record.resume_at = None
                record.transition("failed", f"{reason.kind}: {reason.message}")
            elif attempts >= max_attempts:
                record.resume_at = None
                record.transition(
                    "failed",
                    f"gave up after {attempts} resume attempts (parking.max_attempts="
                    f"{max_attempts}); last: {reason.kind}: {reason.message}",
                )
            else:
                record.transition(
                    "parked",
                    f"{reason.kind} ({reason.reset_source}); "
                    + ("re-parked" if resuming else "parked")
                    + f", resumes at {resume_at.isoformat(timespec='seconds') if resume_at else 'never'}",
                )
            return record

        try:
            written = self.store.update(session.id, change)
        except ValidationError as exc:
            raise _invalid_record(session.id, exc) from None
        if written is None:
            logger.warning("park_fenced", session_id=session.id, reason=reason.kind)
            return self.store.get(session.id)
        record = written
        event = "fail" if record.state == "failed" else ("re-park" if record.attempts else "park")
        logger.info(
            event,
            session_id=record.session_id,
            budget_key=record.budget_key,
            reason=reason.kind,
            status=reason.status,
            resume_at=record.resume_at,
            reset_source=reason.reset_source,
            attempts=record.attempts,
        )
        return record

    @staticmethod
    def parked_error(record: ParkedSession) -> SessionParked:
        if record.state == "failed":
            message = (
                f"session {record.session_id!r} hit {record.reason.kind} and will not resume: "
                f"{record.history[-1].note if record.history else record.reason.message}"
            )
        elif record.state != "parked" or record.resume_at is None:
            message = (
                f"session {record.session_id!r} hit {record.reason.kind} while its resume had "
                f"lost its claim; the record is {record.state} and was left as it is"
            )
        else:
            message = (
                f"session {record.session_id!r} parked ({record.reason.kind}: "
                f"{record.reason.message[:200]}); resumes at "
                f"{record.resume_at.isoformat(timespec='seconds')} (from {record.reason.reset_source})"
            )
        return SessionParked(
            message,
            session_id=record.session_id,
            resume_at=record.resume_at,
            reason=record.reason.kind,
        )


def _invalid_record(session_id: str, exc: ValidationError) -> AgentGuardError:
    """The error for a record that failed validation, naming the fields at fault without
    quoting their values (which may hold anything the caller put in the request)."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'record'}: {redact_text(error['msg'])}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )
    return AgentGuardError(f"cannot park session {session_id!r}: invalid record: {problems}")


def _jsonable(value: Mapping[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(dict(value), default=str))
