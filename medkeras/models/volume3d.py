"""3D backbones for CT volumes (D, H, W, 3) and the inflation of 2D weights into them (I3D, Carreira & Zisserman 2017).

Written here rather than taken from `classification-models-3D`: that package builds on `tf.keras` / Keras 2 names
and its own weight downloads, while inflation needs each 3D layer to carry its 2D counterpart's name, so that the
ImageNet weights Keras ships (ResNet50, DenseNet121) and the `.weights.h5` files `medkeras convert-weights` writes
(torchvision / timm ResNet-18/34) load layer by layer. The networks follow MONAI's `ResNet` and `DenseNet121`:
the 2D network with every convolution and pool turned 3D, the stem `stem_depth` x 7 x 7 with stride 1 along the
slices for the ResNets (CT slices are thicker than pixels are wide; MONAI's `conv1_t_stride` default) and 2 for
DenseNet-121 (MONAI's conv0), every later stride 2 on all three axes.

Volumes take three channels, as every 2D backbone does (grey is repeated): the backbone's own preprocessing then
applies unchanged and inflated weights are exact, not re-derived for one channel.

Inflation: a 2D kernel (kh, kw, cin, cout) becomes (kt, kh, kw, cin, cout), repeated along the slices and divided
by kt, so a volume of one slice repeated (a "boring video") gives the 2D network's activations away from the
volume's first and last slices; BatchNorm and dense weights are copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from medkeras.errors import ConfigError, MedkerasError

BN_EPSILON = 1.001e-5  # keras.applications' BatchNormalization epsilon


def _conv3d(*args, **kwargs):
    """A `conv3d.TapConv3D` (Conv3D itself, computed without TF's CPU gradient cliff), imported when a model is built:
    this module's registry is read by config validation, which must not start Keras (and TensorFlow's logging)."""
    from medkeras.models.conv3d import TapConv3D

    return TapConv3D(*args, **kwargs)


def _bn(name):
    from keras import layers

    return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)


def _stem(inputs, use_bias: bool, stem_depth: int, stem_depth_stride: int, pad_names=("conv1_pad", "pool1_pad"),
          pool_name="pool1_pool"):
    """keras.applications' ResNet / DenseNet stem in 3D: pad, conv 7x7/2, BN, ReLU, pad, max-pool 3/2."""
    from keras import layers

    from medkeras.models.resnet import stem_geometry

    kernel, stride, pad = stem_geometry(3, stem_depth, stem_depth_stride)
    x = layers.ZeroPadding3D(pad, name=pad_names[0])(inputs)
    x = _conv3d(64, kernel, strides=stride, use_bias=use_bias, name="conv1_conv")(x)
    x = _bn("conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding3D(1, name=pad_names[1])(x)
    return layers.MaxPooling3D(3, strides=2, name=pool_name, dtype="float32")(x)  # no float16 MaxPool3D on CPU


def _bottleneck(x, filters, stride, shortcut_conv, name):
    """keras.applications' `residual_block_v1` in 3D (stride on the first 1x1, as Keras' ResNet50)."""
    from keras import layers

    if shortcut_conv:
        shortcut = _conv3d(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = _bn(f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    y = _conv3d(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    y = layers.Activation("relu", name=f"{name}_1_relu")(_bn(f"{name}_1_bn")(y))
    y = _conv3d(filters, 3, padding="same", name=f"{name}_2_conv")(y)
    y = layers.Activation("relu", name=f"{name}_2_relu")(_bn(f"{name}_2_bn")(y))
    y = _bn(f"{name}_3_bn")(_conv3d(4 * filters, 1, name=f"{name}_3_conv")(y))
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet50_3d(input_shape, stem_depth: int = 7, stem_depth_stride: int = 1, name: str = "resnet50_3d"):
    """ResNet-50 on volumes, under keras.applications.ResNet50's layer names; pooled features (2048)."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape, name="input")
    x = _stem(inputs, True, stem_depth, stem_depth_stride)
    for stage, (filters, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            x = _bottleneck(x, filters, stride, b == 0, f"conv{stage + 2}_block{b + 1}")
    return keras.Model(inputs, layers.GlobalAveragePooling3D(name="avg_pool")(x), name=name)


def densenet121_3d(input_shape, stem_depth: int = 7, stem_depth_stride: int = 2, growth: int = 32,
                   blocks=(6, 12, 24, 16), name: str = "densenet121_3d"):
    """DenseNet-121 on volumes (as MONAI's DenseNet121), under keras.applications.DenseNet121's layer names."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape, name="input")
    x = _stem(inputs, False, stem_depth, stem_depth_stride, ("conv1_pad", "pool1_pad"), "pool1")
    for stage, n in enumerate(blocks):
        for b in range(n):
            prefix = f"conv{stage + 2}_block{b + 1}"
            y = layers.Activation("relu", name=f"{prefix}_0_relu")(_bn(f"{prefix}_0_bn")(x))
            y = _conv3d(4 * growth, 1, use_bias=False, name=f"{prefix}_1_conv")(y)
            y = layers.Activation("relu", name=f"{prefix}_1_relu")(_bn(f"{prefix}_1_bn")(y))
            y = _conv3d(growth, 3, padding="same", use_bias=False, name=f"{prefix}_2_conv")(y)
            x = layers.Concatenate(name=f"{prefix}_concat")([x, y])
        if stage < len(blocks) - 1:
            prefix = f"pool{stage + 2}"
            x = layers.Activation("relu", name=f"{prefix}_relu")(_bn(f"{prefix}_bn")(x))
            x = _conv3d(x.shape[-1] // 2, 1, use_bias=False, name=f"{prefix}_conv")(x)
            x = layers.AveragePooling3D(2, strides=2, name=f"{prefix}_pool", dtype="float32")(x)
    x = layers.Activation("relu", name="relu")(_bn("bn")(x))
    return keras.Model(inputs, layers.GlobalAveragePooling3D(name="avg_pool")(x), name=name)


def _basic_3d(input_shape, blocks, name, **kwargs):
    from medkeras.models.resnet import basic_resnet

    return basic_resnet(input_shape, blocks=blocks, name=name, dims=3, **kwargs)


@dataclass(frozen=True)
class VolumeBackboneSpec:
    """A 3D backbone: `build(input_shape, **geometry)`, and the 2D registry backbone whose weights inflate into it
    (and whose preprocessing it takes)."""

    name: str
    build: Callable
    source_2d: str
    description: str
    min_size: int = 16
    stem_depth_stride: int = 1  # as MONAI builds it: ResNet's conv1_t_stride 1, DenseNet's conv0 stride 2


VOLUME_BACKBONES = {
    spec.name: spec
    for spec in (
        VolumeBackboneSpec("resnet18_3d", partial(_basic_3d, blocks=(2, 2, 2, 2), name="resnet18_3d"), "resnet18",
                           "ResNet-18 3D (MONAI layout; inflates resnet18 weights)"),
        VolumeBackboneSpec("resnet34_3d", partial(_basic_3d, blocks=(3, 4, 6, 3), name="resnet34_3d"), "resnet34",
                           "ResNet-34 3D (MONAI layout; inflates resnet34 weights)"),
        VolumeBackboneSpec("resnet50_3d", resnet50_3d, "resnet50",
                           "ResNet-50 3D (bottlenecks; inflates keras.applications ResNet50 weights)"),
        VolumeBackboneSpec("densenet121_3d", densenet121_3d, "densenet121",
                           "DenseNet-121 3D (as MONAI's; inflates keras.applications DenseNet121 weights)",
                           min_size=32, stem_depth_stride=2),
    )
}


def volume_backbone_spec(name: str) -> VolumeBackboneSpec:
    if name not in VOLUME_BACKBONES:
        raise ConfigError(f"unknown 3D backbone '{name}' (one of {', '.join(VOLUME_BACKBONES)})")
    return VOLUME_BACKBONES[name]


def preprocessing_of(name: str) -> str:
    """The ImagePreprocessing mode of a 3D backbone: its 2D source's, since its weights come from there."""
    from medkeras.models.backbones import get_backbone_spec

    return get_backbone_spec(volume_backbone_spec(name).source_2d).preprocessing


def build_volume_backbone(name: str, volume_shape, weights="none", stem_depth: int = 7,
                          stem_depth_stride: int | None = None, dynamic: bool = False):
    """A 3D backbone for volumes of `volume_shape` (D, H, W) with 3 channels -> pooled features; `dynamic`: a plane
    of any size (progressive resizing; `volume_shape` is then the largest).

    `weights`: "none", "imagenet" (Keras' 2D ImageNet weights of the source backbone, inflated) or a 2D
    `.weights.h5` file of the source backbone (as `medkeras convert-weights` writes), inflated.
    `stem_depth_stride`: None for the backbone's own (`VolumeBackboneSpec.stem_depth_stride`).
    """
    spec = volume_backbone_spec(name)
    if stem_depth_stride is None:
        stem_depth_stride = spec.stem_depth_stride
    if min(volume_shape) < spec.min_size:
        raise ConfigError(f"backbone '{name}' needs volumes of at least {spec.min_size} voxels a side, got "
                          f"{list(volume_shape)}")
    shape = (volume_shape[0], None, None) if dynamic else tuple(volume_shape)
    model = spec.build((*shape, 3), stem_depth=stem_depth, stem_depth_stride=stem_depth_stride)
    weights = "none" if weights in (None, "none", "None") else str(weights)
    if weights != "none":
        from medkeras.models.backbones import build_backbone

        if weights != "imagenet" and not Path(weights).expanduser().is_file():
            raise ConfigError(f"{weights}: weights file not found (model.weights: imagenet, none or a 2D "
                              f".weights.h5 of {spec.source_2d})")
        inflate_weights(model, build_backbone(spec.source_2d, 64, weights))
    return model


def _layers_by_name(model) -> dict:
    out = {}
    for layer in model.layers:
        out[layer.name] = layer
        if hasattr(layer, "layers"):
            out.update(_layers_by_name(layer))
    return out


def inflate_weights(model3d, model2d) -> int:
    """Copy `model2d`'s weights into the same-named layers of `model3d`, kernels inflated; returns layers set.

    Every 3D layer with weights must find its 2D namesake with weights of matching shape (after inflation);
    anything else is refused, naming the layer, rather than leaving it silently at random.
    """
    source = _layers_by_name(model2d)
    count = 0
    for layer in model3d.layers:
        if not layer.weights:
            continue
        twin = source.get(layer.name)
        if twin is None or len(twin.weights) != len(layer.weights):
            raise MedkerasError(f"cannot inflate '{model2d.name}' into '{model3d.name}': no 2D layer '{layer.name}' "
                                "with the same weights")
        values = []
        for w3, w2 in zip(layer.get_weights(), twin.get_weights()):
            if w3.ndim == w2.ndim + 1 and w3.ndim == 5:  # a conv kernel: repeat along the slices, divide by kt
                w2 = np.repeat(w2[None], w3.shape[0], axis=0) / w3.shape[0]
            if w2.shape != w3.shape:
                raise MedkerasError(f"cannot inflate '{model2d.name}' into '{model3d.name}': layer '{layer.name}' "
                                    f"has {w3.shape} weights, the 2D layer {w2.shape}")
            values.append(w2.astype(w3.dtype))
        layer.set_weights(values)
        count += 1
    return count
