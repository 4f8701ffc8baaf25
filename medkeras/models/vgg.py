"""VGG19 with BatchNorm (torchvision's `vgg19_bn`), which keras.applications lacks.

The backbone keeps torchvision's classifier body (adaptive 7x7 average pool, fc 4096, ReLU, dropout, fc 4096,
ReLU, dropout) so that replacing only the last layer, as the PyTorch recipes do, gives the same network:
143.7M parameters with a 1000-class head.
"""

from __future__ import annotations

import keras
from keras import layers

VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def adaptive_avg_pool_7(x, name="adaptive_pool"):
    """torchvision's AdaptiveAvgPool2d((7, 7)) for a known square feature size."""
    size = x.shape[1]
    if size == 7:
        return x
    if size > 7 and size % 7 == 0:
        return layers.AveragePooling2D(size // 7, name=name)(x)
    return layers.Resizing(7, 7, interpolation="bilinear", name=name)(x)


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
    x = adaptive_avg_pool_7(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dense(fc_units, activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    return keras.Model(inputs, x, name=name)
