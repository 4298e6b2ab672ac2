"""Learning: posterior store, recent prompts, feedback and re-ask tasks, recovery of lost work."""
