"""Server-sent events, split as they pass: the part of every stream tap that is the same."""

from __future__ import annotations

__all__ = ["SseReader"]


class SseReader:
    """Splits a byte stream into whole server-sent events and asks :meth:`read_data` whether
    to hand each on. Subclasses read the events of one API.

    Attributes:
        done: the stream's last event has been seen.
        events: how many data events were read.
    """

    __slots__ = ("_buffer", "done", "events")

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        """Take bytes from the wire; return the bytes to hand on (whole events only)."""
        self._buffer += chunk
        out: list[bytes] = []
        while True:
            end, size = _event_end(self._buffer)
            if end < 0:
                break
            event = self._buffer[: end + size]
            self._buffer = self._buffer[end + size :]
            if self._read_event(event[:end]):
                out.append(event)
        return b"".join(out)

    def flush(self) -> bytes:
        """The incomplete remainder at the end of the stream."""
        rest, self._buffer = self._buffer, b""
        if rest.strip():
            self._read_event(rest)
        return rest

    def read_data(self, event: str | None, data: bytes) -> bool:
        """Record what one event says; return whether to hand it on."""
        raise NotImplementedError

    def _read_event(self, raw: bytes) -> bool:
        data_lines: list[bytes] = []
        name: str | None = None
        for line in raw.splitlines():
            if line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
        if not data_lines:
            return True
        return self.read_data(name, b"\n".join(data_lines))


def _event_end(buffer: bytes) -> tuple[int, int]:
    candidates = [
        (buffer.find(separator), len(separator)) for separator in (b"\n\n", b"\r\n\r\n", b"\r\r")
    ]
    found = [(index, size) for index, size in candidates if index >= 0]
    return min(found) if found else (-1, 0)
