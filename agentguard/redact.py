"""Removing credentials from what agentguard stores (parked records) and reports (errors).

Two rules, applied at any depth of a JSON-like value:

* **Keys.** A key named like a credential is dropped with its value: ``api_key``, ``apikey``,
  ``authorization``, ``x-api-key``, ``cookie``, ``credential(s)``, ``private_key``, and any key
  containing ``secret``, ``password`` or ``passwd``. A key containing ``token`` is dropped
  unless its value is a count (a number, a boolean, ``null`` or a list of numbers), so
  ``max_tokens``, ``max_completion_tokens`` and ``stop_token_ids`` stay while
  ``access_token`` and ``auth_token`` go.
* **Values.** Text shaped like a provider key is replaced by ``[redacted]`` wherever it
  appears (a message that pastes a key included): ``sk-...`` (OpenAI, Anthropic ``sk-ant-``,
  OpenRouter), Google's ``AIza...``, ``Bearer ...``, GitHub, Slack, Hugging Face, Groq, AWS
  access key ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "is_secret_key", "redact_text", "scrub"]

REDACTED = "[redacted]"

_SECRET_NAMES = frozenset(
    {
        "api_key",
        "apikey",
        "api_keys",
        "authorization",
        "proxy_authorization",
        "x_api_key",
        "auth",
        "cookie",
        "set_cookie",
        "credential",
        "credentials",
        "private_key",
        "access_key",
        "secret_access_key",
    }
)
_SECRET_PARTS = ("secret", "password", "passwd", "api_key", "apikey")

_KEY_SHAPES = re.compile(
    r"""
    \bsk-[A-Za-z0-9_\-]{16,}                 # OpenAI, Anthropic (sk-ant-), OpenRouter (sk-or-)
    | \bAIza[0-9A-Za-z_\-]{30,}               # Google API keys
    | \b[Bb]earer\s+[A-Za-z0-9._~+/=\-]{8,}   # bearer tokens
    | \bgh[pousr]_[A-Za-z0-9]{30,}            # GitHub
    | \bgithub_pat_[A-Za-z0-9_]{30,}
    | \bxox[abprs]-[A-Za-z0-9\-]{10,}         # Slack
    | \bhf_[A-Za-z0-9]{30,}                   # Hugging Face
    | \bgsk_[A-Za-z0-9]{30,}                  # Groq
    | \bAKIA[0-9A-Z]{16}\b                    # AWS access key ids
    """,
    re.VERBOSE,
)


def is_secret_key(name: str, value: Any = None) -> bool:
    """Whether a mapping key (with its value) holds a credential, by the rules above."""
    normal = name.strip().lower().replace("-", "_")
    if normal in _SECRET_NAMES or any(part in normal for part in _SECRET_PARTS):
        return True
    if "token" in normal:
        return not _is_count(value)
    return False


def _is_count(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, list) and all(
        isinstance(item, int | float) and not isinstance(item, bool) for item in value
    )


def redact_text(text: str) -> str:
    """``text`` with every substring shaped like a provider key replaced by ``[redacted]``."""
    if len(text) < 8:
        return text
    return _KEY_SHAPES.sub(REDACTED, text)


def scrub(value: Any, *, drop_keys: bool = True, _field_names: bool = False) -> Any:
    """A copy of a JSON-like value with credential keys dropped and key-shaped text redacted,
    at any depth. Mapping keys are turned into strings.

    The keys of a JSON Schema's ``properties`` (a tool's parameters, a response format) name
    fields, not credentials: a ``password`` parameter is kept, its schema scrubbed.

    Args:
        value: the value.
        drop_keys: drop credential keys; ``False`` only redacts key-shaped text (for data
            whose keys are agentguard's own, like a session's counters).
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            redact_text(str(key)): scrub(
                item, drop_keys=drop_keys, _field_names=str(key) == "properties"
            )
            for key, item in value.items()
            if not drop_keys or _field_names or not is_secret_key(str(key), item)
        }
    if isinstance(value, list | tuple):
        return [scrub(item, drop_keys=drop_keys) for item in value]
    return value
