"""The runtime builder and holder on their own: a frozen snapshot of parts, built once from the
file config, the database overlay and the long-lived services; start makes the serving copy;
a reload keeps what was learned and the pools that did not change, and closes the others
after their grace period (in tasks the holder keeps referenced until they are done)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from llm_proxy.core.config import parse_config
from llm_proxy.core.context import Deployment, Usage
from llm_proxy.runtime.build import build_runtime
from llm_proxy.runtime.holder import RuntimeHolder
from llm_proxy.runtime.overlay import ModelOverride, Overlay, StoredOverlay
from llm_proxy.runtime.services import Services


def raw_config(tmp_path: Path, **providers: dict[str, Any]) -> dict[str, Any]:
    base = {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-upstream-000",
            "timeouts": {"connect": 1, "read": 1, "total": 0.05}}
    return {
        "database": {"path": str(tmp_path / "holder.db")},
        "providers": {name: {**base, **spec} for name, spec in providers.items()},
        "aliases": {"fast": "gpt-4o"},
    }


def test_the_snapshot_is_frozen_and_made_of_one_part_per_stage(tmp_path: Path) -> None:
    runtime = build_runtime(parse_config(raw_config(tmp_path, a={"models": ["gpt-4o"]}), {}))
    for part in ("keys", "intake", "routes", "pricing", "upstreams", "plugins", "request_log"):
        assert getattr(runtime, part) is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        runtime.keys = runtime.keys  # type: ignore[misc]
    for part in (runtime.intake, runtime.routes, runtime.pricing, runtime.upstreams, runtime.request_log,
                 runtime.upstreams.providers["a"]):
        assert dataclasses.is_dataclass(part) and type(part).__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert runtime.intake.aliases == {"fast": "gpt-4o"}
    assert [t.provider for t in runtime.routes.candidates("gpt-4o", "fast", None)] == ["a"]
    assert not runtime.routes.may_add_steps("gpt-4o")
    assert runtime.upstreams.providers["a"].transport is None  # building opens nothing


def test_the_overlay_is_an_input_of_the_build_not_a_patch_afterwards(tmp_path: Path) -> None:
    config = parse_config(raw_config(tmp_path, a={"models": ["gpt-4o"]}, b={"models": ["gpt-4o"]}), {})
    stored = StoredOverlay(Overlay(providers={"b": False},
                                   models={"gpt-4o": ModelOverride(discount_pct=50, discount_expires_at=time.time() + 60)}))
    runtime = build_runtime(config, stored)
    b = runtime.upstreams.providers["b"]
    assert (b.enabled, b.disabled_reason) == (False, "disabled through the admin API")
    assert [t.provider for t in runtime.routes.targets("gpt-4o")] == ["a"]
    usage = Usage(prompt_tokens=1_000_000)
    full = build_runtime(config).pricing.cost(Deployment("a", "gpt-4o"), usage, "gpt-4o", None)
    assert full and runtime.pricing.cost(Deployment("a", "gpt-4o"), usage, "gpt-4o", None) == pytest.approx(full / 2)


def test_start_makes_the_serving_copy_and_leaves_the_built_one_alone(tmp_path: Path) -> None:
    holder = RuntimeHolder.build(parse_config(raw_config(tmp_path, a={"models": ["gpt-4o"]}), {}))
    built = holder.current

    async def run() -> None:
        await holder.start()
        try:
            assert holder.started and holder.current is not built
            assert holder.current.upstreams.providers["a"].transport is not None
            assert built.upstreams.providers["a"].transport is None
            assert holder.current.request_log.writer is built.request_log.writer
        finally:
            await holder.aclose()
        assert not holder.started and holder.closed

    asyncio.run(run())


def test_reload_keeps_what_was_learned_and_retires_changed_pools_after_their_grace(tmp_path: Path) -> None:
    raw = raw_config(tmp_path, same={"models": ["gpt-4o"]}, moved={"models": ["gpt-4o-mini"]})
    holder = RuntimeHolder.build(parse_config(raw, {}), services=Services())

    async def run() -> None:
        await holder.start()
        try:
            before = holder.current
            same, moved = before.upstreams.providers["same"], before.upstreams.providers["moved"]
            same.record_error("HTTP 500: boom")
            breaker = before.routes.learned.deployment(before.routes.models["gpt-4o"][0]).breaker
            closed: list[str] = []
            assert moved.transport is not None

            async def record_close() -> None:
                closed.append("moved")

            moved.transport.aclose = record_close  # type: ignore[method-assign]
            raw["providers"]["moved"]["base_url"] = "http://127.0.0.1:2/v1"  # a different upstream
            raw["aliases"] = {"fast": "gpt-4o", "cheap": "gpt-4o-mini"}
            after = await holder.reload(parse_config(raw, {}))

            assert after is holder.current and after.intake.aliases["cheap"] == "gpt-4o-mini"
            kept = after.upstreams.providers["same"]
            assert kept.transport is same.transport  # an unchanged pool is lent to the new snapshot
            assert kept.last_error == "HTTP 500: boom"  # and so is what /health says about it
            assert after.routes.learned.deployment(after.routes.models["gpt-4o"][0]).breaker is breaker
            assert after.upstreams.providers["moved"].transport is not moved.transport
            assert after.upstreams.providers["moved"].last_error is None
            assert closed == []  # requests in flight on the old snapshot may still use it
            deadline = time.monotonic() + 5
            while not closed and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert closed == ["moved"]  # closed once its grace (timeouts.total) was over
        finally:
            await holder.aclose()

    asyncio.run(run())
