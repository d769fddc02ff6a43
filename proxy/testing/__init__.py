"""Test doubles for llm-proxy: standalone servers that stand in for real providers.

Nothing here imports the rest of the ``proxy`` package, so a bug in the gateway can
never leak into the double that is meant to catch it.
"""
