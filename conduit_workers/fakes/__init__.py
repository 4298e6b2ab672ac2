"""In-memory fakes of the ports for tests (the history, an LLM)."""
