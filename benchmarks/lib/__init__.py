"""Helpers the benchmark suites share: timing rounds, presets, the artifacts cache, the systems compared, report writers."""
