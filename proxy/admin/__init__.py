"""The JSON admin API under ``/api/``: users, clients and keys, providers, models, groups, usage."""
