"""Profilers: where a decode step's time goes (per op, per graph, per kernel, per thread pool)."""
