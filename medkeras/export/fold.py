"""BatchNorm folded into the convolution before it, for serving: one fused op where inference ran several.

In inference a BatchNormalization after a linear convolution is a per-channel scale and shift, so it folds into
the convolution's kernel and bias: `W' = W * g / sqrt(v + eps)`, `b' = (b - m) * g / sqrt(v + eps) + beta`.
Keras computes the BN as separate element-wise ops over the activation (and TensorFlow cannot fold them while the
weights are variables), so an exported ResNet-style graph spent most of its op launches on BN; folded, grappler
fuses convolution + bias + ReLU into one kernel. The folded copy serves the same function (exports verify it
against the Keras model within 1e-4); training and `.keras` files keep the BN layers. Layers that compute in 16
bits (mixed precision) are not folded.
"""

from __future__ import annotations

import keras
import numpy as np


class Folded(keras.layers.Layer):
    """Where a folded BatchNormalization stood: passes its input through (BN's call arguments accepted)."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _full_precision(conv, bn) -> bool:
    """Whether both compute in float32. Under a mixed policy the convolution computes in float16 / bfloat16 and
    the BatchNorm after it in float32 (Keras upcasts it): a folded kernel rounded to 16 bits serves another function
    (2.7e-4 away in probability, measured on a mixed_float16 demo), so mixed-precision models are served unfolded."""
    return conv.dtype_policy.compute_dtype == "float32" and bn.dtype_policy.compute_dtype == "float32"


def _foldable_pairs(model) -> dict:
    """{id(BN layer): (BN layer, conv layer)} for every BatchNormalization fed only by a linear Conv2D or
    DepthwiseConv2D, in `model` and the functional models nested in it (keyed by identity: members share names)."""
    pairs = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            pairs.update(_foldable_pairs(layer))
            continue
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        if layer.axis not in (-1, 3):
            continue
        tensors = layer._inbound_nodes[0].input_tensors
        if len(tensors) != 1:
            continue
        conv = tensors[0]._keras_history.operation
        config = conv.get_config() if isinstance(conv, keras.layers.Layer) else {}
        if (
            type(conv) not in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
            or not _full_precision(conv, layer)
            or config.get("activation") != "linear"
            or config.get("data_format", "channels_last") != "channels_last"
            or len(conv._inbound_nodes) != 1
            or len(conv._outbound_nodes) != 1
        ):
            continue
        pairs[id(layer)] = (layer, conv)
    return pairs


def _folded_weights(conv, bn) -> list[np.ndarray]:
    """The conv's (kernel, bias) with `bn`'s inference scale and shift folded in (computed in float64)."""
    weights = conv.get_weights()
    kernel = weights[0].astype(np.float64)
    values = {w.path.split("/")[-1]: np.asarray(w.numpy(), np.float64) for w in bn.weights}
    mean, var = values["moving_mean"], values["moving_variance"]
    scale = values.get("gamma", np.ones_like(mean)) / np.sqrt(var + bn.epsilon)
    bias = weights[1].astype(np.float64) if conv.use_bias else np.zeros_like(mean)
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # output channel c * multiplier + m
        kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    bias = (bias - mean) * scale + values.get("beta", np.zeros_like(mean))
    return [kernel.astype(np.float32), bias.astype(np.float32)]


def fold_batchnorm(model):
    """(a copy of `model` with every foldable BatchNormalization folded into its convolution, how many were).

    Returns the model itself and 0 when nothing folds (no BN, or BN after non-linear layers as in pre-activation
    ResNets). Nested functional models (an ensemble's members, their backbones) are folded too.
    """
    pairs = _foldable_pairs(model)
    if not pairs:
        return model, 0
    bn_of = {id(conv): bn for bn, conv in pairs.values()}

    def clone(layer):
        config = layer.get_config()
        if id(layer) in pairs:
            return Folded(name=layer.name)
        if id(layer) in bn_of:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone, recursive=True)

    def assign(original, copy):
        by_name = {layer.name: layer for layer in original.layers}
        for layer in copy.layers:
            source = by_name.get(layer.name)
            if source is None:  # a renamed input layer: nothing to copy
                if layer.weights:
                    raise ValueError(f"fold_batchnorm: no layer '{layer.name}' in the original model")
                continue
            if isinstance(layer, keras.Model):
                assign(source, layer)
            elif id(source) in bn_of:
                layer.set_weights(_folded_weights(source, bn_of[id(source)]))
            elif id(source) not in pairs and layer.weights:
                layer.set_weights(source.get_weights())

    assign(model, folded)
    return folded, len(pairs)
