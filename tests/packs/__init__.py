"""Tests: packs."""
