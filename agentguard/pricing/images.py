"""What an image in a chat request is billed, in input tokens, by OpenAI's published formulas.

OpenAI bills an ``image_url`` part by the model's family and the image's pixel size:

* **Tiles** (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1, o3): ``detail="low"`` costs the family's
  base tokens. Otherwise the image is scaled to fit a 2048 x 2048 square, then (if larger) so
  its shortest side is 768 px, and each 512 px tile it covers costs the tile tokens, plus the
  base. At most 8 tiles (2048 x 768), so the most one image costs is ``base + 8 * tile``.
  gpt-4o-mini bills the same layout at 2833 + 5667 per tile.
* **Patches** (gpt-4.1-mini/nano, gpt-5-mini/nano, o4-mini): the 32 px patches that cover the
  image, scaled down to at most 1536 patches, times a per-model multiplier; ``detail`` does
  not lower it.

The size is read from a ``data:`` URL's PNG, GIF, WebP or JPEG header (a few bytes are
decoded, never the whole image). An image whose size is not known (an ``http`` URL, another
format) is billed the family's maximum; ``detail="auto"`` is billed as ``"high"``. A model of no
known family is billed :data:`UNKNOWN_FAMILY_MAX_TOKENS` per image, the dearest of the
full-size families (a conservative bound, not a formula).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "UNKNOWN_FAMILY_MAX_TOKENS",
    "ImageRule",
    "image_size",
    "image_tokens",
    "rule_for",
]

_TILE_PX = 512
_MAX_TILES = 8
_PATCH_PX = 32
_MAX_PATCHES = 1536


@dataclass(frozen=True, slots=True)
class ImageRule:
    """How one model family bills images.

    Attributes:
        name: the family (for logs and cache keys).
        kind: ``tile`` or ``patch``.
        base: tile families: tokens every image costs.
        tile: tile families: tokens per 512 px tile.
        multiplier: patch families: billed tokens per patch.
    """

    name: str
    kind: Literal["tile", "patch"]
    base: int = 0
    tile: int = 0
    multiplier: float = 1.0

    @property
    def max_tokens(self) -> int:
        """The most one image can cost."""
        if self.kind == "tile":
            return self.base + _MAX_TILES * self.tile
        return math.ceil(_MAX_PATCHES * self.multiplier)


_TILES_4O = ImageRule("4o", "tile", base=85, tile=170)
# Longest prefix first: the first match wins.
_RULES: tuple[tuple[str, ImageRule], ...] = (
    ("gpt-4o-mini", ImageRule("4o-mini", "tile", base=2833, tile=5667)),
    ("gpt-4.1-mini", ImageRule("4.1-mini", "patch", multiplier=1.62)),
    ("gpt-4.1-nano", ImageRule("4.1-nano", "patch", multiplier=2.46)),
    ("gpt-5-mini", ImageRule("5-mini", "patch", multiplier=1.62)),
    ("gpt-5-nano", ImageRule("5-nano", "patch", multiplier=2.46)),
    ("o4-mini", ImageRule("o4-mini", "patch", multiplier=1.72)),
    ("computer-use-preview", ImageRule("computer-use", "tile", base=65, tile=129)),
    ("gpt-5", ImageRule("5", "tile", base=70, tile=140)),
    ("gpt-4o", _TILES_4O),
    ("chatgpt-4o", _TILES_4O),
    ("gpt-4.1", _TILES_4O),
    ("gpt-4.5", _TILES_4O),
    ("gpt-4-turbo", _TILES_4O),
    ("gpt-4-vision", _TILES_4O),
    ("o1", ImageRule("o1", "tile", base=75, tile=150)),
    ("o3", ImageRule("o3", "tile", base=75, tile=150)),
)
UNKNOWN_FAMILY_MAX_TOKENS = max(rule.max_tokens for _, rule in _RULES if rule.name != "4o-mini")
"""Tokens an image costs under a model of no known family."""
_UNKNOWN = ImageRule("unknown", "patch", multiplier=UNKNOWN_FAMILY_MAX_TOKENS / _MAX_PATCHES)


def rule_for(model: str) -> ImageRule:
    """The image billing rule of ``model`` (provider prefixes and dated snapshots allowed)."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    for prefix, rule in _RULES:
        if name.startswith(prefix):
            return rule
    return _UNKNOWN


def image_tokens(model: str, image: Mapping[str, Any] | str | None) -> int:
    """Input tokens one ``image_url`` value (``{"url": ..., "detail": ...}``) is billed.

    An unknown size is billed the family's maximum, so the result is an upper bound.
    """
    rule = rule_for(model)
    url = image.get("url") if isinstance(image, Mapping) else image
    detail = image.get("detail") if isinstance(image, Mapping) else None
    if rule.kind == "tile" and detail == "low":
        return rule.base
    size = image_size(url) if isinstance(url, str) else None
    if rule is _UNKNOWN or size is None:
        return rule.max_tokens
    width, height = size
    if rule.kind == "tile":
        return rule.base + rule.tile * _tiles(width, height)
    return math.ceil(_patches(width, height) * rule.multiplier)


def _tiles(width: int, height: int) -> int:
    w, h = float(width), float(height)
    longest = max(w, h)
    if longest > 2048:
        w, h = w * 2048 / longest, h * 2048 / longest
    shortest = min(w, h)
    if shortest > 768:
        w, h = w * 768 / shortest, h * 768 / shortest
    return min(_MAX_TILES, math.ceil(w / _TILE_PX) * math.ceil(h / _TILE_PX))


def _patches(width: int, height: int) -> int:
    patches = math.ceil(width / _PATCH_PX) * math.ceil(height / _PATCH_PX)
    if patches > _MAX_PATCHES:
        ratio = math.sqrt(_PATCH_PX * _PATCH_PX * _MAX_PATCHES / (width * height))
        scaled_w, scaled_h = width * ratio / _PATCH_PX, height * ratio / _PATCH_PX
        ratio *= min(math.floor(scaled_w) / scaled_w, math.floor(scaled_h) / scaled_h)
        patches = math.ceil(width * ratio / _PATCH_PX) * math.ceil(height * ratio / _PATCH_PX)
    return min(patches, _MAX_PATCHES)


# -- reading an image's size from a data: URL ------------------------------------------------

_HEAD_CHARS = 64
_JPEG_SCAN_CHARS = 1 << 20
"""A JPEG's size sits after its metadata; look that far (1 MiB of base64) and no further."""


def image_size(url: str) -> tuple[int, int] | None:
    """The pixel size of a base64 ``data:`` URL's PNG, GIF, WebP or JPEG image, or ``None``."""
    if not url.startswith("data:"):
        return None
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        return None
    head = _b64(payload[:_HEAD_CHARS])
    if head is None:
        return None
    size = _png(head) or _gif(head) or _webp(head)
    if size is None and head.startswith(b"\xff\xd8"):
        data = _b64(payload[:_JPEG_SCAN_CHARS])
        size = _jpeg(data) if data is not None else None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _b64(text: str) -> bytes | None:
    text = text.strip()
    text = text[: len(text) - len(text) % 4]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def _gif(data: bytes) -> tuple[int, int] | None:
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(data: bytes) -> tuple[int, int] | None:
    index = 2
    while index + 9 <= len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            return int(width), int(height)
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            index += 2
            continue
        (length,) = struct.unpack(">H", data[index + 2 : index + 4])
        index += 2 + length
    return None
