"""Request and response bodies as bytes on the wire: one way to read and write them."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["encode_body", "json_object"]


def encode_body(body: dict[str, Any]) -> bytes:
    """A request body as compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_scan_value = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""The standard decoder's scanner (C): one call decodes a JSON value starting at an index."""
_JSON_SPACE = " \t\n\r"


def json_object(raw: bytes | None) -> dict[str, Any] | None:
    """A body decoded as a JSON object, or ``None`` when it is not one (garbage, a list,
    nothing at all)."""
    if not raw:
        return None
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.startswith("{"):
        # The common case, on every call and answer, in one call into the scanner that
        # json.loads runs under three layers of Python.
        try:
            value, end = _scan_value(text, 0)
        except (StopIteration, ValueError):
            return None
        if end == len(text) or not text[end:].strip(_JSON_SPACE):
            return value  # type: ignore[no-any-return]
        return None
    # Anything else (leading space, a byte-order mark, UTF-16) takes the general path:
    # json.loads sniffs the encoding of bytes.
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
