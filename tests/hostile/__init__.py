"""Hostile-input corpus: ``generate.py`` writes it (``tests/data/bad/``, never committed)."""
