"""Saving medkeras models, and the one door for loading them: a run directory, a `.keras` file or a SavedModel.

A medkeras `.keras` file is a normal Keras archive with one extra member, `medkeras.json` (class names, size,
windows, temperature, threshold, the resolved config), so the file alone is enough to evaluate, predict and
export; an export carries the same JSON in `assets/medkeras.json`. `open_model` is the only place that finds,
loads and checks a saved model, with one error message for anything that is not one. Writes are atomic.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from medkeras.errors import MedkerasError
from medkeras.models.outputs import positive_index
from medkeras.utils import atomic_path, dumps_json

META_NAME = "medkeras.json"
REQUIRED = ("class_names", "image_size")  # what every use of a saved model reads


def in_float32(model):
    """`model` computing in float32 throughout (a copy, same weights), or `model` itself where it already does.

    A model trained under a mixed policy is saved like this: its weights are float32 already, and evaluation,
    `predict` and every export then compute what it serves. Under mixed_bfloat16 a CPU's kernels round differently at
    other batch sizes (probabilities 3e-4 apart between a batch of 1 and one of 64, measured on a BreastMNIST
    recipe), so the same image could get a label in TF Serving other than the one the report counted.
    """
    import keras

    layers = model._flatten_layers(include_self=True, recursive=True)
    if all(layer.dtype_policy.name == "float32" for layer in layers):
        return model

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def save_model(model, path, meta: dict) -> Path:
    """Save `model` to `path` (.keras) with `meta` inside, replacing any old file only once complete."""
    path = Path(path)
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(str(tmp))
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(META_NAME, dumps_json(meta))
    return path


@dataclass
class LoadedModel:
    """A saved medkeras model: `model` is a keras.Model (`kind` "keras") or the `tf.saved_model.load` object
    ("savedmodel"); `meta` what it carries."""

    path: Path
    kind: str
    model: object
    meta: dict

    @property
    def config(self):
        """The resolved run config it was trained with (None for an export made before configs travelled)."""
        from medkeras.config import from_dict

        return from_dict(self.meta["config"]) if self.meta.get("config") else None

    @property
    def class_names(self) -> list:
        return list(self.meta["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def studies(self) -> bool:
        """Whether it scores CT studies (`model.input` slab, series or volume) rather than slices."""
        return self.meta.get("model_input", "slice") != "slice"

    @property
    def volume_size(self) -> list | None:
        """[D, H, W] a study is resampled to (None for a slice model)."""
        return list(self.meta["volume_size"]) if self.meta.get("volume_size") else None

    @property
    def windows(self) -> list:
        """`data.window` as resolved at training: [[level, width], ...] ([] for none)."""
        return list(self.meta.get("windows") or [])

    @property
    def positive_index(self) -> int | None:
        return positive_index(self.class_names, self.meta.get("positive_class"))

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0))

    @property
    def tta_flips(self) -> list:
        """The flips it is scored with ([] for none): inside the graph of an export, `with_tta` for a Keras model."""
        from medkeras.models.tta import flips_of

        return flips_of(self.meta)

    def scoring_model(self):
        """The Keras model as every path scores it: with its test-time flips averaged in the graph."""
        from medkeras.models.tta import with_tta

        return with_tta(self.model, self.tta_flips)


def _read_keras_meta(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            if META_NAME not in archive.namelist():
                return {}
            return json.loads(archive.read(META_NAME))
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise MedkerasError(f"{path}: not a readable .keras model: {exc}") from exc


def savedmodel_dir(path: Path) -> Path | None:
    """A SavedModel directory, or the newest version under a TF Serving `BASE/NAME` directory; else None."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if versions and (versions[-1] / "saved_model.pb").is_file():
        return versions[-1]
    return None


def _read_savedmodel_meta(path: Path) -> dict:
    assets = path / "assets"
    for name in (META_NAME, "preprocessing.json"):  # exports before medkeras.json travelled: the client facts
        if (assets / name).is_file():
            try:
                return json.loads((assets / name).read_text())
            except (OSError, ValueError) as exc:
                raise MedkerasError(f"{assets / name}: not readable JSON: {exc}") from exc
    return {}


def open_model(path, keras_only: bool = False, purpose: str = "this") -> LoadedModel:
    """Find, load and check a saved medkeras model: a run directory (its `model.keras`), a cross-validation (its
    bagged `bag/model.keras`), a `.keras` file, or an exported SavedModel (a version directory, or `BASE/NAME` for
    its newest version).

    `keras_only`: refuse a SavedModel (evaluation, export and Grad-CAM need the Keras graph), saying so.
    """
    path = Path(path)
    if path.is_dir():
        saved = savedmodel_dir(path)
        target = saved if saved is not None else path / "model.keras"
        if saved is None and not target.is_file() and (path / "bag" / "model.keras").is_file():
            target = path / "bag" / "model.keras"  # a cross-validation: its fold models as one ensemble
    else:
        saved, target = None, path
    if saved is None and not target.is_file():
        raise MedkerasError(f"{target}: model not found (a run directory, a .keras file or an exported SavedModel)")
    if saved is not None:
        if keras_only:
            raise MedkerasError(f"{saved}: an exported SavedModel; {purpose} needs the Keras model (a run directory "
                                "or its .keras file)")
        meta = _read_savedmodel_meta(saved)
    else:
        meta = _read_keras_meta(target)
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise MedkerasError(f"{target}: not a medkeras model (no {META_NAME} with {', '.join(missing)} inside)")
    if saved is not None:
        import tensorflow as tf

        try:
            model = tf.saved_model.load(str(saved))
        except Exception as exc:  # noqa: BLE001 - TF raises many kinds for a broken export
            raise MedkerasError(f"{saved}: cannot load the SavedModel: {str(exc).splitlines()[0]}") from exc
        return LoadedModel(saved, "savedmodel", model, meta)
    import keras

    from medkeras.models import register_custom_objects

    register_custom_objects()
    try:
        model = keras.saving.load_model(str(target), compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for a broken archive
        raise MedkerasError(f"{target}: cannot load model: {str(exc).splitlines()[0]}") from exc
    return LoadedModel(target, "keras", model, meta)


def load_model(path):
    """A run directory or `.keras` file -> (keras.Model, meta): `open_model` for the Keras graph."""
    loaded = open_model(path, keras_only=True, purpose="load_model")
    return loaded.model, loaded.meta
