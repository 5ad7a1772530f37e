"""The parked-session record: what is saved when a session parks, and the inbox file format.

Versioned (``schema_version``); :func:`json_schema` publishes it for other processes and
languages that drop records into the inbox. A record never holds API keys, auth headers or
client objects: only the pending request's JSON body, counters, and the evidence headers of
the limit that parked it. Whatever a record is built from, credential-looking keys are removed
at any depth and key-shaped text is redacted (:mod:`agentguard.redact`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentguard.redact import is_secret_key, redact_text, scrub

__all__ = [
    "SCHEMA_VERSION",
    "ParkReason",
    "ParkState",
    "ParkedSession",
    "Transition",
    "json_schema",
    "validate_session_id",
]

SCHEMA_VERSION = 1
ParkState = Literal["parked", "resuming", "resumed", "failed", "dropped"]
_SESSION_ID = re.compile(r"[A-Za-z0-9._:@-]{1,200}")
_FORBIDDEN_KEYS = frozenset(
    {"api_key", "apikey", "authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)


def validate_session_id(value: str) -> str:
    """The one rule for session ids, which name files and database rows: 1-200 of
    ``A-Z a-z 0-9 . _ : @ -``, not ``.`` or ``..``.

    Raises:
        ValueError: ``value`` breaks the rule; the message says what the rule is.
    """
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value) or value in {".", ".."}:
        raise ValueError(
            f"session id {str(value)[:80]!r} is not valid: use 1-200 characters of letters, "
            "digits and ._:@- (it names files and database rows)"
        )
    return value


def _now() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParkReason(_Model):
    """Why the session parked."""

    kind: Literal["rate_limit", "budget_window", "quota_exhausted", "local_budget", "error"]
    status: int | None = None
    """HTTP status of the limit error (``None`` for the local budget)."""
    error_type: str | None = None
    error_code: str | None = None
    message: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    """The response headers that said when the limit resets."""
    reset_source: str | None = None
    """What ``resume_at`` came from: ``ledger``, ``retry-after``, ``x-ratelimit-reset-requests``,
    ``parking.window_hours``..."""
    budget_key: str | None = None

    @field_validator("headers")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        return {
            k: redact_text(v)
            for k, v in value.items()
            if k.lower() not in _FORBIDDEN_KEYS and not is_secret_key(k, v)
        }

    @field_validator("message")
    @classmethod
    def _no_secret_text(cls, value: str) -> str:
        return redact_text(value)


class Transition(_Model):
    """One change of state."""

    at: datetime
    state: ParkState
    note: str = ""


class ParkedSession(_Model):
    """A parked session: the pending request and everything needed to resume it.

    ``client.chat.completions.create(**parked.request)`` replays a pending chat completion;
    ``dialect`` says which call replays the other wire APIs (``responses.create``,
    ``messages.create``).
    """

    schema_version: int = SCHEMA_VERSION
    session_id: str
    parent_id: str | None = None
    budget_key: str = "default"
    framework: str = "openai"
    """Who parked it: ``openai``, ``langchain``, ``crewai``, ``openclaw``..."""
    resumer: str = "replay"
    """The registered resumer that continues it (never an import path)."""
    request: dict[str, Any] = Field(default_factory=dict)
    """The pending call's keyword arguments in its ``dialect`` (model, messages or input,
    tools, params); never API keys or headers."""
    dialect: str = "openai_chat"
    """The wire API the pending request speaks (``openai_chat``, ``openai_responses``,
    ``anthropic_messages``): which client's call the ``replay`` resumer sends it with."""
    iterations: int = Field(default=0, ge=0)
    spent_usd: Decimal = Field(default=Decimal(0), ge=0)
    session_state: dict[str, Any] = Field(default_factory=dict)
    """The session's counters (:class:`agentguard.SessionState`), restored on resume."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Framework data to resume with (a LangGraph thread id, a crew's inputs...)."""
    reason: ParkReason
    state: ParkState = "parked"
    parked_at: datetime = Field(default_factory=_now)
    resume_at: datetime | None = None
    attempts: int = Field(default=0, ge=0)
    """Resumes tried so far."""
    lease_owner: str | None = None
    lease_until: datetime | None = None
    resume_id: str | None = None
    """The idempotency key of the current resume attempt: the same when a resume whose
    process died is run again, new for each new attempt. Resumers with side effects outside
    agentguard (a message sent, a ticket filed) should pass it on or check it."""
    history: list[Transition] = Field(default_factory=list)
    result: dict[str, Any] | None = None
    """A short summary of the resumed call's result (or of the last failure)."""

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {value} is not supported (this agentguard reads version "
                f"{SCHEMA_VERSION})"
            )
        return value

    @field_validator("session_id")
    @classmethod
    def _session_id(cls, value: str) -> str:
        return validate_session_id(value)

    @field_validator("parent_id")
    @classmethod
    def _parent_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_session_id(value)

    @field_validator("resumer", "framework")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.match(r"^[a-z][a-z0-9_-]{0,63}$", value):
            raise ValueError(
                f"{value[:80]!r} is not a plain lower-case name (a-z, 0-9, _ and -): resumers "
                "are registered names, never import paths"
            )
        return value

    @field_validator("request")
    @classmethod
    def _request(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Credentials are removed, never refused: a refusal would quote them in its error.
        request: dict[str, Any] = scrub(
            {k: v for k, v in value.items() if k not in {"extra_headers", "extra_query"}}
        )
        messages = request.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise ValueError("request.messages must be a list of message objects")
        return request

    @field_validator("metadata", "result")
    @classmethod
    def _scrubbed(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else scrub(value)

    @field_validator("session_state")
    @classmethod
    def _redacted(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The counters' keys are agentguard's own (tool-call fingerprints): only text is redacted.
        redacted: dict[str, Any] = scrub(value, drop_keys=False)
        return redacted

    @field_validator("parked_at", "resume_at", "lease_until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def transition(self, state: ParkState, note: str = "", *, at: datetime | None = None) -> None:
        """Move to ``state`` and record it in the history (kept to the last 50 moves)."""
        self.state = state
        self.history.append(Transition(at=at or _now(), state=state, note=note[:500]))
        del self.history[:-50]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a parked record (the inbox file format)."""
    schema = ParkedSession.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:agentguard:parked-session:v{SCHEMA_VERSION}"
    return schema
