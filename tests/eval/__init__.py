"""Tests: eval."""
