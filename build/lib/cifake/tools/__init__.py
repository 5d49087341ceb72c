"""Developer tools run with python -m, e.g. python -m cifake.tools.bench; nothing in the package imports them."""
