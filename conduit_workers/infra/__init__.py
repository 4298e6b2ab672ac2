"""Shared infrastructure: Redis keys and batches, task delivery, the worker runtime, the beat
lock, the broker epoch, dead letters, Flower defaults."""
