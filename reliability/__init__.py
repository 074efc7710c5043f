"""Reliability harnesses: scripts run from the repository root (``python -m reliability.<x>``)
that drive the real event path with hostile input, crashes or outages and verify its promises."""
