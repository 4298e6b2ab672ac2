"""Conduit's domain: pure Python and numpy.

No module here imports celery, redis, sqlalchemy or pydantic_ai; a test holds that rule.
"""
