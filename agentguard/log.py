"""Structured logging: one event per decision (``reserve``, ``settle``, ``retry``, ``limit``,
``route``, ``trim``, ``park``, ``resume``).

A library must not configure logging on import. Events go through structlog when the
application has configured it (``structlog.configure``); otherwise through the standard
``logging`` logger ``agentguard`` (silent below WARNING until the application says otherwise).
:func:`configure_logging` is the one-call way to see them: JSON lines when the stream is not a
terminal, readable key=value lines when it is.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any

import structlog

from agentguard.redact import redact_text

__all__ = ["configure_logging", "logger"]

_stdlib = logging.getLogger("agentguard")
# The library convention: silent unless the application configures logging (no "last resort"
# lines on stderr).
_stdlib.addHandler(logging.NullHandler())
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _redacted(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields with key-shaped text redacted: provider errors and gateways can echo a key."""
    return {
        key: redact_text(value) if isinstance(value, str) else value
        for key, value in fields.items()
    }


class _EventLogger:
    """Emits an event through structlog if configured, else through stdlib logging."""

    __slots__ = ()

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(structlog.get_logger("agentguard"), level)(event, **_redacted(fields))
            return
        numeric = _LEVELS[level]
        if not _stdlib.isEnabledFor(numeric):
            return
        fields = _redacted(fields)
        _stdlib.log(numeric, event, extra={"agentguard_event": event, "agentguard_fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def enabled(self, level: str = "debug") -> bool:
        """Whether an event at ``level`` would be written (skip building costly fields if not)."""
        return structlog.is_configured() or _stdlib.isEnabledFor(_LEVELS[level])


logger = _EventLogger()


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "agentguard_event", record.getMessage())
        fields = getattr(record, "agentguard_fields", {})
        timestamp = datetime.fromtimestamp(record.created, tz=UTC).isoformat(
            timespec="milliseconds"
        )
        if self.as_json:
            payload = {"timestamp": timestamp, "level": record.levelname.lower(), "event": event}
            payload.update(fields)
            return json.dumps(payload, default=_jsonable)
        parts = " ".join(
            f"{key}={_jsonable(value) if not isinstance(value, (int, float, str)) else value}"
            for key, value in fields.items()
        )
        return f"{timestamp} [{record.levelname.lower():<7}] {event:<10} {parts}"


def configure_logging(
    level: str = "info", *, json_lines: bool | None = None, stream: IO[str] | None = None
) -> None:
    """Write agentguard's events to ``stream`` (default stderr).

    Args:
        level: ``debug`` (every reserve and settle too), ``info`` (decisions) or ``warning``.
        json_lines: JSON lines; default: when ``stream`` is not a terminal.
        stream: where to write.
    """
    target = stream or sys.stderr
    as_json = (
        json_lines if json_lines is not None else not getattr(target, "isatty", lambda: False)()
    )
    for handler in list(_stdlib.handlers):
        if getattr(handler, "_agentguard", False):
            _stdlib.removeHandler(handler)
    handler = logging.StreamHandler(target)
    handler.setFormatter(_Formatter(as_json))
    handler._agentguard = True  # type: ignore[attr-defined]
    _stdlib.addHandler(handler)
    _stdlib.setLevel(_LEVELS[level])
    _stdlib.propagate = False
