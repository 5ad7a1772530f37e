"""The inbox: parked records dropped as JSON files by other processes and languages.

Writers should write ``<name>.json.tmp`` and rename it to ``<name>.json`` (a rename is atomic);
files still being written are retried when they change. Each file is validated against the
schema and ingested into the store, then removed. A file that is too large, truncated, not
UTF-8, of another schema version, hostile (a session id that is a path) or names a resumer the
application has not registered is moved to ``quarantine/`` with a ``.reason`` file beside it:
never deleted, never able to crash the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agentguard import files
from agentguard.errors import StoreError
from agentguard.log import logger
from agentguard.parking.record import SCHEMA_VERSION, ParkedSession

__all__ = ["Inbox", "InboxResult", "private_dir"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as a 0700 directory; tighten it if it exists."""
    files.private_dir(path)
    with contextlib.suppress(OSError):
        path.chmod(0o700)
    return path


class InboxResult:
    """What became of one file."""

    __slots__ = ("path", "reason", "record", "status")

    def __init__(
        self, path: Path, status: str, *, reason: str = "", record: ParkedSession | None = None
    ) -> None:
        self.path = path
        self.status = status
        """``ingested``, ``quarantined``, ``pending`` (looked at again later) or ``skipped``."""
        self.reason = reason
        self.record = record

    def __repr__(self) -> str:
        return f"InboxResult({self.path.name!r}, {self.status!r}, {self.reason!r})"


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
_BATCH = 200  # records stored per transaction by a look at a full inbox
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class Inbox:
    """Ingests parked records from ``directory/inbox`` into the store.

    A file is opened without following links and without blocking (``O_NOFOLLOW |
    O_NONBLOCK``) and checked on the open descriptor: only a regular file is read. A file
    that does not parse yet and changed within ``settle_s`` is still being written: it is left
    for the next look, never quarantined. A store error leaves the file for the next look
    too. The watcher looks at the whole inbox on every filesystem event, ``settle_s`` after a
    file that was still being written, and every ``rescan_s`` whatever happens (an event queue
    that overflowed loses nothing).

    Args:
        directory: the parking directory (``inbox/`` and ``quarantine/`` live inside).
        ingest: stores a validated record.
        ingest_many: stores several in one transaction (a look at a full inbox uses it).
        known_resumers: the names of the resumers registered in this application.
        max_bytes: files larger than this are quarantined unread.
        check: returns why a valid record must not be ingested (an unconfigured budget
            key...), or ``None``.
        settle_s: how long a file must be unchanged before it can be judged truncated.
        rescan_s: the longest time between two looks at the whole inbox.
    """

    def __init__(
        self,
        directory: Path,
        *,
        ingest: Callable[[ParkedSession], Any],
        known_resumers: Callable[[], set[str]],
        max_bytes: int = 8 * 1024 * 1024,
        check: Callable[[ParkedSession], str | None] | None = None,
        settle_s: float = 1.0,
        rescan_s: float = 5.0,
        ingest_many: Callable[[list[ParkedSession]], Any] | None = None,
    ) -> None:
        self.directory = directory
        self.inbox = private_dir(directory / "inbox")
        self.quarantine_dir = private_dir(directory / "quarantine")
        self.ingest = ingest
        self.known_resumers = known_resumers
        self.max_bytes = max_bytes
        self.check = check
        self.ingest_many = ingest_many
        self.settle_s = settle_s
        self.rescan_s = rescan_s
        self._lock = threading.Lock()
        # The file each name held when it was read: a name replaced since then (a writer put a
        # new file there, which may even reuse the inode) is neither quarantined nor removed,
        # but looked at again.
        self._identity: dict[Path, tuple[int, ...]] = {}
        self._observer: Any = None
        self._worker: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()

    # -- one file ----------------------------------------------------------------------------------

    def process(self, path: Path) -> InboxResult:
        """Validate and ingest one file (or quarantine it, or leave it ``pending`` for the next
        look). Never raises for bad input."""
        with self._lock:
            result = self._judge(path)
            return self._ingest([result])[0] if result.status == "valid" else result

    def _judge(self, path: Path) -> InboxResult:
        try:
            result = self._process(path)
        except Exception as exc:  # the daemon must survive anything a file can do
            result = self._quarantine(path, f"could not be processed: {type(exc).__name__}: {exc}")
        if result.status != "valid":
            self._identity.pop(path, None)
        return result

    def _replaced(self, path: Path) -> bool:
        """Whether ``path`` now names another file than the one read from it."""
        read = self._identity.get(path)
        if read is None:
            return False
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            return False
        return _identity_of(now) != read

    def _ingest(self, valid: list[InboxResult]) -> list[InboxResult]:
        """Store valid records (in one transaction when it can), then remove their files."""
        if not valid:
            return []
        records = [result.record for result in valid if result.record is not None]
        try:
            if self.ingest_many is not None and len(records) > 1:
                self.ingest_many(records)
            else:
                for record in records:
                    self.ingest(record)
        except Exception as exc:
            if len(valid) > 1:  # find out which, one by one
                return [result for one in valid for result in self._ingest([one])]
            if not isinstance(exc, StoreError):
                return [self._quarantine(valid[0].path, f"could not be stored: {exc}")]
            # The store's trouble, not the file's: keep it for the next look.
            logger.warning("ingest_retry", file=valid[0].path.name, error=str(exc))
            return [InboxResult(valid[0].path, "pending", reason=f"store error: {exc}")]
        for result in valid:
            if not self._replaced(result.path):
                result.path.unlink(missing_ok=True)
            self._identity.pop(result.path, None)
            result.status = "ingested"
            assert result.record is not None
            logger.info(
                "ingest",
                session_id=result.record.session_id,
                file=result.path.name,
                resumer=result.record.resumer,
            )
        return valid

    def _process(self, path: Path) -> InboxResult:
        if path.parent != self.inbox and path.parent.resolve() != self.inbox.resolve():
            return InboxResult(path, "skipped", reason="not an inbox file")
        if path.name.startswith("."):
            return InboxResult(path, "skipped", reason="not an inbox file")
        if not path.name.endswith(".json"):
            return InboxResult(path, "skipped", reason="not a .json file (yet)")
        read = self._read(path)
        if isinstance(read, InboxResult):
            return read
        raw, young = read
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if young:
                return InboxResult(path, "pending", reason="still being written")
            return self._quarantine(path, f"is not UTF-8 text (byte {exc.start}: {exc.reason})")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if young:
                return InboxResult(path, "pending", reason="still being written")
            return self._quarantine(
                path,
                f"is not valid JSON (truncated?): {exc.msg} at line {exc.lineno} column {exc.colno}",
            )
        if not isinstance(data, dict):
            return self._quarantine(path, f"holds a JSON {type(data).__name__}, not an object")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            return self._quarantine(
                path,
                f"has schema_version {version!r}; this agentguard reads version {SCHEMA_VERSION}"
                " (upgrade agentguard to ingest it)",
            )
        try:
            record = ParkedSession.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or '(top level)'}: {error['msg']}"
                for error in exc.errors(include_url=False)[:8]
            )
            return self._quarantine(path, f"does not match the parked-session schema: {problems}")
        if record.state != "parked":
            return self._quarantine(
                path, f"has state {record.state!r}; a record from the inbox must be 'parked'"
            )
        known = self.known_resumers()
        if record.resumer not in known:
            return self._quarantine(
                path,
                f"names resumer {record.resumer!r}, which this application has not registered "
                f"(registered: {sorted(known)})",
            )
        problem = self.check(record) if self.check is not None else None
        if problem:
            return self._quarantine(path, problem)
        # A claim is the store's to give: nothing from a file may hold one.
        record.lease_owner = None
        record.lease_until = None
        record.resume_id = None
        return InboxResult(path, "valid", record=record)

    def _read(self, path: Path) -> tuple[bytes, bool] | InboxResult:
        """The bytes of a regular file, and whether it changed within ``settle_s``; or the
        result for anything else (gone, a link, a FIFO, still changing)."""
        try:
            descriptor = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return InboxResult(path, "skipped", reason="gone")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return self._quarantine(path, "is a symbolic link, not a file")
            return self._quarantine(path, f"cannot be opened: {exc.strerror}")
        try:
            before = os.fstat(descriptor)
            self._identity[path] = _identity_of(before)
            for is_kind, kind in _KINDS:
                if is_kind(before.st_mode):
                    return self._quarantine(path, f"is {kind}, not a regular file")
            if not stat.S_ISREG(before.st_mode):
                return self._quarantine(path, "is not a regular file")
            if before.st_size > self.max_bytes:
                return self._quarantine(
                    path,
                    f"is {before.st_size} bytes, over the inbox limit of {self.max_bytes}"
                    " (parking.inbox_max_bytes)",
                )
            chunks = []
            remaining = self.max_bytes + 1
            while remaining > 0:
                chunk = os.read(descriptor, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            after = os.fstat(descriptor)
        finally:
            os.close(descriptor)
        raw = b"".join(chunks)
        if len(raw) > self.max_bytes:
            return self._quarantine(
                path,
                f"grew over the inbox limit of {self.max_bytes} bytes (parking.inbox_max_bytes)",
            )
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(
            raw
        ) != after.st_size:
            return InboxResult(path, "pending", reason="still being written")
        young = time.time_ns() - after.st_mtime_ns < self.settle_s * 1e9
        return raw, young

    def _quarantine(self, path: Path, reason: str) -> InboxResult:
        if self._replaced(path):
            return InboxResult(path, "pending", reason="replaced while it was read")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        safe = _SAFE_NAME.sub("_", path.name)[:150] or "file"
        target = self.quarantine_dir / f"{stamp}-{safe}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return InboxResult(path, "skipped", reason="gone before it could be quarantined")
        reason_path = target.with_name(target.name + ".reason")
        descriptor = os.open(
            reason_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600
        )
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(f"{path.name}: {reason}\n")
        logger.warning("quarantine", file=path.name, moved_to=target.name, reason=reason)
        return InboxResult(target, "quarantined", reason=reason)

    # -- all files, and watching -------------------------------------------------------------------

    def scan(self) -> list[InboxResult]:
        """Process every ``.json`` entry of the inbox now (files still being written are
        ``pending``); valid records are stored in batches."""
        with os.scandir(self.inbox) as entries:
            names = sorted(
                entry.name
                for entry in entries
                if entry.name.endswith(".json") and not entry.name.startswith(".")
            )
        results: list[InboxResult] = []
        valid: list[InboxResult] = []
        with self._lock:
            for name in names:
                result = self._judge(self.inbox / name)
                if result.status != "valid":
                    results.append(result)
                    continue
                valid.append(result)
                if len(valid) >= _BATCH:
                    results += self._ingest(valid)
                    valid = []
            results += self._ingest(valid)
        return results

    def start(self) -> None:
        """Watch the inbox (watchdog events, and a look every ``rescan_s``) in a background
        thread, processing files as they arrive."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self._wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                wake.set()  # the worker looks at the whole inbox: no event is needed twice

        self._stopping.clear()
        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.inbox), recursive=False)
        self._observer.daemon = True
        self._observer.start()
        self._worker = threading.Thread(target=self._watch, name="agentguard-inbox", daemon=True)
        self._worker.start()

    def _watch(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                results = self.scan()
            except OSError as exc:  # the inbox itself vanished or is unreadable: try again
                logger.warning("inbox_scan_failed", error=str(exc))
                results = []
            pending = any(result.status == "pending" for result in results)
            self._wake.wait(
                min(self.rescan_s, max(0.05, self.settle_s / 2)) if pending else self.rescan_s
            )

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None


def write_record(directory: Path, record: ParkedSession) -> Path:
    """Drop a record into ``directory/inbox`` the safe way (0600, write then rename)."""
    inbox = private_dir(directory / "inbox")
    final = inbox / f"{record.session_id}.json"
    temporary = inbox / f".{record.session_id}.json.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(record.model_dump_json(indent=2))
    os.replace(temporary, final)
    return final


def _identity_of(status: os.stat_result) -> tuple[int, ...]:
    """What tells one file from another that took its name (and perhaps its inode number)."""
    return (status.st_dev, status.st_ino, stat.S_IFMT(status.st_mode), status.st_ctime_ns)
