"""Constants shared by the registration tests (importable: conftest.py itself is not meant to be imported)."""

FAST = dict(levels=(4.0, 2.0))
"""Levels 1/4 and 1/2 of the 200 x 200 demo detector: the CI-sized registration."""
