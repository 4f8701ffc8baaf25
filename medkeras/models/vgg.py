"""VGG19 with BatchNorm (torchvision's `vgg19_bn`), which keras.applications lacks.

The backbone keeps torchvision's classifier body (adaptive 7x7 average pool, fc 4096, ReLU, dropout, fc 4096,
ReLU, dropout) so that replacing only the last layer, as the PyTorch recipes do, gives the same network:
143.7M parameters with a 1000-class head.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _bins(size_in, size_out):
    """PyTorch's adaptive pooling bins as a (size_out, size_in) averaging matrix: bin i spans
    [floor(i * in / out), ceil((i + 1) * in / out))."""
    matrix = np.zeros((size_out, size_in), "float32")
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


@keras.saving.register_keras_serializable(package="medkeras")
class AdaptiveAveragePooling2D(layers.Layer):
    """torchvision's AdaptiveAvgPool2d: exact for any fixed input size (average-pools, or repeats when smaller)."""

    def __init__(self, output_size=7, **kwargs):
        super().__init__(**kwargs)
        self.output_size = int(output_size)

    def call(self, x):
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            raise ValueError("AdaptiveAveragePooling2D needs a fixed input size")
        if (height, width) == (self.output_size, self.output_size):
            return x
        rows = ops.convert_to_tensor(_bins(height, self.output_size), dtype=x.dtype)
        cols = ops.convert_to_tensor(_bins(width, self.output_size), dtype=x.dtype)
        return ops.einsum("ih,nhwc,jw->nijc", rows, x, cols)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size, self.output_size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size}


def vgg_bn(input_shape, config=VGG19_CONFIG, fc_units=4096, dropout=0.5, name="vgg19_bn"):
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    block, conv = 1, 1
    for item in config:
        if item == "M":
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
            block, conv = block + 1, 1
            continue
        x = layers.Conv2D(item, 3, padding="same", name=f"block{block}_conv{conv}")(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"block{block}_bn{conv}")(x)
        x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        conv += 1
    x = AdaptiveAveragePooling2D(7, name="adaptive_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dense(fc_units, activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    return keras.Model(inputs, x, name=name)
