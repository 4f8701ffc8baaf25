"""Test-time augmentation as part of the model: its logits averaged over the image and its flips, in one graph.

A model whose config turns TTA on (`eval.tta`, `eval.tta_flips`) carries the flips in its meta (`tta_flips`), and
every path that scores it -- evaluation, `predict` on a run, a `.keras` file or an export, the SavedModel's three
signatures and so TF Serving -- scores `with_tta(model, flips)`, so what is evaluated is what is served.
"""

from __future__ import annotations

import weakref

import keras
from keras import layers, ops

# the axes each flip reverses, from the end: columns and rows of a (N, H, W, C) batch of slices and of a
# (N, D, H, W, C) batch of studies alike (a study is flipped in its axial plane, never along its slices)
FLIP_AXES = {"horizontal": (-2,), "vertical": (-3,), "both": (-3, -2)}
_WRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {flips: its TTA model}


@keras.saving.register_keras_serializable(package="medkeras")
class Flip(layers.Layer):
    """The batch reversed along `axes` (-3: rows, -2: columns; models saved before counted from the front)."""

    def __init__(self, axes, **kwargs):
        super().__init__(**kwargs)
        self.axes = tuple(int(a) for a in axes)

    def call(self, inputs):
        return ops.flip(inputs, axis=self.axes)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axes": list(self.axes)}


def flips_of(meta: dict) -> list:
    """The flips a saved model is scored with: its `tta_flips`, or (models saved before they were recorded) its
    config's `eval.tta` / `eval.tta_flips`; [] for none."""
    if "tta_flips" in meta:
        return list(meta["tta_flips"] or [])
    evaluation = (meta.get("config") or {}).get("eval") or {}
    return list(evaluation.get("tta_flips") or ["horizontal"]) if evaluation.get("tta") else []


def config_flips(eval_cfg) -> list:
    """The flips `eval` config asks for: `tta_flips` where `tta` is on, else []."""
    return list(eval_cfg.tta_flips) if eval_cfg.tta else []


def with_tta(model, flips):
    """`model` with its outputs (one or several) averaged over the input and each flip of `flips`, as one Keras
    graph; `model` itself for no flips. One wrapper per model and flips, so repeated calls share a trace."""
    flips = tuple(flips or ())
    if not flips:
        return model
    cache = _WRAPPED.setdefault(model, {})
    if flips in cache:
        return cache[flips]
    inputs = keras.Input(model.inputs[0].shape[1:], name=model.inputs[0].name.split(":")[0])
    # float32 whatever the global policy: the flipped pixels are the model's input, exactly as given
    views = [inputs] + [Flip(FLIP_AXES[flip], dtype="float32", name=f"tta_flip_{flip}")(inputs) for flip in flips]
    answers = [model(view) for view in views]
    if isinstance(answers[0], (list, tuple)):
        outputs = [layers.Average(dtype="float32", name=f"tta_average_{i}")([a[i] for a in answers])
                   for i in range(len(answers[0]))]
    else:
        outputs = layers.Average(dtype="float32", name="tta_average")(answers)
    cache[flips] = keras.Model(inputs, outputs, name=f"{model.name}_tta")
    return cache[flips]
