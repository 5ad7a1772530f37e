"""The built-in ``openclaw`` resumer: a resume ticket in the outbox, the plugin's answer in acks/,
and the ``agentguard proxy`` sessions the plugin's record names resumed with the OpenClaw session.
The plugin's side is played by a thread that answers the ticket as the plugin does."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from helpers import wait_for

from agentguard.guard import Guard
from agentguard.parking.openclaw import OpenClawResumer, write_private_json
from agentguard.parking.record import ParkedSession

PROXY_SESSIONS = ["proxy-07e992d1d1dc92a0269d5f26", "proxy-8a57d49fb488e4176aed67e0"]


def _record(session_id: str, **fields: object) -> ParkedSession:
    data: dict[str, object] = {
        "schema_version": 1,
        "session_id": session_id,
        "budget_key": "openclaw",
        "request": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Go on."}]},
        "reason": {"kind": "local_budget", "message": "budget 'openclaw' exceeded"},
        "state": "parked",
        "resume_at": "2026-01-01T00:00:00Z",
        **fields,
    }
    return ParkedSession.model_validate(data)


def _answer_tickets(directory: Path, status: str, stop: threading.Event) -> None:
    """Play the plugin: answer each ticket in the outbox with ``status``."""
    outbox, acks = directory / "outbox", directory / "acks"
    while not stop.is_set():
        for ticket_path in list(outbox.glob("*.json")) if outbox.is_dir() else []:
            ticket = json.loads(ticket_path.read_text(encoding="utf-8"))
            ticket_path.unlink()
            answer = {"ticket_id": ticket["ticket_id"], "status": status, "message": "done"}
            write_private_json(acks / f"{ticket['ticket_id']}.json", answer)
        stop.wait(0.02)


def test_a_resumed_openclaw_session_resumes_the_proxy_sessions_its_record_names(
    tmp_path: Path, make_guard: Callable[..., Guard]
) -> None:
    directory = tmp_path / "parked"
    guard = make_guard(parking={"dir": str(directory)}, budgets=[{"key": "openclaw"}])
    store = guard.parker.store
    for session_id in [*PROXY_SESSIONS, "proxy-0000000000000000000000ff"]:
        store.put(_record(session_id, framework="proxy", resumer="proxy"))
    openclaw = _record(
        "agent:main:main",
        framework="openclaw",
        resumer="openclaw",
        metadata={
            "session_key": "agent:main:main",
            "message": "Go on.",
            # A name that is no proxy session of this store changes nothing.
            "proxy_sessions": [*PROXY_SESSIONS, "agent:main:main", 7],
        },
    )
    store.put(openclaw)
    stop = threading.Event()
    plugin = threading.Thread(target=_answer_tickets, args=(directory, "resumed", stop))
    plugin.start()
    try:
        result = OpenClawResumer(guard, ack_timeout_s=60, poll_s=0.02)(openclaw)
    finally:
        stop.set()
        plugin.join()
    assert result["status"] == "resumed"
    for session_id in PROXY_SESSIONS:
        record = guard.parked.get(session_id)
        assert record.state == "resumed" and record.resume_at is None
        assert "resumed with OpenClaw session agent:main:main" in record.history[-1].note
    # A proxy session the record does not name stays parked for its own client.
    assert guard.parked.get("proxy-0000000000000000000000ff").state == "parked"
    assert guard.parked.get("agent:main:main").state == "parked"  # the daemon marks this one
    wait_for(lambda: not list((directory / "acks").glob("*.json")), timeout=30)
