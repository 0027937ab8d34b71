"""Benchmarks: every comparison is a ratio of figures measured side by side in one run."""
