"""Members (preprocessing -> backbone -> class head) and the functional ensemble that averages their logits.

A member is a Keras model from pixels [0, 255] to K float32 logits, with its backbone's own normalization inside.
The ensemble is one graph: one input, the members side by side, their logits averaged by a Keras layer
(float32 under any precision policy), so one forward pass serves all members on the accelerator.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from medkeras.models.backbones import build_backbone, get_backbone_spec
from medkeras.models.preprocessing import ImagePreprocessing

INPUT_NAME = "image"


def build_head(features, num_classes: int, head: str = "linear", dropout: float = 0.0, name: str = "head"):
    """The replaced class head on pooled features: `linear` (Dense K) or `mlp` (.5, 128 ReLU, .3, K)."""
    x = features
    if head == "mlp":
        x = layers.Dropout(0.5, name=f"{name}_dropout1")(x)
        x = layers.Dense(128, activation="relu", name=f"{name}_dense")(x)
        x = layers.Dropout(0.3, name=f"{name}_dropout2")(x)
    elif head == "linear":
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    else:
        raise ValueError(f"unknown head '{head}'")
    return layers.Dense(num_classes, dtype="float32", name=f"{name}_logits")(x)


def build_member(
    name: str,
    num_classes: int,
    image_size: int,
    weights: str = "none",
    head: str = "linear",
    dropout: float = 0.0,
    member_name: str | None = None,
):
    """One backbone with its preprocessing and a new head: pixels (B, S, S, 3) in [0, 255] -> logits (B, K)."""
    spec = get_backbone_spec(name)
    backbone = build_backbone(name, image_size, weights)
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = ImagePreprocessing(spec.preprocessing, name="preprocess")(inputs)
    features = backbone(x)
    logits = build_head(features, num_classes, head, dropout)
    return keras.Model(inputs, logits, name=member_name or name)


@keras.saving.register_keras_serializable(package="medkeras")
class WeightedAverage(layers.Layer):
    """Fixed-weight average of the members' logits (weights normalized to sum to 1)."""

    def __init__(self, weights, **kwargs):
        super().__init__(**kwargs)
        total = float(sum(weights))
        if total <= 0 or min(weights) < 0:
            raise ValueError(f"ensemble weights must be >= 0 and not all 0, got {weights}")
        self.member_weights = [float(w) / total for w in weights]

    def call(self, inputs):
        return sum(ops.cast(x, "float32") * w for x, w in zip(inputs, self.member_weights))

    def get_config(self):
        return {**super().get_config(), "weights": self.member_weights}


def build_ensemble(members, image_size: int, weights=None, name: str = "ensemble"):
    """One functional graph averaging the members' logits; a single member is returned as it is."""
    if len(members) == 1 and weights is None:
        return members[0]
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    outputs = [m(inputs) for m in members]
    if weights is None:
        logits = layers.Average(dtype="float32", name="average_logits")(outputs)
    else:
        logits = WeightedAverage(weights, dtype="float32", name="average_logits")(outputs)
    return keras.Model(inputs, logits, name=name)


def build_model(model_cfg, num_classes: int, image_size: int):
    """`model` config section -> the model to train (a member, or the ensemble of all of them)."""
    names = list(model_cfg.backbones)
    members = []
    for i, name in enumerate(names):
        member_name = name if names.count(name) == 1 else f"{name}_{i}"
        members.append(
            build_member(name, num_classes, image_size, model_cfg.weights, model_cfg.head, model_cfg.dropout, member_name)
        )
    return build_ensemble(members, image_size, model_cfg.ensemble_weights)


def members_of(model) -> list:
    """The member models of an ensemble (or [model] for a single member)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if any(isinstance(layer, ImagePreprocessing) for layer in model.layers):
        return [model]
    return nested
