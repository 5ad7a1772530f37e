"""Who is calling: the client's key, the virtual key it matches, and the session it is in.

The client's provider key is read from ``Authorization: Bearer ...`` or ``x-api-key``; it is
hashed here and never kept. A session is named by ``x-agentguard-session``; without it, one is
derived from the key's hash and the conversation's opening (its system prompt and first user
message), which stay the same for every call of one agent run and differ between sub-agents.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentguard.errors import ConfigError

if TYPE_CHECKING:
    from agentguard.config import ProxyConfig, ProxyKey
    from agentguard.dialects import Dialect

__all__ = ["Caller", "KeyTable", "client_key", "derived_session_id", "key_hash"]

_OPENING_ITEMS = 8


def client_key(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The provider key the client sent and the header it came in (``authorization`` or
    ``x-api-key``), or ``None`` when it sent none."""
    api_key = headers.get("x-api-key")
    if api_key:
        return api_key, "x-api-key"
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), "authorization"
    return None


def key_hash(key: str) -> str:
    """The SHA-256 of a key, as ``[[proxy.keys]]`` names it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """What the proxy knows of one request's caller.

    Attributes:
        key_hash: the SHA-256 of the client's key (``""`` when it sent none).
        budget_key: the budget its calls draw on, or ``None`` to take the header's or the
            default.
        upstream_key: the provider key to send upstream in place of the client's (``None``:
            forward the client's own).
    """

    key_hash: str
    budget_key: str | None
    upstream_key: str | None


class KeyTable:
    """The virtual keys of ``[[proxy.keys]]``, with their upstream keys read from the
    environment once.

    Raises:
        ConfigError: a key's ``upstream_key_env`` names a variable that is not set.
    """

    def __init__(self, config: ProxyConfig, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self._keys: dict[str, tuple[ProxyKey, str | None]] = {}
        for entry in config.keys:
            upstream = None
            if entry.upstream_key_env is not None:
                upstream = environ.get(entry.upstream_key_env)
                if not upstream:
                    raise ConfigError(
                        f"proxy.keys: upstream_key_env {entry.upstream_key_env!r} (key "
                        f"{entry.sha256[:12]}...) is not set in the environment",
                        field="proxy.keys.upstream_key_env",
                        expected="the name of a set environment variable holding a provider key",
                    )
            self._keys[entry.sha256] = (entry, upstream)

    @property
    def required(self) -> bool:
        """Whether only virtual keys are let in."""
        return bool(self._keys)

    def caller(self, key: str | None) -> Caller | None:
        """The caller of a request with ``key``, or ``None`` when virtual keys are required
        and ``key`` is not one of them."""
        digest = key_hash(key) if key else ""
        if not self._keys:
            return Caller(digest, None, None)
        found = self._keys.get(digest)
        if found is None:
            return None
        entry, upstream = found
        return Caller(digest, entry.budget_key, upstream)


def derived_session_id(
    caller: Caller, budget_key: str, dialect: Dialect, body: Mapping[str, Any]
) -> str:
    """A session id stable across the calls of one conversation: a hash of the caller's key,
    the budget and the conversation's opening (leading system messages and the first other
    message)."""
    # Only the first few items can hold the opening: the view of a long conversation is not
    # built just to read its start.
    head = dict(body)
    for field in ("messages", "input"):
        items = head.get(field)
        if isinstance(items, list):
            head[field] = items[:_OPENING_ITEMS]
    opening: list[Any] = []
    for message in dialect.messages(head):
        opening.append(message)
        if message.get("role") not in ("system", "developer"):
            break
    text = json.dumps(opening, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(
        f"{caller.key_hash}\n{budget_key}\n{dialect.name}\n{text}".encode()
    ).hexdigest()
    return f"proxy-{digest[:24]}"
