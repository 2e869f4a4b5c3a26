"""Integration tests speak real protocols to real processes, with the generated test clips."""
