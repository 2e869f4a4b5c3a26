"""Integration tests: the real servers of each protocol, started as processes."""
