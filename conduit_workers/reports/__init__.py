"""Reports: the nightly cost report (SQL, files) and its task."""
