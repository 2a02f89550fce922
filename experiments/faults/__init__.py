"""The fault suite: real training runs with injected causes, for measuring the run doctor."""
