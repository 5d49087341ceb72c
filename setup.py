"""The one packaging setting pyproject.toml cannot say: the packages are every package under cifake/, found
afresh at each build (a new subpackage needs no edit here), *plus* ``cifake.conf``, whose files are the checkout's
top-level conf/ (pyproject.toml's ``package-dir`` maps it and its ``package-data`` takes the YAML). Everything
else about the package is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["cifake", "cifake.*"], exclude=["*.__pycache__"]), "cifake.conf"])
