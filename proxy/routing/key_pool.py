"""Several API keys for one provider: rotated per request, each cooled down on its own.

A key that got a 401/403 or a 429 rests (for the Retry-After it was given, or a default)
while the others carry on. With a single key there is nothing to rotate: the deployment's
breaker and the retry policy handle its failures instead.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["KeyPool"]


class KeyPool:
    __slots__ = ("keys", "clock", "_next", "_resting_until")

    def __init__(self, keys: tuple[str, ...], clock: Callable[[], float]) -> None:
        self.keys = keys
        self.clock = clock
        self._next = 0
        self._resting_until = [0.0] * len(keys)

    def pick(self) -> int | None:
        """The next key's index that is not resting, round-robin; None if all are resting."""
        n = len(self.keys)
        if n <= 1:
            return 0
        now = self.clock()
        for step in range(n):
            index = (self._next + step) % n
            if self._resting_until[index] <= now:
                self._next = index + 1
                return index
        return None

    def rest(self, index: int, seconds: float) -> None:
        if len(self.keys) > 1:
            self._resting_until[index] = max(self._resting_until[index], self.clock() + seconds)

    @property
    def ready_at(self) -> float:
        """When the first resting key is usable again."""
        return min(self._resting_until, default=0.0)
