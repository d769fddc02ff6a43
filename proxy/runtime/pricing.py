"""The pricing part: the catalog with the config's and the admin API's prices laid over it,
and the discounts running, as metering and admission read them.

A model without any price is billed at its group's price when the request came through a
group priced on the serving provider; a discount still running scales the result (checked
per request, so an expiry needs no reload).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from llm_proxy.core.catalog import Catalog
from llm_proxy.core.context import Deployment, Usage
from llm_proxy.runtime.provider import ProviderRuntime

__all__ = ["PricingTable", "build_pricing", "shared_catalog"]


@lru_cache(maxsize=1)
def shared_catalog() -> Catalog:
    """The packaged catalog, parsed once per process (it is 3.6 MB of JSON)."""
    return Catalog.load()


@dataclass(frozen=True, slots=True)
class PricingTable:
    catalog: Catalog
    catalog_ids: Mapping[str, str]  # provider -> the catalog's name for it
    priced: Mapping[str, frozenset[str]]  # provider -> the names it has a configured price for
    discounts: Mapping[str, tuple[float, float]]  # model or group -> (cost multiplier, expires at epoch)

    def cost(self, deployment: Deployment | None, usage: Usage | None, model: str | None,
             group: str | None) -> float | None:
        """The request's cost at the serving provider's (or the model creator's) catalog price."""
        if usage is None or deployment is None:
            return None
        catalog_id = self.catalog_ids[deployment.provider]
        cost = self.catalog.cost(deployment.model, catalog_id, usage)
        if cost is None and group is not None and group in self.priced[deployment.provider]:
            cost = self.catalog.cost(group, catalog_id, usage)
        if cost and self.discounts:
            discount = self.discounts.get(model or "") or (self.discounts.get(group) if group else None)
            if discount is not None and time.time() < discount[1]:
                cost *= discount[0]
        return cost

    def estimate(self, deployment: Deployment, prompt_tokens: int, completion_tokens: int) -> float:
        catalog_id = self.catalog_ids.get(deployment.provider)
        if catalog_id is None:
            return 0.0
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return self.catalog.cost(deployment.model, catalog_id, usage) or 0.0


def build_pricing(providers: Mapping[str, ProviderRuntime], discounts: Mapping[str, tuple[float, float]],
                  catalog: Catalog | None = None) -> PricingTable:
    """Prices from each provider's ``prices:`` over ``catalog`` (default: the packaged one)."""
    catalog = catalog if catalog is not None else shared_catalog()
    overrides = {
        (p.catalog_id, model): {k: v for k, v in dataclasses.asdict(price).items() if v is not None and k != "per_image"}
        for p in providers.values()
        for model, price in p.config.prices.items()
    }
    return PricingTable(
        catalog=catalog.with_overrides(overrides) if overrides else catalog,
        catalog_ids={n: p.catalog_id for n, p in providers.items()},
        priced={n: frozenset(p.config.prices) for n, p in providers.items()},
        discounts=dict(discounts),
    )
