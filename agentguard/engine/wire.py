"""Request and response bodies as bytes on the wire: one way to read and write them."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["encode_body", "json_object"]


def encode_body(body: dict[str, Any]) -> bytes:
    """A request body as compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_object(raw: bytes | None) -> dict[str, Any] | None:
    """A body decoded as a JSON object, or ``None`` when it is not one (garbage, a list,
    nothing at all)."""
    if not raw:
        return None
    try:
        # Decoded first: json.loads would sniff the encoding of bytes on every call. A body
        # that is not UTF-8 (or starts with a byte-order mark) takes the general path.
        value = json.loads(raw.decode("utf-8"))
    except ValueError:
        try:
            value = json.loads(raw)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None
