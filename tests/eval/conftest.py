"""Shared pieces of the evaluation tests (markers are registered in pyproject.toml)."""
