"""The core: request context, errors, config, catalog, SSE, metrics, wire-format and surface types.

The lowest layer. It imports nothing else of the gateway; every other layer may import it."""
