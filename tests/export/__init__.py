"""Tests: export."""
