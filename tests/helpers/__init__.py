"""Helpers of the test suite, one job per module; `tests.util` gathers their names for the tests."""
