"""Configuration: the option table, YAML option files, validation, and typed settings.

One source of configuration: parser defaults, then the YAML
files named by ``--options`` in order (later files win), then explicit
command-line flags, which always win wherever they appear. The files' values
are installed as parser defaults *before* the real parse (as timm does), so a
file can never silently override the command line nor skip validation. Every
error is a ``ConfigError``. ``settings_from`` turns the parsed namespace into
the frozen settings the rest of the package reads.
"""
from __future__ import annotations

import argparse

from continual.config.errors import ConfigError
from continual.config.files import read_option_files
from continual.config.parser import build_parser
from continual.config.settings import Settings, settings_from
from continual.config.validate import validate_config

__all__ = ["ConfigError", "Settings", "parse_config", "settings_from"]


def parse_config(argv: list[str] | None = None) -> argparse.Namespace:
    """Resolve defaults < option files (in order) < explicit command-line flags, then validate.

    The first parse validates the command line and finds ``--options``; the
    files' values then become parser defaults, so the second parse lets every
    explicit flag win, wherever it appears. Command-line errors exit like
    argparse (status 2); file and consistency errors raise ConfigError.
    """
    parser = build_parser()
    files = parser.parse_args(argv).options
    parser.set_defaults(**read_option_files(files))
    cfg = parser.parse_args(argv)
    validate_config(cfg)
    return cfg
