"""Config values: dotted keys, `--set` overrides read as YAML, each value checked against its field's type, and
`one_of` for the checks of every layer. The bottom of the config: it imports only the schema, so any layer can use
it (the checks that need the layers' registries are `checks.py`'s, above them).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Union

import yaml

from medkeras.config.schema import Config
from medkeras.errors import ConfigError


STUDY_INPUTS = ("slab", "series", "volume")  # model.input values whose items are whole CT studies


def is_study(cfg) -> bool:
    """Whether a run's items are CT studies (`model.input` slab, series or volume) rather than slices."""
    return cfg.model.input in STUDY_INPUTS


def plane_size(cfg) -> int:
    """The in-plane size training ends at, which progressive resizing (`train.size_schedule`) starts below:
    `data.image_size` for slices; a study's H (= W) at `data.volume_size`, its depth always kept."""
    if is_study(cfg) and cfg.data.volume_size:
        return int(cfg.data.volume_size[1])
    return int(cfg.data.image_size)


def one_of(key, value, allowed) -> None:
    """Refuse `value` for `key` unless it is one of `allowed`, naming the closest allowed value."""
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (one of: {', '.join(map(str, allowed))})"
        raise ConfigError(f"config key '{key}': unknown value '{value}'{hint}")


def _all_keys(cls, prefix="") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        sub = _nested_class(cls, f.name)
        if sub is not None:
            keys.extend(_all_keys(sub, key + "."))
    return keys


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _nested_class(cls, name):
    hint = _hints(cls)[name]
    return hint if dataclasses.is_dataclass(hint) else None


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, hint, value):
    """Check `value` against the field's type hint; ints widen to floats, everything else must match."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, args[0], value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    expected = origin or hint
    if expected is list and isinstance(value, (str, int, float)):
        return [value]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' must be {getattr(expected, '__name__', expected)}, got {value!r}")
    return value


def _apply(obj, values: dict, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {values!r}")
    hints = _hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = prefix + str(name)
        if name not in names:
            raise _unknown_key(key)
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(key, hints[name], value))


def set_key(cfg: Config, key: str, value) -> None:
    """Set one dotted key (`train.epochs`) to an already-parsed value, with the same checks as YAML."""
    parts = key.split(".")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    _apply(cfg, nested)


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ("train.epochs", 3); the value is read as YAML (`[a, b]`, `true`, `null`, `1e-3`)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {raw!r}") from exc
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "1e-3" as a string; users mean a number
    return key.strip(), value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def from_dict(values: dict) -> Config:
    """A saved config (`config.yaml`, a model's meta) as the typed object; types checked, not re-validated (it was
    validated before it was saved; `validate` it where it may have been edited)."""
    cfg = Config()
    _apply(cfg, values)
    return cfg
