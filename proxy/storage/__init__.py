"""SQLite on disk: the request log (one writer thread, batched) and the queries over it."""
