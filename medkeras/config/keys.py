"""Every config key with its type, default and meaning, read from the typed config itself (`schema.py`: each field's
comment is its meaning), for `medkeras config` and the README's table, so the two never drift apart."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import typing

from medkeras.config import schema
from medkeras.config.schema import Config


def _comments(cls) -> dict:
    """{field: its comment}: the comment on the field's line, after any full-line comments just above it."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    out, above = {}, []
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    trailing = {t.start[0]: t.string[1:].strip() for t in tokens if t.type == tokenize.COMMENT}
    names = {f.name for f in dataclasses.fields(cls)}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text.startswith("#"):
            above.append(text[1:].strip())
            continue
        name = text.split(":", 1)[0].strip()
        if name in names and ":" in text:
            parts = above + ([trailing[number]] if number in trailing else [])
            out[name] = " ".join(parts)
        above = []
    return out


def _type_name(hint) -> str:
    if hint is typing.Any:
        return "any"
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return f"{_type_name(args[0])} or null"
    return getattr(hint, "__name__", str(hint)).lower()


def _default(f) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def describe_keys(cls=Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """[(key, type, default, meaning)] for every leaf key of `cls`, in declaration order."""
    hints = typing.get_type_hints(cls, vars(schema))
    comments = _comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows += describe_keys(hint, f"{prefix}{f.name}.")
            continue
        default = _default(f)
        shown = ("null" if default is None else str(default).lower() if isinstance(default, bool) else
                 '""' if default == "" else str(default))
        rows.append((prefix + f.name, _type_name(hint), shown, comments.get(f.name, "")))
    return rows


def keys_markdown() -> str:
    """The README's table of config keys."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, default, meaning in describe_keys():
        lines.append(f"| `{key}` | {kind} | `{default}` | {meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
