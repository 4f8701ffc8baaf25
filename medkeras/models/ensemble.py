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
    normalization=None,
    dynamic: bool = False,
):
    """One backbone with its preprocessing and a new head: pixels (B, S, S, 3) in [0, 255] -> logits (B, K).

    `normalization=(mean, std)` replaces the backbone's ImageNet statistics with the dataset's own (backbones
    that normalize inside their own graph, such as EfficientNet, keep theirs). `dynamic`: any input size
    (progressive resizing); predict, eval and export still feed `image_size`.
    """
    spec = get_backbone_spec(name)
    backbone = build_backbone(name, image_size, weights, dynamic)
    inputs = keras.Input((None, None, 3) if dynamic else (image_size, image_size, 3), name=INPUT_NAME)
    if normalization is not None and spec.preprocessing != "none":
        x = ImagePreprocessing("dataset", *normalization, name="preprocess")(inputs)
    else:
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
    """One functional graph averaging the members' logits; a single member is returned as it is.

    The input takes any size when every member does (progressive resizing), else the members' own: (S, S, 3) at
    `image_size` for slices, (D, H, W, 3) for study members (`study.py`), which all take one shape.
    """
    if len(members) == 1 and weights is None:
        return members[0]
    dynamic = all(m.inputs[0].shape[1] is None for m in members)
    shape = tuple(members[0].inputs[0].shape[1:])
    if dynamic or len(shape) == 3:
        inputs = keras.Input((None, None, 3) if dynamic else (image_size, image_size, 3), name=INPUT_NAME)
    else:
        inputs = keras.Input(shape, name="volume")
    outputs = [m(inputs) for m in members]
    if weights is None:
        logits = layers.Average(dtype="float32", name="average_logits")(outputs)
    else:
        logits = WeightedAverage(weights, dtype="float32", name="average_logits")(outputs)
    return keras.Model(inputs, logits, name=name)


def weights_for(weights, name: str) -> str:
    """`model.weights` for one backbone: the value itself, or its entry (or `default`) in a mapping."""
    if isinstance(weights, dict):
        return str(weights.get(name, weights.get("default", "none")))
    return str(weights)


def member_names(backbones) -> list[str]:
    """Each member's name: its backbone's, with its position appended where a backbone appears twice."""
    names = list(backbones)
    return [name if names.count(name) == 1 else f"{name}_{i}" for i, name in enumerate(names)]


def build_model(model_cfg, num_classes: int, image_size: int, normalization=None, dynamic: bool = False):
    """`model` config section -> the model to train (a member, or the ensemble of all of them)."""
    names = list(model_cfg.backbones)
    members = []
    for name, member_name in zip(names, member_names(names)):
        weights = weights_for(model_cfg.weights, name)
        members.append(
            build_member(
                name, num_classes, image_size, weights, model_cfg.head, model_cfg.dropout, member_name, normalization,
                dynamic,
            )
        )
    return build_ensemble(members, image_size, model_cfg.ensemble_weights)


def members_of(model) -> list:
    """The member models of an ensemble (or [model] for a single member: one with its preprocessing at its top, or
    one without the ensemble's average, such as a series member, whose shared encoder is a model inside it)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if any(isinstance(layer, ImagePreprocessing) for layer in model.layers):
        return [model]
    if not any(layer.name == "average_logits" for layer in model.layers) and any(
            layer.name == "slice_attention" for layer in model.layers):
        return [model]
    return nested


def leaf_members(model) -> list:
    """The single-backbone models inside `model`, however deeply ensembles nest (a bag of fold ensembles)."""
    members = members_of(model)
    if len(members) == 1 and members[0] is model:
        return members
    return [leaf for member in members for leaf in leaf_members(member)]


def fit_fusion_weights(member_logits, labels) -> list[float]:
    """Member weights (non-negative, summing to 1) minimizing the validation log-loss of the weighted logits."""
    import numpy as np
    from scipy.optimize import minimize

    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in member_logits])  # (M, N, K)
    labels = np.asarray(labels)

    def loss(params):
        w = np.exp(params - params.max())
        w = w / w.sum()
        z = np.tensordot(w, stacked, axes=1)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(len(labels)), labels].mean()

    result = minimize(loss, np.zeros(len(stacked)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
    w = np.exp(result.x - result.x.max())
    return [float(v) for v in w / w.sum()]
