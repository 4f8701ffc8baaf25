"""Decoded values -> float32 pixels in [0, 255]: the few conversions every reader shares, numpy and TF alike.

Each function takes numpy (the Python readers) or a tensor (the graph readers and the SavedModel) and does the same
float32 operations in the same order, so both paths give identical pixels (tests compare them exactly).
"""

from __future__ import annotations

import numpy as np

from medkeras.data.windows import apply_windows

UINT16_SCALE = 255.0 / 65535.0  # a 16-bit grey level -> the 8-bit pixel scale, as a float32 factor


def _is_numpy(x) -> bool:
    return isinstance(x, np.ndarray) or np.isscalar(x)


def scale_uint16(x):
    """16-bit grey levels -> [0, 255]: `x * (255 / 65535)` in float32."""
    if _is_numpy(x):
        return np.asarray(x).astype(np.float32) * np.float32(UINT16_SCALE)
    import tensorflow as tf

    return tf.cast(x, tf.float32) * tf.constant(UINT16_SCALE, tf.float32)


def minmax_pixels(x, batched: bool = False):
    """Stretch an image's own range to [0, 255] (constant images become 0): `(x - min) * (255 / (max - min))`.

    Used where values have no fixed scale (float NPY arrays, DICOM without a window). `batched`: a tensor of
    several images (N, H, W[, C]), each stretched by its own range.
    """
    if _is_numpy(x):
        x = np.asarray(x, dtype=np.float32)
        lo, hi = x.min(), x.max()
        if hi <= lo:
            return np.zeros_like(x)
        return (x - lo) * (np.float32(255.0) / (hi - lo))
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    axes = list(range(1, x.shape.rank)) if batched else None
    lo = tf.reduce_min(x, axis=axes, keepdims=True)
    hi = tf.reduce_max(x, axis=axes, keepdims=True)
    scale = tf.where(hi > lo, tf.constant(255.0, tf.float32) / (hi - lo), tf.zeros_like(hi))
    return tf.where(hi > lo, (x - lo) * scale, tf.zeros_like(x))


def hu_to_pixels(hu, windows):
    """Hounsfield units (..., H, W) -> pixels (..., H, W, C): one channel per window (`windows` as `data.window`
    resolves it: [[level, width], ...]) times 255; with no window, each image's own range stretched (one channel).
    """
    if windows:
        channels = apply_windows(hu, windows)
        if _is_numpy(hu):
            channels *= np.float32(255.0)  # apply_windows' own new array: scaled in place
            return channels
        return channels * 255.0
    if _is_numpy(hu):
        return minmax_pixels(hu)[..., None]
    return minmax_pixels(hu, batched=hu.shape.rank == 3)[..., None]


def to_pixels(array: np.ndarray) -> np.ndarray:
    """Any decoded numeric array -> float32 [0, 255]: uint8 as is, uint16 scaled, anything else its range stretched."""
    if array.dtype == np.uint8:
        return array.astype(np.float32)
    if array.dtype == np.uint16:
        return scale_uint16(array)
    return minmax_pixels(array)
