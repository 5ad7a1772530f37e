"""The inbox: records from other processes are validated and ingested; bad and hostile files
are quarantined with a reason, never crash the watcher, never lose the others."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentguard.guard import Guard
from agentguard.parking.inbox import Inbox, write_record
from agentguard.parking.record import ParkedSession


def record_data(session_id: str = "oc-1", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": 1,
        "session_id": session_id,
        "framework": "openclaw",
        "resumer": "replay",
        "budget_key": "openclaw",
        "request": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        "metadata": {"session_key": "agent:main:main"},
        "reason": {"kind": "budget_window", "status": 429, "message": "429 Budget exceeded"},
        "state": "parked",
        "resume_at": "2030-01-01T00:00:00Z",
    }
    data.update(changes)
    return data


@pytest.fixture
def setup(tmp_path: Path, make_guard: Callable[..., Guard]) -> tuple[Guard, Inbox]:
    guard = make_guard(parking={"dir": str(tmp_path / "parked"), "inbox_max_bytes": 4096})
    inbox = Inbox(
        tmp_path / "parked",
        ingest=guard.parked.import_record,
        known_resumers=lambda: set(guard.resumers),
        max_bytes=4096,
    )
    return guard, inbox


def drop(inbox: Inbox, name: str, content: bytes) -> Path:
    path = inbox.inbox / name
    path.write_bytes(content)
    return path


def test_a_valid_record_is_ingested_and_removed(setup: tuple[Guard, Inbox]) -> None:
    guard, inbox = setup
    path = drop(inbox, "oc-1.json", json.dumps(record_data()).encode())
    (result,) = inbox.scan()
    assert result.status == "ingested"
    assert not path.exists()
    record = guard.parked.get("oc-1")
    assert record.framework == "openclaw" and record.metadata["session_key"] == "agent:main:main"
    assert record.history[-1].note == "imported"


def test_directories_are_private(setup: tuple[Guard, Inbox]) -> None:
    _, inbox = setup
    assert stat.S_IMODE(inbox.inbox.stat().st_mode) == 0o700
    assert stat.S_IMODE(inbox.quarantine_dir.stat().st_mode) == 0o700


BAD_FILES = {
    "truncated.json": (json.dumps(record_data("t-1"))[:60].encode(), "not valid JSON"),
    "latin1.json": (b'{"session_id": "caf\xe9"}', "not UTF-8"),
    "huge.json": (b"{" + b" " * 5000 + b"}", "over the inbox limit"),
    "future.json": (json.dumps(record_data("f-1", schema_version=7)).encode(), "schema_version 7"),
    "traversal.json": (json.dumps(record_data("../../etc/passwd")).encode(), "session_id"),
    "resumer.json": (
        json.dumps(record_data("r-1", resumer="evil")).encode(),
        "names resumer 'evil'",
    ),
    "import-path.json": (
        json.dumps(record_data("r-2", resumer="os:system")).encode(),
        "never import paths",
    ),
    "array.json": (b"[1, 2, 3]", "JSON list"),
}


def test_a_record_carrying_credentials_is_ingested_without_them(
    setup: tuple[Guard, Inbox], tmp_path: Path
) -> None:
    guard, inbox = setup
    key = "sk-leak-" + "x" * 24
    request = {"model": "x", "api_key": key, "metadata": {"auth_token": key}, "messages": []}
    drop(inbox, "keys.json", json.dumps(record_data("k-1", request=request)).encode())
    (result,) = inbox.scan()
    assert result.status == "ingested"
    assert guard.parked.get("k-1").request == {"model": "x", "metadata": {}, "messages": []}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_quarantined_with_a_reason(setup: tuple[Guard, Inbox], name: str) -> None:
    guard, inbox = setup
    content, expected = BAD_FILES[name]
    drop(inbox, name, content)
    drop(inbox, "good.json", json.dumps(record_data("good-1")).encode())
    results = {
        r.path.name.split("-", 1)[-1] if r.status == "quarantined" else r.path.name: r
        for r in inbox.scan()
    }
    assert results["good.json"].status == "ingested"  # the others are still ingested
    bad = next(r for r in results.values() if r.status == "quarantined")
    assert expected in bad.reason
    assert not (inbox.inbox / name).exists()
    moved = list(inbox.quarantine_dir.glob(f"*-{name}"))
    assert len(moved) == 1 and moved[0].read_bytes() == content  # kept, not deleted
    reason_file = moved[0].with_name(moved[0].name + ".reason")
    assert expected in reason_file.read_text()
    assert stat.S_IMODE(reason_file.stat().st_mode) == 0o600
    assert [r.session_id for r in guard.parked.list()] == ["good-1"]


def test_symlinks_are_quarantined(setup: tuple[Guard, Inbox], tmp_path: Path) -> None:
    _, inbox = setup
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    os.symlink(secret, inbox.inbox / "link.json")
    (result,) = inbox.scan()
    assert result.status == "quarantined" and "symbolic link" in result.reason
    assert secret.read_text() == "secret"


def test_the_watcher_ingests_files_as_they_arrive(setup: tuple[Guard, Inbox]) -> None:
    guard, inbox = setup
    inbox.start()
    try:
        write_record(inbox.directory, ParkedSession.model_validate(record_data("live-1")))
        drop(inbox, "broken.json", b"{not json")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if guard.parked.store.find("live-1") and list(
                inbox.quarantine_dir.glob("*broken.json")
            ):
                break
            time.sleep(0.05)
    finally:
        inbox.stop()
    assert guard.parked.get("live-1").state == "parked"
    assert list(inbox.quarantine_dir.glob("*broken.json.reason"))


def test_a_record_being_resumed_is_not_overwritten(setup: tuple[Guard, Inbox]) -> None:
    guard, inbox = setup
    guard.parked.import_record(
        ParkedSession.model_validate(record_data("busy-1", resume_at="2000-01-01T00:00:00Z"))
    )
    assert guard.parked.store.claim("busy-1", "me", lease_s=60) is not None
    drop(inbox, "busy-1.json", json.dumps(record_data("busy-1")).encode())
    inbox.scan()
    assert guard.parked.get("busy-1").state == "resuming"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.one_of(st.binary(max_size=600), st.text(max_size=600).map(str.encode)))
def test_fuzzed_inbox_files_never_crash_and_are_never_lost(
    setup: tuple[Guard, Inbox], content: bytes
) -> None:
    _, inbox = setup
    path = drop(inbox, "fuzz.json", content)
    result = inbox.process(path)
    assert result.status in {"ingested", "quarantined"}
    if result.status == "quarantined":
        assert result.path.read_bytes() == content
