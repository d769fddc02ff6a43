"""The request path's stages, one pure ASGI middleware each (auth, alias, group routing, rate
limit, metering, stream wrapping), outermost the request context. They import only the core."""
