"""Incremental splitting of a streamed JSON array into its elements (Gemini's default stream
framing), on bytes and in any chunking, like ``core.sse`` for event streams."""

from __future__ import annotations

import re

__all__ = ["JsonArraySplitter"]

_STRING_STOP = re.compile(rb'["\\]')


class JsonArraySplitter:
    """Feed the bytes of ``[{...}, {...}]`` as they come; get each complete element's bytes."""

    __slots__ = ("_buf", "_depth", "_in_str", "_esc")

    def __init__(self) -> None:
        self._buf = bytearray()  # the element in progress
        self._depth = 0
        self._in_str = self._esc = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete top-level elements of a streamed JSON array. Commas, whitespace and the outer
        brackets are framing; string state is tracked so braces inside text don't count."""
        done: list[bytes] = []
        start, i, n = (0 if self._depth else -1), 0, len(chunk)
        while i < n:
            if self._in_str:
                if self._esc:
                    self._esc, i = False, i + 1
                elif (m := _STRING_STOP.search(chunk, i)) is None:
                    break
                else:
                    i, self._esc, self._in_str = m.end(), m.group() == b"\\", m.group() == b"\\"
                continue
            c = chunk[i]
            if c == 0x22:  # "
                self._in_str = self._depth > 0
            elif c == 0x7B or (c == 0x5B and self._depth):  # { or a nested [
                start = i if not self._depth else start
                self._depth += 1
            elif c in (0x7D, 0x5D) and self._depth:  # } or ]
                self._depth -= 1
                if not self._depth:
                    done.append(bytes(self._buf + chunk[start : i + 1]))
                    self._buf.clear()
            i += 1
        if self._depth:
            self._buf += chunk[start:]
        return done
