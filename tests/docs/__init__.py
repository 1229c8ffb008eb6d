"""Tests: docs and results pages."""
