"""What each database key has spent, per UTC day, UTC month and in total — kept in memory.

The ledger is rebuilt at startup from the request log (off the event loop) and charged
with each request's ``ctx.cost``, the same number its log row carries, so a key's spend
always equals the sum of its rows' ``cost_usd`` — exactly: sums are kept as integers in
units of 2**-1074 USD (every float is a whole number of those), so the order requests end
in cannot change the last bit. A request is bucketed by the time it started, like its row.

Budgets are checked before the call. Requests in flight hold an estimated cost, so a burst
of concurrent requests cannot all slip in under a nearly spent budget: a key is refused
once its spend plus what is in flight reaches a budget. The one admitted last may still
end a little over budget (it was priced on an estimate); nothing after it is admitted.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from llm_proxy.accounts.client_keys import LOG_ID_PREFIX
from llm_proxy.core.context import ClientIdentity
from llm_proxy.core.errors import ProxyError

__all__ = ["SpendLedger", "Spent", "exact_units", "from_units"]

logger = logging.getLogger("llm_proxy")

_SCALE = 1074  # the smallest float is 2**-1074


def exact_units(usd: float) -> int:
    """``usd`` as a whole number of 2**-1074 USD, without rounding."""
    num, den = usd.as_integer_ratio()  # den is a power of two
    return num << (_SCALE - den.bit_length() + 1)


def from_units(units: int) -> float:
    return units / (1 << _SCALE)  # int / int is correctly rounded


def _day(ts: float) -> int:
    return datetime.fromtimestamp(ts, UTC).toordinal()


def _month(ts: float) -> int:
    d = datetime.fromtimestamp(ts, UTC)
    return d.year * 12 + d.month - 1


@dataclass(slots=True)
class Spent:
    """One key's spend; ``day``/``month`` name the UTC day (ordinal) and month they count."""

    day: int = 0
    day_units: int = 0
    month: int = 0
    month_units: int = 0
    total_units: int = 0
    reserved: float = 0.0  # estimated USD held by requests in flight
    holds: int = 0  # how many requests hold some of it

    def add(self, ts: float, units: int) -> None:
        self.total_units += units
        day, month = _day(ts), _month(ts)
        if day == self.day:
            self.day_units += units
        elif day > self.day:  # a later day starts; a request from an earlier day only counts in total
            self.day, self.day_units = day, units
        if month == self.month:
            self.month_units += units
        elif month > self.month:
            self.month, self.month_units = month, units

    def as_of(self, now: float) -> tuple[float, float, float]:
        """(today, this month, total) in USD at ``now``."""
        day = from_units(self.day_units) if self.day == _day(now) else 0.0
        month = from_units(self.month_units) if self.month == _month(now) else 0.0
        return day, month, from_units(self.total_units)


_NOTHING = Spent()  # never charged: read only


def _next_day(now: float) -> float:
    d = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def _next_month(now: float) -> float:
    d = datetime.fromtimestamp(now, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


class SpendLedger:
    """Spend per key log id. ``clock`` (wall time) is injectable for tests."""

    def __init__(self, db_path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.db_path = str(db_path)
        self.clock = clock
        self.loaded = False
        self._spent: dict[str, Spent] = {}
        self._lock: asyncio.Lock | None = None

    # -- startup ---------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild from the request log (blocking: call from a thread); reservations in flight are kept."""
        rebuilt: dict[str, Spent] = {}
        if self.db_path != ":memory:" and Path(self.db_path).exists():
            conn = sqlite3.connect(Path(self.db_path).resolve().as_uri() + "?mode=ro", uri=True)
            try:
                rows = conn.execute(
                    "SELECT client_key_id, ts, cost_usd FROM request_logs "
                    "WHERE client_key_id LIKE ? ESCAPE '\\' AND cost_usd IS NOT NULL AND cost_usd != 0",
                    (LOG_ID_PREFIX.replace("_", "\\_") + "%",),
                )
                for kid, ts, cost in rows:
                    spent = rebuilt.get(kid)
                    if spent is None:
                        spent = rebuilt[kid] = Spent()
                    spent.add(ts, exact_units(float(cost)))
            except sqlite3.OperationalError as exc:  # no request log yet
                logger.debug("spend ledger: nothing to rebuild from (%s)", exc)
            finally:
                conn.close()
        for kid, spent in self._spent.items():
            mine = rebuilt.setdefault(kid, Spent())
            mine.reserved, mine.holds = spent.reserved, spent.holds
        self._spent = rebuilt
        self.loaded = True

    async def ensure_loaded(self) -> None:
        if self.loaded:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.loaded:
                await asyncio.to_thread(self.load)

    # -- reads -----------------------------------------------------------------------

    def spent(self, key_id: str, now: float | None = None) -> tuple[float, float, float]:
        """(today, this month, total) USD for a key log id."""
        spent = self._spent.get(key_id)
        if spent is None:
            return 0.0, 0.0, 0.0
        return spent.as_of(self.clock() if now is None else now)

    def reserved(self, key_id: str) -> float:
        spent = self._spent.get(key_id)
        return spent.reserved if spent is not None else 0.0

    # -- the request path (synchronous: no await between check and reserve) ----------

    def check(self, client: ClientIdentity) -> None:
        """Refuse with 429 ``insufficient_quota`` when a budget is used up (or committed in flight)."""
        spent = self._spent.get(client.key_id) or _NOTHING
        now = self.clock()
        day, month, total = spent.as_of(now)
        for label, used, budget, resets in (
            ("daily", day, client.budget_day_usd, _next_day),
            ("monthly", month, client.budget_month_usd, _next_month),
            ("total", total, client.budget_total_usd, None),
        ):
            if budget is None:
                continue
            headers = {"x-should-retry": "false"}
            when = ""
            if resets is not None:
                at = resets(now)
                headers["retry-after"] = str(max(1, int(at - now) + 1))
                when = f" It resets at {datetime.fromtimestamp(at, UTC):%Y-%m-%d %H:%M} UTC."
            if used >= budget:
                raise ProxyError(
                    429, f"This API key has used its {label} budget (${used:.6f} of ${budget:.6f}).{when}",
                    type="insufficient_quota", code="insufficient_quota", headers=headers,
                )
            if used + spent.reserved >= budget:  # transient: requests in flight hold the rest
                raise ProxyError(
                    429, f"This API key's {label} budget (${budget:.6f}) is committed to requests in flight. "
                    "Retry when they have finished.", type="insufficient_quota", code="insufficient_quota",
                    headers={"retry-after": "1"},
                )

    def reserve(self, key_id: str, usd: float) -> None:
        if usd > 0:
            spent = self._spent.get(key_id)
            if spent is None:
                spent = self._spent[key_id] = Spent()
            spent.reserved += usd
            spent.holds += 1

    def settle(self, key_id: str, started_wall: float, reserved: float, cost: float | None) -> None:
        """The request ended: drop its reservation and charge what it really cost."""
        spent = self._spent.get(key_id)
        if spent is None:
            spent = self._spent[key_id] = Spent()
        if reserved > 0:
            spent.holds -= 1
            spent.reserved = spent.reserved - reserved if spent.holds > 0 else 0.0  # no float residue
        if cost:
            spent.add(started_wall, exact_units(cost))
