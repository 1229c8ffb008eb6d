"""One-off experiments kept because their question is still live; their results are in RESULTS.md."""
