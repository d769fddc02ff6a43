"""Several API keys for one provider: rotated per request, each cooled down on its own.

A key rests for every model (a 429's Retry-After, or a refusal the provider says is about
the key itself) or only for one model (a 401/403 that may be about the model: a model the
key may not use says nothing about the others). Which of the two a refusal earns is the
pipeline's decision (``pipeline._refusal``); the pool remembers which (key, model) pairs
have served, since a refusal on a pair that worked is about the request, not the key.
With a single key there is nothing to rotate: the deployment's breaker and the retry
policy handle its failures instead.

Both per-pair maps are bounded (``_MAX_PAIRS``): a client can name any ``provider/model``,
so they must not grow with what clients send. Losing an entry only costs one more attempt.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["KeyPool"]

_MAX_PAIRS = 1024


class KeyPool:
    __slots__ = ("keys", "clock", "_next", "_resting_until", "_model_resting", "_served")

    def __init__(self, keys: tuple[str, ...], clock: Callable[[], float]) -> None:
        self.keys = keys
        self.clock = clock
        self._next = 0
        self._resting_until = [0.0] * len(keys)  # per key, for every model
        self._model_resting: dict[tuple[int, str], float] = {}  # (key, model) -> until
        self._served: dict[tuple[int, str], None] = {}  # (key, model) pairs that answered, oldest first

    def pick(self, model: str, tried: int = 0) -> int | None:
        """The next key's index, round-robin, that is not resting (for ``model``) and not in the
        ``tried`` bit mask (keys this request already used); None if there is none."""
        n = len(self.keys)
        if n <= 1:
            return 0
        now = self.clock()
        pairs = self._model_resting
        for step in range(n):
            index = (self._next + step) % n
            if (self._resting_until[index] <= now and not tried & (1 << index)
                    and (not pairs or pairs.get((index, model), 0.0) <= now)):
                self._next = index + 1
                return index
        return None

    def rest(self, index: int, seconds: float) -> None:
        """Rest a key for every model."""
        if len(self.keys) > 1:
            self._resting_until[index] = max(self._resting_until[index], self.clock() + seconds)

    def rest_model(self, index: int, model: str, seconds: float) -> None:
        """Rest a key for one model only."""
        pairs = self._model_resting
        now = self.clock()
        key = (index, model)
        if key not in pairs and len(pairs) >= _MAX_PAIRS:
            for stale in [k for k, until in pairs.items() if until <= now]:
                del pairs[stale]
            if len(pairs) >= _MAX_PAIRS:
                del pairs[next(iter(pairs))]
        pairs[key] = max(pairs.get(key, 0.0), now + seconds)

    def served(self, index: int, model: str) -> None:
        """This key answered for this model."""
        served = self._served
        key = (index, model)
        if key not in served:
            if len(served) >= _MAX_PAIRS:
                del served[next(iter(served))]
            served[key] = None

    def has_served(self, index: int, model: str) -> bool:
        return (index, model) in self._served

    def others_usable(self, index: int) -> bool:
        """Whether a key other than ``index`` is not resting for every model."""
        now = self.clock()
        return any(until <= now for i, until in enumerate(self._resting_until) if i != index)

    def ready_at(self, model: str) -> float:
        """When the first key resting for ``model`` (for it alone or for every model) is usable again."""
        pairs = self._model_resting
        return min((max(until, pairs.get((i, model), 0.0)) for i, until in enumerate(self._resting_until)),
                   default=0.0)
