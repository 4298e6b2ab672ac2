"""History: the SQL history of prompts, calls and feedback, its schema and Alembic migrations."""
