"""Inbound API surfaces other than OpenAI chat: each translates its requests to chat (the hub)
and chat results back into its own response and event shapes. Pure, like the provider
translators: no HTTP, no routing, no storage."""
