"""Basic-block ResNets (ResNet-18/34) that keras.applications lacks, as Keras functional models.

`imagenet` stem: 7x7/2 conv + 3x3/2 max-pool, as torchvision's resnet18/34 (ResNet34 with a 1000-class head has
21.8M parameters). Strided layers pad symmetrically as PyTorch does, so converted torchvision / timm weights
(`medkeras convert-weights`) give the same features. `small` stem: one 3x3/1 conv and no pooling, as MedMNIST's ResNet-18 for 28-64 px images.

`dims=3`: the same network on volumes (D, H, W, C), every layer under the same name, as MONAI's ResNet builds it
(a `stem_depth` x 7 x 7 stem, stride 1 along the slices by default, then 3x3x3 convs and pools with stride 2 on
every axis), so 2D weights inflate into it layer by layer (`volume3d.inflate_weights`).
"""

from __future__ import annotations

from functools import partial

import keras
from keras import layers


def _bn(name):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def spatial_layers(dims: int) -> dict:
    """The Keras layers of a `dims`-D network (2: images, 3: volumes) by role."""
    if dims == 2:
        return {"conv": layers.Conv2D, "pad": layers.ZeroPadding2D, "max": layers.MaxPooling2D,
                "avg": layers.AveragePooling2D, "gap": layers.GlobalAveragePooling2D}
    if dims == 3:
        from medkeras.models.conv3d import TapConv3D  # Conv3D, without TF's CPU gradient cliff

        # 3D pools in float32: TensorFlow has no float16 MaxPool3D kernel on CPU (mixed_float16 failed to run)
        return {"conv": TapConv3D, "pad": layers.ZeroPadding3D, "max": partial(layers.MaxPooling3D, dtype="float32"),
                "avg": partial(layers.AveragePooling3D, dtype="float32"), "gap": layers.GlobalAveragePooling3D}
    raise ValueError(f"dims must be 2 or 3, got {dims}")


def _basic_block(x, filters, stride, name, dims=2):
    op = spatial_layers(dims)
    shortcut = x
    if stride != 1:  # torchvision pads 1 on every side; Keras' "same" would pad 0 before and 1 after
        y = op["pad"](1, name=f"{name}_pad")(x)
        y = op["conv"](filters, 3, strides=stride, use_bias=False, name=f"{name}_conv1")(y)
    else:
        y = op["conv"](filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = op["conv"](filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = op["conv"](filters, 1, strides=stride, use_bias=False, name=f"{name}_down_conv")(x)
        shortcut = _bn(f"{name}_down_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def basic_resnet(
    input_shape,
    blocks=(2, 2, 2, 2),
    widths=(64, 128, 256, 512),
    stem="imagenet",
    pooling="avg",
    name="resnet18",
    dims=2,
    stem_depth=7,
    stem_depth_stride=1,
):
    """A ResNet of basic blocks; returns pooled features (or the last feature map with `pooling=None`).

    `dims=3`: on volumes; `stem_depth` and `stem_depth_stride` are the stem's kernel and stride along the slices.
    """
    op = spatial_layers(dims)
    inputs = keras.Input(input_shape, name="input")
    if stem == "imagenet":
        kernel, stride, pad = stem_geometry(dims, stem_depth, stem_depth_stride)
        x = op["pad"](pad, name="stem_pad")(inputs)
        x = op["conv"](widths[0], kernel, strides=stride, use_bias=False, name="stem_conv")(x)
        x = _bn("stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        x = op["pad"](1, name="stem_pool_pad")(x)  # after ReLU, zeros pad as PyTorch's -inf does
        x = op["max"](3, strides=2, name="stem_pool")(x)
    elif stem == "small":
        x = op["conv"](widths[0], 3, padding="same", use_bias=False, name="stem_conv")(inputs)
        x = _bn("stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
    else:
        raise ValueError(f"unknown stem '{stem}'")
    for stage, (n, filters) in enumerate(zip(blocks, widths)):
        for b in range(n):
            stride = 2 if (b == 0 and stage > 0) else 1
            x = _basic_block(x, filters, stride, name=f"stage{stage + 1}_block{b + 1}", dims=dims)
    if pooling == "avg":
        x = op["gap"](name="avg_pool")(x)
    return keras.Model(inputs, x, name=name)


def stem_geometry(dims: int, depth: int = 7, depth_stride: int = 1):
    """The ImageNet stem's (kernel, strides, padding): 7x7/2 padded 3; on volumes `depth` x 7 x 7, stride
    (`depth_stride`, 2, 2), padded depth // 2 along the slices."""
    if dims == 2:
        return 7, 2, 3
    return (depth, 7, 7), (depth_stride, 2, 2), ((depth // 2, depth // 2), (3, 3), (3, 3))


def plain_cnn(input_shape, widths=(32, 64, 128, 256), convs_per_stage=2, pooling="avg", name="cnn8"):
    """A VGG-style plain CNN: conv-BN-ReLU pairs, max-pool between stages (8 convs by default).

    A strong from-scratch baseline on 28-64 px medical images (MedMNIST-size): few parameters, fast on a CPU.
    """
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    for stage, filters in enumerate(widths):
        for c in range(convs_per_stage):
            prefix = f"stage{stage + 1}_conv{c + 1}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=prefix)(x)
            x = _bn(f"{prefix}_bn")(x)
            x = layers.ReLU(name=f"{prefix}_relu")(x)
        if stage < len(widths) - 1:
            x = layers.MaxPooling2D(2, name=f"stage{stage + 1}_pool")(x)
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=name)
