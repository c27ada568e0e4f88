"""Helpers of the scripts in scripts/, not run on their own: an entry script run as ``python scripts/X.py``
has scripts/ first on its path, so it imports them as ``from lib.bench_common import ...``."""
