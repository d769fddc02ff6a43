"""Access control on the request path: client-key lookup, rate windows, spend ledger."""
