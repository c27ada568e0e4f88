"""YAML option files: read and checked like the command line; the resolved configuration saved.

YAML values are converted and checked exactly like command-line values (type,
choices and bounds), and a file that repeats a key, names an unknown option or holds
anything but a map is a ConfigError naming the file.
"""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path

import yaml

from continual.config.errors import ConfigError
from continual.config.options import OPTIONS, Option
from continual.runtime.files import atomic_write


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one map (PyYAML keeps the last)."""


def _construct_unique_map(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    """Build a map, raising on duplicate keys so a file cannot contradict itself."""
    keys = [loader.construct_object(key_node) for key_node, _ in node.value]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {duplicates}", node.start_mark)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_map)


def load_config_file(path: Path | str) -> dict[str, object]:
    """Read a YAML map of ``option: value`` (an option file or a saved config).

    An empty file is an empty map; anything else that is not a map of string
    keys is a ConfigError naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read option file {path}: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a map of option: value, got {type(data).__name__}")
    bad_keys = [key for key in data if not isinstance(key, str)]
    if bad_keys:
        raise ConfigError(f"{path}: option names must be strings, got {bad_keys!r}")
    return data


def _unknown_key_message(key: str, path: Path) -> str:
    """Name the key and the file, and suggest the closest option."""
    message = f"{path}: unknown option {key!r}"
    if key == "options":
        return message + " (option files cannot include other option files)"
    underscored = key.replace("-", "_")
    if underscored in OPTIONS:
        return message + f" (keys use underscores: {underscored!r})"
    close = difflib.get_close_matches(key, [d for d in OPTIONS if d != "options"], n=1)
    return message + (f" (did you mean {close[0]!r}?)" if close else "")


def _convert_item(option: Option, item: object) -> object:
    """Convert one scalar the way argparse converts one command-line word."""
    if isinstance(item, (list, dict)):
        raise ValueError(f"expected a single value, got {type(item).__name__}")
    if isinstance(item, bool):
        raise ValueError("expected a value, got a boolean")
    assert option.type is not None, "booleans are converted without a type"
    converted = option.type(str(item))
    if option.choices is not None and converted not in option.choices:
        choices = ", ".join(repr(c) for c in option.choices)
        raise ValueError(f"{converted!r} is not one of {choices}")
    if option.bounds is not None and converted not in option.bounds:
        raise ValueError(f"must be {option.bounds}")
    return converted


def _convert_yaml_value(option: Option, value: object) -> object:
    """Check and convert a YAML value with the option's own type and choices."""
    if value is None:
        if option.accepts_null:
            return None
        raise ValueError("null is not allowed for this option")
    if option.yaml_value is not None:
        return option.yaml_value(value)
    if option.type is None:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if option.nargs is None:
        return _convert_item(option, value)
    items = value if isinstance(value, list) else [value]
    if option.nargs == "+" and not items:
        raise ValueError("expected at least one value")
    return [_convert_item(option, item) for item in items]


def _read_option_file(path: Path) -> dict[str, object]:
    """Validated ``dest -> value`` of one option file; errors name key and file."""
    values: dict[str, object] = {}
    for key, value in load_config_file(path).items():
        option = OPTIONS.get(key)
        if option is None or key == "options":
            raise ConfigError(_unknown_key_message(key, path))
        try:
            values[key] = _convert_yaml_value(option, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{path}: option {key!r}: invalid value {value!r}: {exc}") from exc
    return values


def read_option_files(paths: list[str]) -> dict[str, object]:
    """Merge option files in order: a later file overrides an earlier one."""
    merged: dict[str, object] = {}
    for path in paths:
        merged.update(_read_option_file(Path(path)))
    return merged


def _plain(value: object, key: str) -> object:
    """Plain YAML data only, so a saved config loads with yaml.safe_load."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item, key) for item in value]
    raise ConfigError(f"option {key!r}: value of type {type(value).__name__} is not plain data")


def config_to_dict(cfg: argparse.Namespace) -> dict[str, object]:
    """The configuration as a plain-data dict (a copy: the namespace is untouched)."""
    return {key: _plain(value, key) for key, value in vars(cfg).items()}


def save_config(options: dict[str, object], path: Path) -> None:
    """Write the resolved configuration (``config_to_dict``) as YAML next to the run, atomically, so a
    crash never leaves a half-written config that a resumed run would read."""
    text = yaml.safe_dump(options, sort_keys=False, default_flow_style=None)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
