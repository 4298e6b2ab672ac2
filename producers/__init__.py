"""Producers: the `conduit` CLI and the Python API; they enqueue tasks by name."""
