"""Accounts: dashboard users and their passwords, admin sessions, login throttling, and
provider secrets encrypted at rest. Plain synchronous stores over SQLite; the admin API
(``llm_proxy.admin``) calls them from worker threads."""

__all__: list[str] = []
