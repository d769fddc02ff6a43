"""HTTP endpoints: thin ASGI handlers at the bottom of the middleware chain."""
