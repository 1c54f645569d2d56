"""Thin entrypoints for ``ray job submit``: parse, validate, call :mod:`hbt`."""
