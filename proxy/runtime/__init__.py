"""The runtime snapshot a request sees, how it is built from the file config and the database
overlay, and how a reload swaps it.

``snapshot`` (the frozen ``Runtime`` and its small parts), ``provider``, ``upstreams``,
``routes`` and ``pricing`` (the larger parts), ``build`` (the one builder), ``services``
(what outlives a snapshot: learned state, database keys), ``holder`` (start, reload, close),
``overlay`` (the admin API's rows over the file), ``request_end`` and ``classifier`` (what
the chain is handed to call below itself)."""
