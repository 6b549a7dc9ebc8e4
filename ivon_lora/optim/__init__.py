"""The IVON optimizer: pure torch (no Hugging Face import, enforced by tests/test_imports.py)."""

from .ivon import IVON, ivon

__all__ = ["IVON", "ivon"]
