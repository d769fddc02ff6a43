"""A classifier group's question to its selector model, asked through the gateway's own dispatch.

The group-routing stage gets this as its ``classify`` callable (it imports only the core),
so any provider can classify. The call is a request of its own: one request-log row
(endpoint ``classifier``) with its tokens and cost, sharing the client's request id as a
prefix; its cost is charged to the client's key by the rate-limit stage.
"""

from __future__ import annotations

import time

from llm_proxy.core.context import RequestContext
from llm_proxy.core.errors import ProxyError
from llm_proxy.runtime.request_end import finish_request
from llm_proxy.runtime.snapshot import runtime_of
from llm_proxy.upstream.dispatch import complete_chat

__all__ = ["classify_via_gateway"]


async def classify_via_gateway(ctx: RequestContext, model: str, prompt: str) -> str:
    """Ask ``model`` the classifier ``prompt`` on behalf of ``ctx``; its answer's text."""
    runtime = runtime_of(ctx)
    sub = RequestContext(ctx.request_id + ".classifier", ctx.runtime, "classifier")
    sub.client = ctx.client
    sub.body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0}
    sub.body_dirty = True
    sub.requested_model = sub.model = model
    try:
        sub.candidates = runtime.routes.candidates(model, model, None)
        completion = await complete_chat(sub)
        sub.status = 200
        choices = completion.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content") or "")
    except ProxyError as exc:
        sub.fail(exc.status, exc.type, exc.message)
        raise
    except BaseException:
        sub.fail(499, "cancelled", "classifier call cancelled or failed")
        raise
    finally:
        sub.finished_at = time.perf_counter()
        sub.cost = runtime.pricing.cost(sub.deployment, sub.usage, sub.model, sub.group)
        finish_request(sub)
        if sub.cost:  # the client's key pays for it too (charged by the rate-limit layer)
            ctx.metadata.setdefault("side_costs", []).append((sub.started_wall, sub.cost))
