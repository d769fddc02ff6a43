"""Incremental Server-Sent-Events decoder/encoder shared by every provider.

Works on bytes end to end: upstream chunks go in, events come out with ``data``
still as bytes, so a caller can ``orjson.loads`` it once or forward it untouched
without a decode/encode round trip. Follows the WHATWG "event stream
interpretation" rules, with one leniency: :meth:`SSEDecoder.flush` dispatches a
trailing event that lacks its final blank line, because real upstreams do that.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEEvent", "encode_event"]

_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event; ``event`` is None for the default ("message") type."""

    event: str | None = None
    data: bytes = b""
    id: str | None = None
    retry: int | None = None


def _normalize_eols(chunk: bytes) -> bytes:
    # Two C-level passes beat a per-byte scan; "\r\n" must go first so it stays one terminator.
    return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


class SSEDecoder:
    """Feed raw bytes in any chunking; get the same events as if fed all at once.

    Only the unterminated tail of the stream is kept between calls, so each byte
    is scanned once. A chunk ending in ``\\r`` is treated as a complete line at
    once (no latency), and a ``\\n`` opening the next chunk is then swallowed.
    """

    __slots__ = ("_tail", "_skip_lf", "_bom", "_data", "_event", "_last_id", "_retry")

    def __init__(self) -> None:
        self._tail: list[bytes] = []  # parts of the current unterminated line (list: no O(n^2) concat)
        self._skip_lf = False  # last chunk ended in "\r": a leading "\n" belongs to it
        self._bom = True  # the stream's first line may start with a UTF-8 BOM, which the spec drops
        self._data: list[bytes] = []
        self._event: str | None = None
        self._last_id: str | None = None  # persists across events, like EventSource.lastEventId
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode ``chunk`` and return the events it completed (often none or one)."""
        if self._skip_lf:
            if not chunk:
                return []
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if not chunk:
            return []
        if b"\r" in chunk:
            self._skip_lf = chunk[-1] == 0x0D
            chunk = _normalize_eols(chunk)
        lines = chunk.split(b"\n")
        if len(lines) == 1:  # no terminator yet: just remember it
            self._tail.append(chunk)
            return []
        if self._tail:
            self._tail.append(lines[0])
            lines[0] = b"".join(self._tail)
            self._tail = []
        last = lines.pop()
        if last:
            self._tail.append(last)
        if self._bom:
            self._bom = False
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][3:]
        out: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if line.startswith(b"data:"):  # hot path: skip the generic field parse
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line:
                self._field(line)
            elif data:
                out.append(self._dispatch())
            else:
                self._event = None  # blank line with no data: spec resets the type, dispatches nothing
                self._retry = None
        return out

    def flush(self) -> list[SSEEvent]:
        """End of stream: treat an unterminated last line/event as complete (lenient)."""
        self._skip_lf = False
        if self._tail:
            line = b"".join(self._tail)
            self._tail = []
            if self._bom:
                self._bom = False
                if line.startswith(_BOM):
                    line = line[3:]
            if line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            else:
                self._field(line)
        if self._data:
            return [self._dispatch()]
        self._event = None
        self._retry = None
        return []

    def _field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" starts a comment (e.g. ": keep-alive")
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or None
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():  # bytes.isdigit is ASCII-only, as the spec wants
                self._retry = int(value)
        # unknown fields are ignored

    def _dispatch(self) -> SSEEvent:
        data = self._data
        ev = SSEEvent(
            self._event,
            data[0] if len(data) == 1 else b"\n".join(data),
            self._last_id,
            self._retry,
        )
        data.clear()  # in place: feed() holds a local alias to this list
        self._event = None
        self._retry = None
        return ev


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """Frame one event; multi-line ``data`` becomes several ``data:`` lines so it round-trips."""
    if event is None:
        head = b""
    else:
        if "\n" in event or "\r" in event:
            raise ValueError("SSE event name must not contain line breaks")
        head = b"event: " + event.encode() + b"\n"
    if b"\n" not in data and b"\r" not in data:
        return head + b"data: " + data + b"\n\n"
    body = b"".join(b"data: " + line + b"\n" for line in _normalize_eols(data).split(b"\n"))
    return head + body + b"\n"
