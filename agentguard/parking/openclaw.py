"""The built-in ``openclaw`` resumer: hands a due session back to the OpenClaw plugin.

OpenClaw runs its agents in its own gateway, so agentguard cannot replay their calls itself.
The plugin parks a failed run by dropping a record in ``parking.dir/inbox``; when the record is
due, this resumer writes a resume ticket to ``parking.dir/outbox/<ticket>.json`` and waits for
the plugin's answer in ``parking.dir/acks/<ticket>.json``:

- ``resumed``: the same OpenClaw session continued and finished; the record is ``resumed``,
  and so are the sessions ``agentguard proxy`` refused in the run that parked it (the plugin
  names them in ``metadata.proxy_sessions``): OpenClaw's model calls through the proxy are
  parked there too, and they go on with this session.
- ``rate_limited``: the continued run hit a limit again; the record is parked again with
  ``attempts + 1`` (``failed`` past ``parking.max_attempts``).
- ``error``: something else went wrong; the resume is retried later, within the attempt cap.

Files are written 0600, as ``.tmp`` then renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agentguard.log import logger
from agentguard.parking.inbox import private_dir
from agentguard.parking.record import ParkedSession, ParkReason

if TYPE_CHECKING:
    from agentguard.config import GuardConfig
    from agentguard.parking.handler import Parker

__all__ = ["OpenClawResumer", "write_private_json"]

TICKET_VERSION = 1
MAX_PROXY_SESSIONS = 16
"""Proxy sessions one OpenClaw record may hand on (the plugin keeps as many)."""


def write_private_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to ``path`` atomically, readable by the owner only."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(temporary, path)


class OpenClawHost(Protocol):
    """What the OpenClaw resumer asks of the guard (:class:`~agentguard.Guard` is one)."""

    config: GuardConfig
    parker: Parker


class OpenClawResumer:
    """Resumes OpenClaw sessions through the plugin's outbox and acks.

    Args:
        guard: the guard whose parking directory and parker are used.
        ack_timeout_s: how long to wait for the plugin's answer (default: 90% of the lease).
        poll_s: how often to look for the answer.
    """

    def __init__(
        self, guard: OpenClawHost, *, ack_timeout_s: float | None = None, poll_s: float = 0.2
    ):
        self.guard = guard
        self.ack_timeout_s = ack_timeout_s or guard.config.parking.lease_s * 0.9
        self.poll_s = poll_s

    def __call__(self, parked: ParkedSession) -> dict[str, Any]:
        directory = self.guard.config.parking.resolved_dir()
        outbox = private_dir(directory / "outbox")
        acks = private_dir(directory / "acks")
        ticket_id = f"{parked.session_id}.{parked.attempts}.{secrets.token_hex(4)}"
        ticket = {
            "schema_version": TICKET_VERSION,
            "ticket_id": ticket_id,
            "session_id": parked.session_id,
            "session_key": parked.metadata.get("session_key", parked.session_id),
            "message": parked.metadata.get("message") or _last_user_text(parked),
            "attempt": parked.attempts + 1,
            "written_at": datetime.now(UTC).isoformat(),
        }
        ticket_path = outbox / f"{ticket_id}.json"
        write_private_json(ticket_path, ticket)
        logger.info("openclaw_ticket", session_id=parked.session_id, ticket_id=ticket_id)
        ack_path = acks / f"{ticket_id}.json"
        deadline = time.monotonic() + self.ack_timeout_s
        while not ack_path.exists():
            if time.monotonic() > deadline:
                ticket_path.unlink(missing_ok=True)  # so the plugin does not run it late
                raise TimeoutError(
                    f"the OpenClaw plugin did not answer ticket {ticket_id} within "
                    f"{self.ack_timeout_s:.0f}s (is the gateway running with the agentguard plugin, "
                    f"watching {outbox}?)"
                )
            time.sleep(self.poll_s)
        ack = self._read_ack(ack_path)
        ack_path.unlink(missing_ok=True)
        status = ack.get("status")
        if status == "resumed":
            self._resume_proxy_sessions(parked)
            return {"status": "resumed", "message": str(ack.get("message", ""))[:2000]}
        if status == "rate_limited":
            self._repark(parked, ack)
        raise RuntimeError(f"the OpenClaw plugin reported {status!r}: {ack.get('message', '')}")

    def _resume_proxy_sessions(self, parked: ParkedSession) -> None:
        """Mark resumed the ``agentguard proxy`` sessions the plugin's record names: the proxy
        derives a session from a conversation's opening, which OpenClaw changes between the
        run the proxy refused and the one that resumes it, so the proxy cannot tell by itself."""
        named = parked.metadata.get("proxy_sessions")
        if not isinstance(named, list):
            return
        session_key = parked.metadata.get("session_key", parked.session_id)
        note = f"resumed with OpenClaw session {session_key}"

        def change(current: ParkedSession | None) -> ParkedSession | None:
            if current is None or current.state != "parked" or current.resumer != "proxy":
                return None
            current.resume_at = None
            current.transition("resumed", note)
            return current

        store = self.guard.parker.store
        for session_id in named[:MAX_PROXY_SESSIONS]:
            if not (isinstance(session_id, str) and session_id.startswith("proxy-")):
                continue
            if store.update(session_id, change) is not None:
                logger.info("resume", session_id=session_id, openclaw_session=session_key)

    @staticmethod
    def _read_ack(path: Path) -> dict[str, Any]:
        for _ in range(10):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                time.sleep(0.05)  # a writer that does not rename may still be writing
                continue
            if isinstance(data, dict):
                return data
        return {"status": "error", "message": f"unreadable ack {path.name}"}

    def _repark(self, parked: ParkedSession, ack: dict[str, Any]) -> None:
        from agentguard.session import current_session

        session = current_session()
        assert session is not None and session.id == parked.session_id
        parking = self.guard.config.parking
        resume_at = None
        if ack.get("resume_at"):
            try:
                resume_at = datetime.fromisoformat(str(ack["resume_at"]).replace("Z", "+00:00"))
            except ValueError:
                resume_at = None
        source = "openclaw ack"
        if resume_at is None:
            resume_at = datetime.fromtimestamp(time.time() + parking.window_hours * 3600, UTC)
            source = "parking.window_hours"
        kinds = {"rate_limit": "rate_limit", "budget_window": "budget_window"}
        kind = kinds.get(str(ack.get("kind")), "rate_limit")
        reason = ParkReason(
            kind=kind,  # type: ignore[arg-type]
            status=429,
            message=str(ack.get("message", ""))[:500],
            reset_source=source,
            budget_key=parked.budget_key,
        )
        record = self.guard.parker.park_session(session, parked.request, reason, resume_at)
        session.parked_record = record
        raise self.guard.parker.parked_error(record)


def _last_user_text(parked: ParkedSession) -> str:
    for message in reversed(parked.request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
    return "Continue."
