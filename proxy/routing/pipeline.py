"""The one resilience pipeline around a request's candidate deployments.

Every surface hands it an ``attempt`` (send this request to that deployment, up to the
first byte) and gets back an open upstream answer or the error to return. In between:

1. the strategy orders the candidates (``strategies``);
2. deployments are tried in that order, skipping open breakers (tried last, soonest to
   reopen first) and deployments at their declared capacity; a provider key is picked per
   attempt from its pool;
3. each failure is classified: rate limit, overload, server error, timeout or connection
   failure → the next deployment; a refused key (401/403) → the next key, then the next
   deployment, resting what the refusal is evidence against (``_refusal``: the key, the key
   for this model, or nothing); context length exceeded → the model's ``context_fallback``
   if it has one; any other 4xx → returned as is. An attempt that raises ``CannotServe`` (its
   deployment's format cannot carry this request: no embeddings, a field it cannot
   express) is skipped with no verdict on the deployment; its error is the answer only
   when nothing else was tried;
4. when every deployment failed with something a retry may cure (not a timeout: that already
   cost the client the whole wait, nor a refusal), another round follows
   after an exponential backoff with full jitter that honours ``Retry-After`` (a longer
   wait than ``max_retry_wait`` is not waited: the error goes back with its header);
5. when nothing at all could be tried, a 503 with ``Retry-After`` says when to come back.

Every attempt (deployment, status, outcome, latency) is recorded for the request log
whenever there was more than one or one failed.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from llm_proxy.core.errors import ProxyError
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.tokens import estimate_prompt_tokens
from llm_proxy.routing.strategies import order
from llm_proxy.runtime.snapshot import runtime_of

if TYPE_CHECKING:
    from llm_proxy.core.context import Deployment, RequestContext
    from llm_proxy.routing.key_pool import KeyPool
    from llm_proxy.routing.learned import DeploymentState

__all__ = ["CannotServe", "classify", "retry_after", "run"]

U = TypeVar("U")
Attempt = Callable[["Deployment"], Awaitable[U]]

_GATEWAY_CODES = frozenset({"upstream_unreachable", "upstream_error", "upstream_timeout"})
_CONTEXT_LENGTH = re.compile(
    r"context[ _]length|context window|maximum context|prompt is too long|too many tokens"
    r"|exceeds the maximum number of tokens|input is too long|reduce the length",
    re.IGNORECASE,
)
_MAX_FALLBACKS = 3
# The code a wire format gives an upstream error that says the key itself is refused (OpenAI's
# own; Anthropic's authentication_error and Gemini's API_KEY_INVALID are mapped to it).
_KEY_REFUSED = "invalid_api_key"


class CannotServe(Exception):
    """Raised by an attempt before anything is sent: this deployment's wire format cannot
    serve the request (the surface, a capability or a field it lacks), so the pipeline
    moves on to the next one. ``error`` is what the client gets if no deployment could."""

    def __init__(self, error: ProxyError) -> None:
        super().__init__(error.message)
        self.error = error


def classify(exc: ProxyError) -> tuple[str, str]:
    """(kind, breaker outcome) of an upstream failure.

    kinds: ``rate_limit``, ``auth``, ``overloaded``, ``server``, ``timeout``, ``connection``
    (all worth another deployment), ``context_length`` and ``client`` (returned as is)."""
    status = exc.status
    if status == 429:
        return "rate_limit", "neutral"
    if status in (401, 403):
        return "auth", "auth"
    if status in (503, 529) or (status == 502 and exc.code not in _GATEWAY_CODES):
        return "overloaded", "transient"
    if status == 504 and exc.code == "upstream_timeout" or status == 408:
        return "timeout", "failure"
    if status == 502:
        return "connection", "failure"
    if status >= 500:
        return "server", "failure"
    if exc.code == "context_length_exceeded" or (status in (400, 413) and _CONTEXT_LENGTH.search(exc.message)):
        return "context_length", "neutral"
    return "client", "neutral"


def retry_after(exc: ProxyError) -> float | None:
    """Seconds from a ``Retry-After`` header (delta or HTTP date), if the upstream sent one."""
    value = next((v for k, v in exc.headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


async def run(ctx: RequestContext, attempt: Attempt[U]) -> U:
    """Send through ``attempt`` to the best candidate that answers; see the module docstring."""
    runtime = runtime_of(ctx)
    settings = runtime.config.routing
    if not settings.enabled:  # routing off: the first deployment, as it is
        ctx.deployment = ctx.candidates[0]
        try:
            return await attempt(ctx.deployment)
        except CannotServe as skip:
            raise skip.error from None
    for _ in range(_MAX_FALLBACKS + 1):
        try:
            return await _rounds(ctx, attempt)
        except _ContextTooLong as too_long:
            fallback = runtime.routes.context_fallbacks.get(ctx.model or "")
            if fallback is None or fallback == ctx.model:
                raise too_long.error from None
            ctx.route.append(f"context fallback {ctx.model} -> {fallback}")
            ctx.model = fallback
            ctx.candidates = runtime.routes.targets(fallback)
    raise ProxyError(500, "Too many context fallbacks.", type="server_error")


class _ContextTooLong(Exception):
    def __init__(self, error: ProxyError) -> None:
        self.error = error


async def _rounds(ctx: RequestContext, attempt: Attempt[U]) -> U:
    runtime = runtime_of(ctx)
    settings = runtime.config.routing
    state = runtime.routes.learned
    candidates = ctx.candidates
    if len(candidates) > 1:
        name = ctx.strategy or runtime.routes.strategies.get(ctx.model or "") or settings.strategy
        if name != "priority":  # deployments are kept in priority order already
            candidates = order(name, ctx, candidates, state)
    record: list[JSONObject] = []
    failure: ProxyError | None = None
    failed = _Failed()
    tried: Deployment | None = None
    first = candidates[0]
    head = state.deployment(first)
    if (head.breaker.state == "closed" and first.rpm is None and first.tpm is None
            and len(runtime.upstreams.providers[first.provider].api_keys) < 2):
        # The common case, kept lean: a healthy first deployment with one key and no capacity.
        ctx.deployment = first
        ctx.key_index = 0
        head.begin()
        started = time.perf_counter()
        try:
            result = await attempt(first)
        except ProxyError as exc:
            await _on_failure(ctx, attempt, first, head, None, exc, started, failed, record)
            tried = first
        except CannotServe as skip:
            head.end(None, None)
            _skipped(ctx, first, skip.error, started, failed, record)
            tried = first
        except BaseException:  # cancelled (the client left) or a bug: no verdict on the deployment
            head.end(None, None)
            raise
        else:
            ctx.serving = head  # its in-flight count and latency are settled when the request ends
            return result
    for round_ in range(settings.retries + 1):
        if round_:
            failed = _Failed()
        deferred: list[tuple[Deployment, DeploymentState]] | None = None
        for target in candidates:
            if target is tried:  # already tried above, in this first round
                tried = None
                continue
            deployment = state.deployment(target)
            if not deployment.breaker.allow():
                (deferred := deferred or []).append((target, deployment))
                continue
            answer = await _try(ctx, attempt, target, deployment, failed, record)
            if not isinstance(answer, _Failed):
                return answer
        # Open breakers last, soonest to reopen first: never fail blind while one may work. One
        # opened by an authentication failure is not tried: the key will not have changed.
        for target, deployment in sorted(deferred or (), key=lambda item: item[1].breaker.retry_at):
            if deployment.breaker.auth_failed:
                failed.ready_in = min(failed.ready_in, deployment.breaker.retry_at - state.clock())
                continue
            answer = await _try(ctx, attempt, target, deployment, failed, record)
            if not isinstance(answer, _Failed):
                return answer
        if failed.error is None:  # nothing could be tried at all
            if failure is not None:
                raise failure
            if failed.skipped is not None and failed.ready_in == float("inf"):
                raise failed.skipped  # no deployment of this model can serve the request at all
            raise _unavailable(ctx, failed.ready_in)
        failure = failed.error
        if not failed.retryable or round_ == settings.retries:
            break
        wait = settings.retry_backoff * (2 ** round_) * random.random()  # full jitter
        if failed.retry_after is not None:
            if failed.retry_after > settings.max_retry_wait:
                break  # the client hears the upstream's own Retry-After instead of waiting here
            wait = max(wait, failed.retry_after)
        record.append({"wait_ms": round(wait * 1000, 1)})
        await asyncio.sleep(wait)
    assert failure is not None
    raise failure


class _Failed:
    """What one round over the deployments learned, when none of them answered."""

    __slots__ = ("error", "retryable", "retry_after", "ready_in", "skipped")

    def __init__(self) -> None:
        self.error: ProxyError | None = None
        self.skipped: ProxyError | None = None  # the first reason a deployment could not take the request
        self.retryable = False  # a later round might succeed
        self.retry_after: float | None = None  # the shortest Retry-After any deployment asked for
        self.ready_in = float("inf")  # when something skipped becomes tryable, if nothing was tried


async def _try(ctx: RequestContext, attempt: Attempt[U], target: Deployment, deployment: DeploymentState,
               failed: _Failed, record: list[JSONObject], tried: int = 0) -> U | _Failed:
    """One deployment: its answer, or ``failed`` updated (anything not worth failing over is raised).
    ``tried`` is the bit mask of the provider's keys this request already sent here."""
    runtime = runtime_of(ctx)
    state = runtime.routes.learned
    provider = runtime.upstreams.providers[target.provider]
    pool = state.key_pool(provider.name, provider.api_keys) if len(provider.api_keys) > 1 else None
    if pool is not None:
        key_index = pool.pick(target.model, tried)
        if key_index is None:  # every key is resting for this model, or this request tried it
            failed.ready_in = min(failed.ready_in, pool.ready_at(target.model) - state.clock())
            return failed
        ctx.key_index = key_index
    else:
        ctx.key_index = 0
    if target.rpm is not None or target.tpm is not None:
        tokens = _requested_tokens(ctx) if target.tpm is not None else 0
        wait = deployment.admit(target, tokens)
        if wait:
            failed.ready_in = min(failed.ready_in, wait)
            return failed
    ctx.deployment = target
    started = time.perf_counter()
    deployment.begin()
    try:
        result = await attempt(target)
    except ProxyError as exc:
        return await _on_failure(ctx, attempt, target, deployment, pool, exc, started, failed, record, tried)
    except CannotServe as skip:
        deployment.end(None, None)
        deployment.breaker.release()
        _skipped(ctx, target, skip.error, started, failed, record)
        return failed
    except BaseException:  # cancelled (the client left) or a bug: no verdict on the deployment
        deployment.end(None, None)
        deployment.breaker.release()
        raise
    deployment.breaker.record("ok")
    if pool is not None:
        pool.served(ctx.key_index, target.model)
    ctx.serving = deployment  # its in-flight count and latency are settled when the request ends
    if record:
        record.append(_entry(target, 200, "ok", started, None))
    return result


async def _on_failure(ctx: RequestContext, attempt: Attempt[U], target: Deployment, deployment: DeploymentState,
                      pool: KeyPool | None, exc: ProxyError, started: float, failed: _Failed,
                      record: list[JSONObject], tried: int = 0) -> U | _Failed:
    """Classify a failed attempt: rest its key, tell its breaker, record it, and say what next."""
    settings = runtime_of(ctx).config.routing
    deployment.end(None, None)
    kind, outcome = classify(exc)
    wait = retry_after(exc)
    entry = _entry(target, exc.status, kind, started, exc.code or exc.type)
    next_key = False  # this key's problem, not the deployment's: the same request goes on with the next key
    if kind == "auth":
        rest = _refusal(exc, pool, ctx.key_index, target.model, deployment, record)
        entry["rested"] = rest or "none"
        if pool is not None:
            if rest == "key":
                pool.rest(ctx.key_index, settings.breaker.auth_cooldown)
            elif rest == "model":
                pool.rest_model(ctx.key_index, target.model, settings.breaker.auth_cooldown)
            outcome, next_key = "neutral", True
        elif rest is None:
            outcome = "neutral"
        # else one key, rested for this model: the deployment's breaker opens, and it is that pair
    elif kind == "rate_limit" and pool is not None:
        pool.rest(ctx.key_index, wait if wait is not None else settings.key_cooldown)
        next_key = True
    deployment.breaker.record(outcome)
    record.append(entry)
    ctx.metadata["attempts"] = record  # the log row shows every attempt once one failed
    if kind == "context_length":
        raise _ContextTooLong(exc) from None
    if kind == "client":
        raise exc
    failed.error = exc  # what the client hears if no other key or deployment answers
    # Worth another round later: overloads, rate limits, server and connection errors. Not a
    # refusal (every key it could go to was tried just now) nor a timeout: that already cost
    # the client the whole wait.
    if kind not in ("auth", "timeout"):
        failed.retryable = True
    if wait is not None:
        failed.retry_after = wait if failed.retry_after is None else min(failed.retry_after, wait)
    if next_key and deployment.breaker.allow():
        return await _try(ctx, attempt, target, deployment, failed, record, tried | 1 << ctx.key_index)
    return failed


def _refusal(exc: ProxyError, pool: KeyPool | None, index: int, model: str, deployment: DeploymentState,
             record: list[JSONObject]) -> str | None:
    """What a 401/403 is evidence against, and so what rests for ``auth_cooldown``:

    * ``"key"`` (the key, for every model): the provider says the key itself is refused
      (``invalid_api_key``), another key of the provider is still usable (the last working key
      never rests for every model on one request), and this request has not already rested a
      whole key (two keys refused by one request point at the request);
    * ``None`` (nothing): the provider does not say so and this key has served this model
      before, so the refusal is about something in the request (a feature the key may not use);
    * ``"model"`` (this key for this model only) otherwise: a model the key may not use.

    With one key, "served before" is the deployment's (one key, one model) having answered, and
    resting the pair is opening the deployment's breaker."""
    if exc.code == _KEY_REFUSED:
        whole = pool is not None and pool.others_usable(index) and not any(e.get("rested") == "key" for e in record)
        return "key" if whole else "model"
    served = pool.has_served(index, model) if pool is not None else deployment.latency_ms is not None
    return None if served else "model"


def _skipped(ctx: RequestContext, target: Deployment, error: ProxyError, started: float, failed: _Failed,
             record: list[JSONObject]) -> None:
    """A deployment passed over unasked: recorded, so the log row says why it did not answer."""
    record.append(_entry(target, error.status, "skipped", started, error.code or error.type))
    ctx.metadata["attempts"] = record
    if failed.skipped is None:
        failed.skipped = error


def _requested_tokens(ctx: RequestContext) -> int:
    body = ctx.body or {}
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens") or 0
    return estimate_prompt_tokens(body) + (limit if isinstance(limit, int) else 0)


def _entry(target: Deployment, status: int, outcome: str, started: float, error: str | None) -> JSONObject:
    return {"provider": target.provider, "model": target.model, "status": status, "outcome": outcome,
            "ms": round((time.perf_counter() - started) * 1000, 2), "error": error}


def _unavailable(ctx: RequestContext, ready_in: float) -> ProxyError:
    seconds = max(1, int(ready_in + 0.999)) if ready_in != float("inf") else 30
    return ProxyError(
        503, f"No deployment of `{ctx.model}` can take this request now (open circuits, resting keys or "
             f"capacity reached); retry in {seconds} s.",
        type="server_error", code="no_deployment_available", headers={"retry-after": str(seconds)},
    )
