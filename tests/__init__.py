"""shadow-edge tests; shared fixtures and factories live here (conftest.py, factories.py, *_fixtures.py)."""
