"""Adapters: Redis posterior store, SQL history, pydantic-ai client, embedder."""
