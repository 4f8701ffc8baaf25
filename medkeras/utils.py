"""Small shared helpers: atomic writes (no half-written checkpoint, model or report), JSON that numpy can feed,
and lazy package attributes (so `import medkeras` does not import TensorFlow)."""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it is removed.

    The temporary name keeps the target's suffix (Keras checks that `.keras` files end in `.keras`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _to_json(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps_json(obj) -> str:
    return json.dumps(obj, indent=2, default=_to_json, allow_nan=True) + "\n"


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, dumps_json(obj))


def lazy_getattr(package: str, names: dict):
    """A package's `__getattr__` (PEP 562) importing `names[name]` (a module path) on first use of `name`."""

    def __getattr__(name):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__

