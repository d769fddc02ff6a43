"""The upstream side of the request path: pooled transport, one exchange with a provider,
dispatch through the resilience pipeline, stream relays and remote-image inlining."""
