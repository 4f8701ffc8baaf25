"""RegNetY (Radosavovic et al. 2020) as torchvision builds it; Keras 3 dropped RegNet from keras.applications.

Stage widths and depths come from the quantized linear rule of pycls (`w_0`, `w_a`, `w_m`, group width), with
pycls' rounding of widths to the group width, so RegNetY-4GF (20.6M parameters with a 1000-class head) and
-8GF (39.2M) match the published models.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

# torchvision's init params: depth, w_0, w_a, w_m, group width (SE ratio 0.25, bottleneck 1.0 for all)
REGNETY = {
    "regnety_400mf": (16, 48, 27.89, 2.09, 8),
    "regnety_800mf": (14, 56, 38.84, 2.4, 16),
    "regnety_1_6gf": (27, 48, 20.71, 2.65, 24),
    "regnety_3_2gf": (21, 80, 42.63, 2.66, 24),
    "regnety_4gf": (22, 96, 31.41, 2.24, 64),
    "regnety_8gf": (17, 192, 76.82, 2.19, 56),
}


def _quantize(width, group):
    """pycls / timm rounding of a stage width to a multiple of its group width (torchvision's differs)."""
    return int(round(width / group) * group)


def stage_params(depth, w_0, w_a, w_m, group_width, quant=8):
    """-> list of (width, depth, group width) per stage, exactly as torchvision derives them."""
    widths_cont = np.arange(depth) * w_a + w_0
    capacity = np.round(np.log(widths_cont / w_0) / np.log(w_m))
    block_widths = (np.round(np.divide(w_0 * np.power(w_m, capacity), quant)) * quant).astype(int).tolist()
    splits = [w != wp or r != rp for w, wp, r, rp in zip(block_widths + [0], [0] + block_widths,
                                                         block_widths + [0], [0] + block_widths)]
    widths = [w for w, t in zip(block_widths, splits[:-1]) if t]
    depths = np.diff([d for d, t in enumerate(splits) if t]).astype(int).tolist()
    groups = [min(group_width, w) for w in widths]
    widths = [_quantize(w, g) for w, g in zip(widths, groups)]
    return list(zip(widths, depths, groups))


def _bn(name):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _y_block(x, width_out, stride, group_width, se_ratio, name):
    width_in = x.shape[-1]
    shortcut = x
    if width_in != width_out or stride != 1:
        shortcut = layers.Conv2D(width_out, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = _bn(f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(width_out, 1, use_bias=False, name=f"{name}_a")(x)
    y = layers.ReLU(name=f"{name}_a_relu")(_bn(f"{name}_a_bn")(y))
    if stride != 1:
        y = layers.ZeroPadding2D(1, name=f"{name}_b_pad")(y)
    y = layers.Conv2D(width_out, 3, strides=stride, padding="valid" if stride != 1 else "same",
                      groups=width_out // group_width, use_bias=False, name=f"{name}_b")(y)
    y = layers.ReLU(name=f"{name}_b_relu")(_bn(f"{name}_b_bn")(y))
    squeeze = int(round(se_ratio * width_in))
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(y)
    s = layers.Conv2D(squeeze, 1, activation="relu", name=f"{name}_se_reduce")(s)
    s = layers.Conv2D(width_out, 1, activation="sigmoid", name=f"{name}_se_expand")(s)
    y = layers.Multiply(name=f"{name}_se_scale")([y, s])
    y = layers.Conv2D(width_out, 1, use_bias=False, name=f"{name}_c")(y)
    y = _bn(f"{name}_c_bn")(y)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def regnety(input_shape, variant="regnety_4gf", se_ratio=0.25, name=None):
    """`variant`: a REGNETY name, or its (depth, w_0, w_a, w_m, group width) for a custom (e.g. reduced) RegNetY."""
    params = REGNETY[variant] if isinstance(variant, str) else tuple(variant)
    inputs = keras.Input(input_shape, name="input")
    x = layers.ZeroPadding2D(1, name="stem_pad")(inputs)
    x = layers.Conv2D(32, 3, strides=2, use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
    for s, (width, depth, group) in enumerate(stage_params(*params)):
        for b in range(depth):
            x = _y_block(x, width, 2 if b == 0 else 1, group, se_ratio, name=f"stage{s + 1}_block{b + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=name or (variant if isinstance(variant, str) else "regnety"))
