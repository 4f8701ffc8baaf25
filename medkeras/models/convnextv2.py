"""ConvNeXt V2 (Woo et al. 2023): ConvNeXt blocks with Global Response Normalization (GRN) instead of layer scale.

keras.applications has ConvNeXt (V1) only. Tiny: depths 3-3-9-3, dims 96-768, 28.6M parameters with a
1000-class head; Base: 3-3-27-3, 128-1024, 88.7M. Stochastic depth is left out (training-time regularizer).
"""

from __future__ import annotations

import keras
from keras import layers, ops

VARIANTS = {
    "convnextv2_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnextv2_nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnextv2_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnextv2_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}


@keras.saving.register_keras_serializable(package="medkeras")
class GlobalResponseNorm(layers.Layer):
    """GRN: x + gamma * (x * N(x)) + beta, with N(x) the per-channel spatial L2 norm over its channel mean."""

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        dim = input_shape[-1]
        self.gamma = self.add_weight(shape=(1, 1, 1, dim), initializer="zeros", name="gamma")
        self.beta = self.add_weight(shape=(1, 1, 1, dim), initializer="zeros", name="beta")

    def call(self, x):
        gx = ops.sqrt(ops.sum(ops.square(x), axis=(1, 2), keepdims=True))
        nx = gx / (ops.mean(gx, axis=-1, keepdims=True) + self.epsilon)
        return self.gamma * (x * nx) + self.beta + x

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def _ln(name):
    return layers.LayerNormalization(epsilon=1e-6, name=name)


def _block(x, dim, name):
    y = layers.DepthwiseConv2D(7, padding="same", name=f"{name}_dwconv")(x)
    y = _ln(f"{name}_norm")(y)
    y = layers.Dense(4 * dim, name=f"{name}_pwconv1")(y)
    y = layers.Activation("gelu", name=f"{name}_gelu")(y)
    y = GlobalResponseNorm(name=f"{name}_grn")(y)
    y = layers.Dense(dim, name=f"{name}_pwconv2")(y)
    return layers.Add(name=f"{name}_add")([x, y])


def convnextv2(input_shape, variant="convnextv2_tiny", name=None):
    """`variant`: a VARIANTS name, or its (depths, dims) for a custom (e.g. reduced) ConvNeXt V2."""
    depths, dims = VARIANTS[variant] if isinstance(variant, str) else variant
    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(dims[0], 4, strides=4, name="stem_conv")(inputs)
    x = _ln("stem_norm")(x)
    for s, (depth, dim) in enumerate(zip(depths, dims)):
        if s > 0:
            x = _ln(f"stage{s + 1}_down_norm")(x)
            x = layers.Conv2D(dim, 2, strides=2, name=f"stage{s + 1}_down_conv")(x)
        for b in range(depth):
            x = _block(x, dim, name=f"stage{s + 1}_block{b + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = _ln("head_norm")(x)
    return keras.Model(inputs, x, name=name or (variant if isinstance(variant, str) else "convnextv2"))
