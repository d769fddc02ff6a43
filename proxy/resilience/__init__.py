"""The resilience pipeline every upstream call goes through.

A strategy orders a request's candidate deployments (``strategies``); the pipeline tries
them in that order with retries, failover and error classification (``pipeline``), and
skips deployments whose circuit breaker is open (``breaker``). What it learns — breaker
states, latency, in-flight counts, provider-key cooldowns — lives in ``RoutingState``
(``state``), which survives a config reload for deployments that did not change.
"""
