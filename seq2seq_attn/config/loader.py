"""The generic half of the configuration: YAML in and out, ``--set`` overrides, and the walk
from plain mappings to typed dataclasses that reports every bad key or value as a
:class:`ConfigError` naming the key and the closest valid one.

Nothing here knows the sections; :mod:`seq2seq_attn.config.sections` and
:mod:`seq2seq_attn.config.model` declare them.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, TypeVar

import yaml

SectionT = TypeVar("SectionT")


class _YAMLLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``5e-4`` as a float (YAML 1.2), not as a string."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> object:
    """Parse YAML text safely (no Python objects), reading exponents like ``1e-3`` as floats."""
    return yaml.load(text, Loader=_YAMLLoader)  # a SafeLoader subclass: safe


class ConfigError(ValueError):
    """An invalid configuration key or value; the message names the key, the value and the fix."""


def require(condition: bool, key: str, value: object, fix: str) -> None:
    """Raise :class:`ConfigError` for ``key = value`` unless ``condition``; ``fix`` says what to do.

    ``key`` is the dotted path the user writes (``model.num_heads``).
    """
    if not condition:
        raise ConfigError(f"{key}: invalid value {value!r}; {fix}")


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to ``name`` (for "did you mean" hints), or None."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def from_mapping(cls: type[SectionT], values: object, path: str) -> SectionT:
    """Build dataclass ``cls`` from a mapping, checking every key and value type (and that
    every float, in a tuple or optional too, is finite).

    ``path`` is the dotted name of the section in the YAML (``"train"``), used in messages.
    Impossible values are then rejected by the dataclass's own ``__post_init__``.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {values!r}")
    names = [field.name for field in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in names:
            hint = closest(str(key), names)
            suggestion = f"did you mean '{path}.{hint}'? " if hint else ""
            raise ConfigError(
                f"{path}.{key}: unknown key; {suggestion}valid keys: {', '.join(names)}"
            )
    kwargs = {key: coerce(hints[key], value, f"{path}.{key}") for key, value in values.items()}
    return cls(**kwargs)


def coerce(expected: object, value: object, key: str) -> object:
    """Check ``value`` against the type annotation ``expected`` and return it in that type."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if dataclasses.is_dataclass(expected):
        return from_mapping(expected, value, key)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) != 1:
            raise TypeError(f"{key}: only `X | None` unions are supported in config dataclasses")
        return coerce(options[0], value, key)
    if origin is Literal:
        if value not in args:
            hint = closest(str(value), [str(arg) for arg in args])
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            choices = ", ".join(repr(arg) for arg in args)
            raise ConfigError(
                f"{key}: invalid value {value!r}{suggestion}; choose one of {choices}"
            )
        return value
    if origin in (tuple, list):
        return _coerce_sequence(expected, value, key)
    return _coerce_scalar(expected, value, key)


def _coerce_sequence(expected: object, value: object, key: str) -> object:
    """Lists and tuples (``tuple[X, X]`` fixed length, ``tuple[X, ...]`` and ``list[X]`` any)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if origin is tuple and Ellipsis not in args:
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(arg, item, key) for arg, item in zip(args, value, strict=True))
    items = [coerce(args[0], item, key) for item in value]
    return tuple(items) if origin is tuple else items


_SCALAR_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _coerce_scalar(expected: object, value: object, key: str) -> object:
    """``bool``, ``int``, ``float`` (ints accepted) and ``str``; bools are never numbers."""
    if expected not in _SCALAR_NAMES:
        raise TypeError(f"{key}: unsupported annotation {expected!r} in the config dataclasses")
    if expected in (bool, str):
        ok = isinstance(value, expected)
    else:
        numeric = (int, float) if expected is float else (int,)
        ok = isinstance(value, numeric) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"{key}: expected {_SCALAR_NAMES[expected]}, got {value!r}")
    return _finite(value, key) if expected is float else value


_FINITE_FIX = (
    "use a finite number (.nan, .inf and numbers beyond 1.8e308 are refused; a key that may be "
    "unset takes null)"
)


def _finite(value: int | float, key: str) -> float:
    """``value`` as a finite float: NaN or infinity means nothing in any config key (a limit
    that may be absent is ``null``), and each would fail far from the config."""
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        raise ConfigError(f"{key}: invalid value (an int beyond 1.8e308); {_FINITE_FIX}") from None
    require(math.isfinite(number), key, number, _FINITE_FIX)
    return number


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping.

    Returns a new mapping; unknown keys are reported later, by :func:`from_mapping`.
    """
    result = copy.deepcopy(raw)
    for override in overrides:
        dotted, sep, text = override.partition("=")
        parts = dotted.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(
                f"--set {override!r}: expected section.key=value, e.g. --set train.lr=0.001"
            )
        node = result
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or an empty section in the YAML
                node[part] = {}
            child = node[part]
            if not isinstance(child, dict):
                raise ConfigError(f"--set {override!r}: {part!r} holds a value, not a section")
            node = child
        try:
            node[parts[-1]] = parse_yaml(text) if text.strip() else None
        except ValueError as error:  # an int of over 4300 digits (Python's conversion limit)
            raise ConfigError(f"--set {override!r}: invalid value: {error}") from None
    return result


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping from ``path``; syntax errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    try:
        raw = parse_yaml(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"{path}:{where}: invalid YAML: {error.problem}") from None
    except ValueError as error:  # an int of over 4300 digits (Python's conversion limit)
        raise ConfigError(f"{path}: invalid value: {error}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def to_yaml(section: object) -> str:
    """Serialise a config dataclass to YAML that :func:`from_mapping` reads back unchanged."""
    return yaml.safe_dump(to_plain(section), sort_keys=False, allow_unicode=True)


def to_plain(section: object) -> dict:
    """A config dataclass as plain dicts, lists and scalars (for YAML and for checkpoints)."""

    def plain(value: object) -> object:
        if isinstance(value, tuple | list):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(dataclasses.asdict(section))


def first_difference(
    saved: object, current: object, key: str, labels: tuple[str, str] = ("in the run", "now")
) -> str | None:
    """The first dotted key where two plain configs differ, with both values (each followed by
    its label), or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for name in saved.keys() | current.keys():
            found = first_difference(saved.get(name), current.get(name), f"{key}.{name}", labels)
            if found:
                return found
        return None
    if saved == current:
        return None
    return f"{key}: {saved!r} {labels[0]}, {current!r} {labels[1]}"
