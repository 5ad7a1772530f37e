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
    try:
        value = json.loads(raw or b"")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
