"""Model catalog: prices, limits and capabilities from the bundled models.dev snapshot.

Loaded once at startup into a compact index (slotted frozen objects, shared ``Price``
instances) and the parsed JSON is never kept, because the raw tree is ~6x the index and the
gateway's RSS budget is small. Lookups try the *serving* provider's entry first (that is
what the request is billed at), then the model's *creator* among first-party providers,
never a reseller: a reseller's price says nothing about what another provider charges.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from llm_proxy.core.context import Usage
from llm_proxy.core.jsontypes import JSONObject

__all__ = ["CREATOR_PRIORITY", "DEFAULT_PATH", "Catalog", "ModelInfo", "Price", "Tier"]

DEFAULT_PATH = Path(__file__).parents[1] / "data" / "models.json"

# First-party providers tried, in order, when the serving provider has no entry. The tail
# after "xiaomi" are other model makers with their own API in the file: zai (Z.AI, USD)
# before zhipuai (same GLM ids, China site), llama = Meta's Llama API.
CREATOR_PRIORITY: tuple[str, ...] = (
    "openai", "google", "deepseek", "xai", "moonshotai", "anthropic", "mistral", "xiaomi",
    "alibaba", "zai", "zhipuai", "minimax", "llama", "cohere",
)  # fmt: skip

_PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "reasoning")
_DATE_SUFFIX = re.compile(r"[-@](?:\d{4}-\d{2}-\d{2}|\d{8})$")  # -2024-08-06, -20241022, @20240620
_MEMO_MAX = 4096  # (model, provider) pairs remembered; cleared wholesale when full
_Overrides = dict[tuple[str, str], dict[str, float]]
_MILLION = Decimal(1_000_000)


@dataclass(slots=True, frozen=True)
class Price:
    """USD per 1M tokens; None means "not published" (cache/reasoning then bill as input/output)."""

    input: float | None = None
    output: float | None = None
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None


@dataclass(slots=True, frozen=True)
class Tier:
    """Prices that apply once the prompt is longer than ``size`` tokens."""

    size: int
    price: Price


@dataclass(slots=True, frozen=True)
class ModelInfo:
    """One catalog entry, reduced to what routing and metering read."""

    provider: str  # catalog provider id this entry came from
    model: str  # catalog model id
    name: str
    price: Price | None  # None: the entry publishes no per-token price
    tiers: tuple[Tier, ...] = ()  # ascending by size
    context: int | None = None
    output: int | None = None
    reasoning: bool = False
    tool_call: bool = False
    input_modalities: tuple[str, ...] = ()

    def price_for(self, prompt_tokens: int) -> Price | None:
        """The highest context tier the prompt exceeds, else the base price."""
        price = self.price
        for tier in self.tiers:
            if prompt_tokens > tier.size:
                price = tier.price
        return price


def _variants(model: str) -> list[str]:
    """Exact id first, then without a ``vendor/`` prefix, without a date snapshot, lower-cased."""
    names = [model]
    if "/" in model:
        names.append(model.rsplit("/", 1)[1])
    names += [s for n in names if (s := _DATE_SUFFIX.sub("", n)) != n]
    names += [low for n in names if (low := n.lower()) != n]
    return list(dict.fromkeys(names))


_PICO: dict[float, int | Decimal] = {}


def _pico(value: float) -> int | Decimal:
    """A price as an exact integer of 1e-12 USD per 1M tokens (a Decimal if it has more digits)."""
    units = _PICO.get(value)
    if units is None:
        exact = _dec(value).scaleb(12)
        units = _PICO[value] = int(exact) if exact == exact.to_integral_value() else exact
    return units


def _dec(value: float) -> Decimal:
    # repr() is the shortest round-tripping literal, i.e. the number as written in the JSON
    return Decimal(repr(value))


class Catalog:
    """Immutable after ``load``; ``with_overrides`` returns a sibling sharing the same index."""

    __slots__ = ("_index", "_overrides", "_memo")

    def __init__(self, index: dict[str, dict[str, ModelInfo]], overrides: _Overrides | None = None) -> None:
        self._index = index
        self._overrides = overrides or {}
        self._memo: dict[tuple[str, str | None], tuple[ModelInfo | None, ModelInfo | None]] = {}

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        """Parse the registry straight into the compact index.

        The stdlib parser's ``object_hook`` turns each model into a small tuple the moment
        it is parsed, so the full tree (~12 MB of dicts) never exists: measured peak RSS
        +11 MB vs +22 MB for ``orjson.loads`` of the whole tree, and ~3 MB vs ~12 MB
        retained afterwards (orjson's freed tree leaves fragmented arenas behind).
        """
        prices: dict[tuple[float | None, ...], Price] = {}
        interned: dict[tuple[str, ...], tuple[str, ...]] = {}
        text = (path or DEFAULT_PATH).read_bytes().decode("utf-8")
        data = json.loads(text, object_hook=lambda d: _compact(d, prices, interned))
        del text
        index: dict[str, dict[str, ModelInfo]] = {}
        for pid, prov in data.pop("providers").items():
            pid = sys.intern(pid)
            index[pid] = {
                mid: ModelInfo(pid, mid, *raw)
                for mid, raw in (prov.get("models") or {}).items()
                if isinstance(raw, tuple)
            }
        del data
        return cls(index)

    def with_overrides(self, overrides: dict[tuple[str, str], dict[str, float | None]]) -> Catalog:
        """Per (serving provider, model) prices that replace the catalog's fields; None values are ignored."""
        clean: _Overrides = {}
        for key, fields in overrides.items():
            unknown = set(fields) - set(_PRICE_FIELDS)
            if unknown:
                raise ValueError(f"price override {key}: unknown field(s) {sorted(unknown)}")
            values = {k: float(v) for k, v in fields.items() if v is not None}
            if values:
                clean[key] = values
        return Catalog(self._index, {**self._overrides, **clean})

    def __len__(self) -> int:
        return sum(len(models) for models in self._index.values())

    def __contains__(self, provider: object) -> bool:
        """Whether a catalog provider id exists (to validate ``catalog_provider`` in config)."""
        return provider in self._index

    def find(self, model: str, provider: str | None = None) -> ModelInfo | None:
        """The serving provider's entry, else the creator's (limits and capabilities)."""
        return self._resolve(model, provider)[0]

    def pricing(self, model: str, provider: str | None = None) -> ModelInfo | None:
        """The entry whose price bills this request: like ``find`` but skips unpriced entries
        (e.g. subscription providers such as ollama-cloud publish no per-token price)."""
        return self._resolve(model, provider)[1]

    def limits(self, model: str, provider: str | None = None) -> tuple[int, int] | None:
        """(context window, max output tokens) of the ``find`` entry, None when unknown."""
        info = self.find(model, provider)
        if info is None or info.context is None or info.output is None:
            return None
        return info.context, info.output

    def cost(self, model: str, provider: str | None, usage: Usage) -> float | None:
        """USD for one request, or None when no price is known.

        Summed exactly, in integer pico-dollars per 1M tokens made from the catalog literals,
        and divided once, so the result is the float nearest the exact amount; binary float
        sums drift (0.7225556697499999 for 0.72255566975) and hand-computed expectations
        would need tolerances.
        """
        info = self.pricing(model, provider)
        price = info.price_for(usage.prompt_tokens) if info is not None else None
        if price is None or price.input is None or price.output is None:
            return None
        inp = _pico(price.input)
        cached = max(usage.cached_tokens, 0)
        written = max(usage.cache_write_tokens, 0)
        uncached = max(usage.prompt_tokens - cached - written, 0)
        completion = max(usage.completion_tokens, 0)
        reasoning = min(max(usage.reasoning_tokens, 0), completion) if price.reasoning is not None else 0
        total = (
            uncached * inp
            + cached * (_pico(price.cache_read) if price.cache_read is not None else inp)
            + written * (_pico(price.cache_write) if price.cache_write is not None else inp)
            + (completion - reasoning) * _pico(price.output)
            + (reasoning * _pico(price.reasoning) if reasoning and price.reasoning is not None else 0)
        )
        if isinstance(total, int):
            return total / 10**18  # pico-USD per 1M tokens → USD: one correctly rounded division
        return float(total / _MILLION / 10**12)

    def _resolve(self, model: str, provider: str | None) -> tuple[ModelInfo | None, ModelInfo | None]:
        key = (model, provider)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        names = _variants(model)
        order = [provider] if provider is not None else []
        order += [p for p in CREATOR_PRIORITY if p != provider]
        found: ModelInfo | None = None
        priced: ModelInfo | None = None
        for pid in order:
            entries = self._index.get(pid)
            if not entries:
                continue
            for name in names:
                info = entries.get(name)
                if info is not None:
                    found = found or info
                    if info.price is not None:
                        priced = info
                    break
            if priced is not None:
                break
        if provider is not None and self._overrides:
            override = next((o for n in names if (o := self._overrides.get((provider, n)))), None)
            if override is not None:
                found, priced = _apply_override(found, priced, provider, model, override)
        result = (found, priced)
        if len(self._memo) >= _MEMO_MAX:
            self._memo.clear()
        self._memo[key] = result
        return result


def _apply_override(
    found: ModelInfo | None, priced: ModelInfo | None, provider: str, model: str, fields: dict[str, float]
) -> tuple[ModelInfo, ModelInfo]:
    """Override fields win; a new base input/output price makes the catalog's tiers meaningless."""
    base = priced or found or ModelInfo(provider=provider, model=model, name=model, price=None)
    price = dataclasses.replace(base.price or Price(), **fields)
    tiers = () if {"input", "output"} & fields.keys() else base.tiers
    target = found or base  # keep the serving entry's limits/capabilities
    info = dataclasses.replace(target, price=price, tiers=tiers)
    return info, info


def _price(raw: JSONObject, prices: dict[tuple[float | None, ...], Price]) -> Price:
    values = tuple(None if (v := raw.get(f)) is None else float(v) for f in _PRICE_FIELDS)
    price = prices.get(values)
    if price is None:
        price = prices[values] = Price(*values)
    return price


def _compact(
    d: JSONObject,
    prices: dict[tuple[float | None, ...], Price],
    interned: dict[tuple[str, ...], tuple[str, ...]],
) -> JSONObject | tuple[object, ...]:
    """json object_hook: a model dict becomes the tuple of ModelInfo fields after (provider, model)."""
    limit = d.get("limit")
    if not isinstance(limit, dict) or "name" not in d:
        return d  # not a model (cost, tier, provider, ...): its parent picks what it needs
    cost = d.get("cost") or {}
    tiers = []
    for t in cost.get("tiers") or ():
        tier = t.get("tier") or {}
        if tier.get("type", "context") == "context" and "size" in tier:  # a missing type means context
            tiers.append(Tier(int(tier["size"]), _price(t, prices)))
    mods = tuple(sys.intern(x) for x in (d.get("modalities") or {}).get("input") or ())
    return (
        d["name"],
        _price(cost, prices) if "input" in cost and "output" in cost else None,
        tuple(sorted(tiers, key=lambda t: t.size)),
        limit.get("context"),
        limit.get("output"),
        bool(d.get("reasoning")),
        bool(d.get("tool_call")),
        interned.setdefault(mods, mods),
    )
