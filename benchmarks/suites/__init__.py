"""Benchmark suites a user runs: `python -m benchmarks.suites.NAME --help`."""
