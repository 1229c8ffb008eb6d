"""shadow-edge benchmarks: suites/ (what a user runs), lib/ (shared helpers), profile/ (profilers), experiments/ (one-offs). Run from the repository root as `python -m benchmarks.suites.NAME`."""
