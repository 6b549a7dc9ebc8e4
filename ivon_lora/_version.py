"""The library's version (a leaf: the posterior artifact and result files record it)."""

__version__ = "0.1.0"
