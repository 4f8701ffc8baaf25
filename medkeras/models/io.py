"""Saving and loading models with what medkeras needs to use them again: class names, size, windows, threshold.

A medkeras `.keras` file is a normal Keras archive with one extra member, `medkeras.json`, so the file alone is
enough to evaluate, predict and export (no run directory needed). Writes are atomic.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from medkeras.errors import MedkerasError
from medkeras.utils import atomic_path, dumps_json

META_NAME = "medkeras.json"


def save_model(model, path, meta: dict) -> Path:
    """Save `model` to `path` (.keras) with `meta` inside, replacing any old file only once complete."""
    path = Path(path)
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(str(tmp))
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(META_NAME, dumps_json(meta))
    return path


def read_meta(path) -> dict:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if META_NAME not in archive.namelist():
                return {}
            return json.loads(archive.read(META_NAME))
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise MedkerasError(f"{path}: not a readable .keras model: {exc}") from exc


def load_model(path):
    """Load a `.keras` file (or a run directory's `model.keras`) -> (model, meta)."""
    import keras

    from medkeras.models import register_custom_objects

    register_custom_objects()

    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise MedkerasError(f"{path}: model not found (a run directory or a .keras file)")
    meta = read_meta(path)
    try:
        model = keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for a broken archive
        raise MedkerasError(f"{path}: cannot load model: {str(exc).splitlines()[0]}") from exc
    return model, meta
