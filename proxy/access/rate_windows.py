"""Per-key rate limits that never over-admit: requests and tokens per minute, concurrency.

asyncio runs one callback at a time, so ``admit`` — which checks every limit and then
reserves against all of them without an ``await`` in between — is exact under any
concurrency: of 200 simultaneous requests against 50 RPM, exactly 50 get through.

Windows slide over the last 60 s. Tokens are reserved at admission from an estimate (the
prompt estimate plus ``max_tokens``, or ``llm_proxy.core.tokens.DEFAULT_COMPLETION_RESERVE``
when the request sets no cap) and corrected to the real usage when the response ends; the correction keeps
the admission time, so a request's tokens leave the window 60 s after it was admitted.
State is keyed by the key's log id and lives as long as the app: it survives a config
reload and a key's rotation (both keys share the id), not a restart.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llm_proxy.core.context import ClientIdentity
from llm_proxy.core.errors import ProxyError

__all__ = ["PERIOD", "Admission", "RateLimiter", "Window", "duration"]

PERIOD = 60.0


class _Event:
    __slots__ = ("amount", "at", "live")

    def __init__(self, at: float, amount: int) -> None:
        self.at, self.amount, self.live = at, amount, True


class Window:
    """Amounts added in the last ``PERIOD`` seconds, oldest first, with their running total."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[_Event] = deque()
        self.total = 0

    def prune(self, now: float) -> int:
        events, horizon = self.events, now - PERIOD
        while events and events[0].at <= horizon:
            gone = events.popleft()
            gone.live = False
            self.total -= gone.amount
        return self.total

    def add(self, now: float, amount: int) -> _Event:
        event = _Event(now, amount)
        self.events.append(event)
        self.total += amount
        return event

    def adjust(self, event: _Event, amount: int) -> None:
        """Correct a reservation to what was really used (nothing to do once it left the window)."""
        if event.live:
            self.total += amount - event.amount
        event.amount = amount

    def wait_for(self, now: float, limit: int, need: int) -> float:
        """Seconds until ``need`` more fits under ``limit`` (0 if it fits now)."""
        excess = self.total + need - limit
        if excess <= 0:
            return 0.0
        for event in self.events:
            excess -= event.amount
            if excess <= 0:
                return max(event.at + PERIOD - now, 0.0)
        return PERIOD


def duration(seconds: float) -> str:
    """OpenAI's style for reset headers: ``250ms``, ``1.5s``, ``6m0s``."""
    ms = math.ceil(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _too_many(kind: str, message: str, wait: float, headers: list[tuple[bytes, bytes]],
              code: str, retry: bool) -> ProxyError:
    extra = {k.decode(): v.decode() for k, v in headers}
    if retry:
        extra["retry-after"] = str(max(1, math.ceil(wait)))
        extra["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
    else:
        extra["x-should-retry"] = "false"
    return ProxyError(429, message, type=kind, code=code, headers=extra)


def _window(table: dict[str, Window], kid: str) -> Window:
    window = table.get(kid)
    if window is None:
        window = table[kid] = Window()
    return window


@dataclass(slots=True)
class Admission:
    """What one admitted request holds, given back (``release``) when it ends."""

    limiter: RateLimiter
    key_id: str
    tokens: _Event | None = None
    concurrent: bool = False
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def release(self, used_tokens: int) -> None:
        self.limiter.release(self, used_tokens)


class RateLimiter:
    """Sliding windows and in-flight counts per key; ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._requests: dict[str, Window] = {}
        self._tokens: dict[str, Window] = {}
        self._active: dict[str, int] = {}

    def requests_used(self, key_id: str) -> int:
        window = self._requests.get(key_id)
        return window.prune(self.clock()) if window is not None else 0

    def tokens_used(self, key_id: str) -> int:
        window = self._tokens.get(key_id)
        return window.prune(self.clock()) if window is not None else 0

    def active(self, key_id: str) -> int:
        return self._active.get(key_id, 0)

    def admit(self, client: ClientIdentity, tokens: int) -> Admission:
        """Check every limit of the key, then reserve against all of them; raise a 429 if one is full.

        Must stay free of ``await``: that is what makes it exact under concurrency.
        """
        now = self.clock()
        kid = client.key_id
        rpm, tpm, most = client.rpm, client.tpm, client.max_concurrent
        requests = _window(self._requests, kid) if rpm is not None else None
        window = _window(self._tokens, kid) if tpm is not None else None
        if requests is not None:
            requests.prune(now)
        if window is not None:
            window.prune(now)

        refusal: tuple[str, str, float, str, bool] | None = None  # type, message, wait, code, retry
        if most is not None and self._active.get(kid, 0) >= most:
            refusal = ("requests", f"Too many concurrent requests on this API key: the limit is {most}. "
                       "Retry when one of them has finished.", 1.0, "concurrency_limit_exceeded", True)
        elif requests is not None and rpm is not None and requests.total + 1 > rpm:
            wait = requests.wait_for(now, rpm, 1)
            refusal = ("requests", f"Rate limit reached for requests per minute (RPM) on this API key: "
                       f"Limit {rpm}, Used {requests.total}, Requested 1. Please try again in {duration(wait)}.",
                       wait, "rate_limit_exceeded", True)
        elif window is not None and tpm is not None and tokens > tpm:
            refusal = ("tokens", f"Request too large for tokens per minute (TPM) on this API key: Limit {tpm}, "
                       f"Requested {tokens} (prompt estimate + max_tokens). Lower max_tokens or shorten the "
                       "prompt.", 0.0, "rate_limit_exceeded", False)
        elif window is not None and tpm is not None and window.total + tokens > tpm:
            wait = window.wait_for(now, tpm, tokens)
            refusal = ("tokens", f"Rate limit reached for tokens per minute (TPM) on this API key: Limit {tpm}, "
                       f"Used {window.total}, Requested {tokens}. Please try again in {duration(wait)}.",
                       wait, "rate_limit_exceeded", True)
        if refusal is not None:
            kind, message, wait, code, retry = refusal
            raise _too_many(kind, message, wait, self._headers(now, client, requests, window), code, retry)

        admission = Admission(self, kid)
        if requests is not None:
            requests.add(now, 1)
        if window is not None:
            admission.tokens = window.add(now, tokens)
        if most is not None:
            self._active[kid] = self._active.get(kid, 0) + 1
            admission.concurrent = True
        if requests is not None or window is not None:
            admission.headers = self._headers(now, client, requests, window)
        return admission

    @staticmethod
    def _headers(now: float, client: ClientIdentity, requests: Window | None,
                 window: Window | None) -> list[tuple[bytes, bytes]]:
        """OpenAI's ``x-ratelimit-*`` trio per limit; reset is when the oldest entry leaves the window."""
        out: list[tuple[bytes, bytes]] = []
        for kind, limit, win in ((b"requests", client.rpm, requests), (b"tokens", client.tpm, window)):
            if win is None or limit is None:
                continue
            reset = max(win.events[0].at + PERIOD - now, 0.0) if win.events else 0.0
            out += [
                (b"x-ratelimit-limit-" + kind, str(limit).encode()),
                (b"x-ratelimit-remaining-" + kind, str(max(limit - win.total, 0)).encode()),
                (b"x-ratelimit-reset-" + kind, duration(reset).encode()),
            ]
        return out

    def release(self, admission: Admission, used_tokens: int) -> None:
        """The request ended: free its concurrency slot and correct its tokens to the real usage."""
        kid = admission.key_id
        if admission.concurrent:
            left = self._active.get(kid, 1) - 1
            if left > 0:
                self._active[kid] = left
            else:
                self._active.pop(kid, None)
        if admission.tokens is not None:
            window = self._tokens.get(kid)
            if window is not None:
                window.adjust(admission.tokens, max(used_tokens, 0))

