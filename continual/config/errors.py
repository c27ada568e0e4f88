"""The one exception of the configuration layer."""
from __future__ import annotations


class ConfigError(ValueError):
    """An unreadable or invalid option file, or an inconsistent configuration: main.py prints it on one
    line and exits with status 2, before any long work."""
