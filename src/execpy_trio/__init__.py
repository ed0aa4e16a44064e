"""execpy-trio."""
