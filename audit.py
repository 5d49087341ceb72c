"""Audit the data set: python audit.py [data.root=...] -> audit.json, duplicates.csv, leaks.csv in the run directory."""
# The same app as the console script cifake-audit: cifake/cli.py.

from cifake.cli import audit

if __name__ == "__main__":
    audit()
