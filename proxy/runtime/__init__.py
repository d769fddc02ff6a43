"""The runtime snapshot a request sees, how it is built from the file config and the database
overlay, and how a reload swaps it."""
