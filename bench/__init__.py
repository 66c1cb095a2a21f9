"""Benchmarks: `make bench` runs them (bench/__main__.py)."""
