"""The application and the daemon as two processes on one store, as a user runs them: what the
daemon ingests and resumes is committed at once and visible to every other connection, even
if the daemon is killed (SIGKILL) right after it says so."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import wait_for

from agentguard import SessionParked
from agentguard.sim import SimServer

APP = textwrap.dedent(
    """
    import os, openai
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard

    guard = Guard(GuardConfig.load(os.environ["AGENTGUARD_TEST_APP_CONFIG"]))
    client = guard.wrap(
        openai.OpenAI(base_url=os.environ["AGENTGUARD_TEST_APP_BASE_URL"], api_key="sk-app")
    )

    @guard.resumer("resend")
    def resend(parked):
        return client.chat.completions.create(**parked.request)
    """
)
LONG_PROMPT = [{"role": "user", "content": "quarterly figures " * 500}]


def fresh_state(url: str, session_id: str) -> str | None:
    """The record's state through a brand-new connection (no pool, no cache)."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.split("///", 1)[1])
        try:
            row = connection.execute(
                "SELECT state FROM agentguard_parked_sessions WHERE session_id = ?",
                (session_id,),
            ).fetchone()
        finally:
            connection.close()
    else:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                row = connection.execute(
                    sa.text("SELECT state FROM agentguard_parked_sessions WHERE session_id = :id"),
                    {"id": session_id},
                ).first()
        finally:
            engine.dispose()
    return None if row is None else str(row[0])


class Daemon:
    """``agentguard daemon --app app:guard`` as a child process, its JSON lines read as they come."""

    def __init__(self, workdir: Path, config: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": f"{workdir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentguard.cli",
                "daemon",
                "--config",
                str(config),
                "--app",
                "app:guard",
                "--poll",
                "0.2",
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.seen.append(line.rstrip())
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def wait_event(self, event: str, session_id: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if seen.get("event") == event and seen.get("session_id") == session_id:
                return
        raise AssertionError(f"the daemon never logged {event} of {session_id}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def app(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with SimServer() as sim:
        config = tmp_path / "agentguard.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [store]
                url = "{store_url}"
                [[budgets]]
                key = "tiny"
                limit_usd = 0.01
                window = "3s"
                on_exhausted = "park"
                [parking]
                wait_inline_max_s = 0
                max_attempts = 3
                # A resume that fails for a passing reason (a busy store) is retried within
                # seconds, not the default minutes: this test is about what is ingested.
                window_hours = 0.002
                dir = "{tmp_path / "parked"}"
                inbox_settle_s = 0.3
                """
            )
        )
        (tmp_path / "app.py").write_text(APP)
        monkeypatch.setenv("AGENTGUARD_TEST_APP_CONFIG", str(config))
        monkeypatch.setenv("AGENTGUARD_TEST_APP_BASE_URL", sim.base_url)
        spec = importlib.util.spec_from_file_location(f"app_{tmp_path.name}", tmp_path / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.sim = sim
        module.config_path = config
        yield module
        module.guard.close()


def test_what_the_daemon_ingests_is_durable_and_visible_at_once(
    app: Any, store_url: str, tmp_path: Path
) -> None:
    guard, client = app.guard, app.client
    # The app makes budgeted calls until the budget parks it, and parks another on a 429.
    with guard.session("spent", budget_key="tiny", resumer="resend"), pytest.raises(SessionParked):
        for _ in range(40):
            client.chat.completions.create(model="gpt-4o", messages=LONG_PROMPT, max_tokens=50)
    app.sim.rate_limit_next(1, retry_after=1)
    with (
        guard.session("limited", budget_key="tiny", resumer="resend"),
        pytest.raises(SessionParked),
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=LONG_PROMPT, max_tokens=5)
    daemon = Daemon(tmp_path, app.config_path)
    try:
        wait_for(
            lambda: {r.state for r in guard.parked.list()} == {"resumed"},
            describe=lambda: (
                [
                    (r.session_id, r.state, r.attempts, [(h.state, h.note) for h in r.history])
                    for r in guard.parked.list()
                ]
                + daemon.seen[-30:]
            ),
        )
        exported = json.loads(guard.parked.get("spent").model_dump_json())
        for number in (1, 2):
            exported.update(
                session_id=f"copy-{number}",
                state="parked",
                lease_owner=None,
                lease_until=None,
                resume_at=None,
                history=[],
            )
            # Written in place, as a careless writer does.
            (tmp_path / "parked" / "inbox" / f"copy-{number}.json").write_text(json.dumps(exported))
            daemon.wait_event("ingest", f"copy-{number}")
            if number == 2:
                os.kill(daemon.process.pid, signal.SIGKILL)  # right after it said so
                daemon.process.wait(timeout=30)
            # A brand-new connection, and the long-running app, both see it.
            assert wait_for(lambda n=number: fresh_state(store_url, f"copy-{n}"))
            assert wait_for(
                lambda n=number: any(r.session_id == f"copy-{n}" for r in guard.parked.list())
            )
            if number == 1:
                daemon.wait_event("resume", "copy-1")
                assert wait_for(lambda: fresh_state(store_url, "copy-1") == "resumed")
                assert guard.parked.get("copy-1").state == "resumed"
        assert not list((tmp_path / "parked" / "inbox").glob("*.json"))
    finally:
        daemon.stop()
