"""Data audit: exact and near duplicates within and across splits, and the test images that leak
from train (``python audit.py``; :func:`leaked_test_files` for other jobs)."""

from cifake.audit.duplicates import Leak, find_leaks, leaked_test_files

__all__ = ["Leak", "find_leaks", "leaked_test_files"]
