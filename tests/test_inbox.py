"""The inbox: records from other processes are validated and ingested; bad and hostile files
are quarantined with a reason, never crash the watcher, never lose the others."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
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
    guard = make_guard(
        parking={"dir": str(tmp_path / "parked"), "inbox_max_bytes": 4096},
        budgets=[{"key": "openclaw", "limit_usd": 1}],
    )
    return guard, inbox_of(guard, tmp_path / "parked")


def inbox_of(guard: Guard, directory: Path, **options: Any) -> Inbox:
    """An inbox that judges files at once unless ``settle_s`` says otherwise."""
    return Inbox(
        directory,
        ingest=guard.parked.import_record,
        ingest_many=guard.parked.import_records,
        known_resumers=lambda: set(guard.resumers),
        max_bytes=4096,
        **{"settle_s": 0.0, "check": guard.parked.problem_with, **options},
    )


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
    "free-money.json": (
        json.dumps(record_data("m-1", budget_key="free-money")).encode(),
        "budget key 'free-money' is not configured",
    ),
    "negative-attempts.json": (json.dumps(record_data("n-1", attempts=-5)).encode(), "attempts"),
    "negative-iterations.json": (
        json.dumps(record_data("n-2", iterations=-1000000)).encode(),
        "iterations",
    ),
    "negative-state.json": (
        json.dumps(record_data("n-3", session_state={"iterations": -1000000})).encode(),
        "negative counter: session_state.iterations",
    ),
    "squatter.json": (
        json.dumps(
            record_data("sq-1", state="resuming", lease_until="2099-01-01T00:00:00Z")
        ).encode(),
        "must be 'parked'",
    ),
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


def test_fifos_and_directories_are_quarantined_without_blocking(
    setup: tuple[Guard, Inbox],
) -> None:
    guard, inbox = setup
    os.mkfifo(inbox.inbox / "pipe.json")  # nobody writes: a blocking open would hang
    (inbox.inbox / "folder.json").mkdir()
    drop(inbox, "good.json", json.dumps(record_data("good-2")).encode())
    reasons = {r.path.name.split("-", 1)[-1]: r.reason for r in inbox.scan()}
    assert "FIFO" in reasons["pipe.json"] and "directory" in reasons["folder.json"]
    assert [r.session_id for r in guard.parked.list()] == ["good-2"]


def test_a_file_flipping_between_file_and_fifo_never_wedges_the_watcher(
    setup: tuple[Guard, Inbox],
) -> None:
    guard, inbox = setup
    inbox.rescan_s = 0.2
    inbox.start()
    try:
        for round_number in range(20):
            path = inbox.inbox / f"flip-{round_number}.json"
            path.write_bytes(b"{")
            path.unlink(missing_ok=True)  # the watcher may have quarantined it already
            os.mkfifo(path)
        write_record(inbox.directory, ParkedSession.model_validate(record_data("after-flip")))
        wait_for(
            lambda: (
                guard.parked.store.find("after-flip") is not None
                and not list(inbox.inbox.glob("flip-*"))
            )  # every FIFO was quarantined
        )
    finally:
        inbox.stop()
    # Every FIFO ended in quarantine beside a reason; none wedged the watcher or was lost. (A
    # FIFO put in place in the microseconds between the judgement of the file it replaced and
    # that file's move is quarantined under the first file's reason.)
    fifos = [
        p for p in inbox.quarantine_dir.glob("*flip-*.json") if stat.S_ISFIFO(p.lstat().st_mode)
    ]
    assert len(fifos) == 20
    assert all(p.with_name(p.name + ".reason").exists() for p in fifos)
    reasons = [p.read_text() for p in inbox.quarantine_dir.glob("*flip-*.json.reason")]
    assert sum("FIFO" in reason for reason in reasons) >= 1


def test_a_record_written_in_two_parts_is_ingested(
    setup: tuple[Guard, Inbox], tmp_path: Path
) -> None:
    guard, _ = setup
    inbox = inbox_of(guard, tmp_path / "parked", settle_s=1.5, rescan_s=0.1)
    text = json.dumps(record_data("halves")).encode()
    path = inbox.inbox / "halves.json"
    inbox.start()
    try:
        with path.open("wb") as handle:
            handle.write(text[:40])
            handle.flush()
            time.sleep(0.5)  # the watcher looks several times at the first half
            handle.write(text[40:])
        wait_for(lambda: guard.parked.store.find("halves") is not None)
    finally:
        inbox.stop()
    assert not list(inbox.quarantine_dir.iterdir())


def test_thousands_of_files_at_once_are_all_ingested(
    setup: tuple[Guard, Inbox], tmp_path: Path
) -> None:
    guard, _ = setup
    inbox = inbox_of(guard, tmp_path / "parked", settle_s=1.0, rescan_s=0.5)
    inbox.start()
    try:
        for number in range(4000):  # far more events than the watcher's queue holds at once
            (inbox.inbox / f"many-{number}.json").write_bytes(
                json.dumps(record_data(f"many-{number}")).encode()
            )
        wait_for(lambda: not list(inbox.inbox.iterdir()), timeout=60)
    finally:
        inbox.stop()
    assert len(guard.parked.list()) == 4000
    assert not list(inbox.quarantine_dir.iterdir())


def test_a_busy_store_leaves_the_file_for_the_next_look(
    tmp_path: Path, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(
        store={"url": f"sqlite:///{tmp_path / 'store.db'}", "busy_timeout_s": 0.2},
        budgets=[{"key": "openclaw", "limit_usd": 1}],
    )
    guard.parked.list()  # the schema exists
    inbox = inbox_of(guard, tmp_path / "parked")
    for name in ("while-busy", "also-busy"):
        drop(inbox, f"{name}.json", json.dumps(record_data(name)).encode())
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        results = inbox.scan()
        assert [r.status for r in results] == ["pending", "pending"]
        assert all("store" in r.reason for r in results)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert [r.status for r in inbox.scan()] == ["ingested", "ingested"]
    assert {r.session_id: r.state for r in guard.parked.list()} == {
        "while-busy": "parked",
        "also-busy": "parked",
    }


def test_a_file_replaced_while_it_is_judged_is_neither_quarantined_nor_removed(
    setup: tuple[Guard, Inbox],
) -> None:
    guard, inbox = setup
    path = inbox.inbox / "swap.json"

    def replace_then_refuse(record: ParkedSession) -> str | None:
        if record.session_id == "old":
            # A writer puts a new, valid record under the same name between the read and the
            # verdict on the old one.
            fresh = inbox.inbox / ".swap.tmp"
            fresh.write_text(json.dumps(record_data("new")))
            os.replace(fresh, path)
            return "refused for the test"
        return guard.parked.problem_with(record)

    judged = inbox_of(guard, inbox.directory, check=replace_then_refuse)
    path.write_text(json.dumps(record_data("old")))
    first = judged.process(path)
    assert (first.status, first.reason) == ("pending", "replaced while it was read")
    assert not list(judged.quarantine_dir.glob("*swap*"))
    second = judged.process(path)  # the next look judges the new file on its own
    assert second.status == "ingested"
    assert guard.parked.get("new").state == "parked"
    assert not path.exists()
