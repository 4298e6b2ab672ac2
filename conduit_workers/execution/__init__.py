"""Execution: LLM clients, model checks, the budget ledger and pacing, call metrics, cooldowns,
and the executor task."""
