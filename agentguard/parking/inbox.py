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
import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agentguard import files
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
        """``ingested``, ``quarantined`` or ``skipped``."""
        self.reason = reason
        self.record = record

    def __repr__(self) -> str:
        return f"InboxResult({self.path.name!r}, {self.status!r}, {self.reason!r})"


class Inbox:
    """Ingests parked records from ``directory/inbox`` into the store.

    Args:
        directory: the parking directory (``inbox/`` and ``quarantine/`` live inside).
        ingest: stores a validated record.
        known_resumers: the names of the resumers registered in this application.
        max_bytes: files larger than this are quarantined unread.
    """

    def __init__(
        self,
        directory: Path,
        *,
        ingest: Callable[[ParkedSession], Any],
        known_resumers: Callable[[], set[str]],
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.directory = directory
        self.inbox = private_dir(directory / "inbox")
        self.quarantine_dir = private_dir(directory / "quarantine")
        self.ingest = ingest
        self.known_resumers = known_resumers
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._observer: Any = None

    # -- one file ----------------------------------------------------------------------------------

    def process(self, path: Path) -> InboxResult:
        """Validate and ingest one file (or quarantine it). Never raises for bad input."""
        with self._lock:
            try:
                return self._process(path)
            except Exception as exc:  # the daemon must survive anything a file can do
                return self._quarantine(
                    path, f"could not be processed: {type(exc).__name__}: {exc}"
                )

    def _process(self, path: Path) -> InboxResult:
        if path.parent.resolve() != self.inbox.resolve() or path.name.startswith("."):
            return InboxResult(path, "skipped", reason="not an inbox file")
        if not path.name.endswith(".json"):
            return InboxResult(path, "skipped", reason="not a .json file (yet)")
        if path.is_symlink() or not path.is_file():
            if path.is_symlink():
                return self._quarantine(path, "is a symbolic link, not a file")
            return InboxResult(path, "skipped", reason="gone")
        size = path.stat().st_size
        if size > self.max_bytes:
            return self._quarantine(
                path,
                f"is {size} bytes, over the inbox limit of {self.max_bytes} (parking.inbox_max_bytes)",
            )
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._quarantine(path, f"is not UTF-8 text (byte {exc.start}: {exc.reason})")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
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
        known = self.known_resumers()
        if record.resumer not in known:
            return self._quarantine(
                path,
                f"names resumer {record.resumer!r}, which this application has not registered "
                f"(registered: {sorted(known)})",
            )
        self.ingest(record)
        path.unlink(missing_ok=True)
        logger.info("ingest", session_id=record.session_id, file=path.name, resumer=record.resumer)
        return InboxResult(path, "ingested", record=record)

    def _quarantine(self, path: Path, reason: str) -> InboxResult:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        safe = _SAFE_NAME.sub("_", path.name)[:150] or "file"
        target = self.quarantine_dir / f"{stamp}-{safe}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return InboxResult(path, "skipped", reason="gone before it could be quarantined")
        reason_path = target.with_name(target.name + ".reason")
        descriptor = os.open(reason_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(f"{path.name}: {reason}\n")
        logger.warning("quarantine", file=path.name, moved_to=target.name, reason=reason)
        return InboxResult(target, "quarantined", reason=reason)

    # -- all files, and watching -------------------------------------------------------------------

    def scan(self) -> list[InboxResult]:
        """Process every file in the inbox now."""
        return [
            self.process(path)
            for path in sorted(self.inbox.iterdir())
            if path.is_file() or path.is_symlink()
        ]

    def start(self) -> None:
        """Watch the inbox with watchdog, processing files as they arrive."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        inbox = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory or event.event_type not in (
                    "created",
                    "moved",
                    "modified",
                    "closed",
                ):
                    return
                target = getattr(event, "dest_path", "") or event.src_path
                path = Path(os.fsdecode(target))
                if path.name.endswith(".json") and path.exists():
                    # A writer that does not rename may still be writing: give it a moment.
                    time.sleep(0.02)
                    inbox.process(path)

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.inbox), recursive=False)
        self._observer.daemon = True
        self._observer.start()
        self.scan()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


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
