"""Routing: model groups, deployment strategies, circuit breakers, provider-key pools and the
resilience pipeline that tries a request's deployments in order.

A strategy orders a request's candidate deployments (``strategies``); the pipeline tries them with
retries, failover and error classification (``pipeline``), skipping deployments whose breaker is open
(``breaker``). What it learns lives in ``RoutingState`` (``learned``), which survives a reload."""
