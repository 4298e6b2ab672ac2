"""One module per role (router, executor, feedback): ``handle_*`` functions plus thin tasks."""
