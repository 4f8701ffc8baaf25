"""Flip, rotation, zoom and translation as one random affine transform per image: one resampling pass.

Keras' RandomFlip, RandomRotation, RandomZoom and RandomTranslation each resample the whole batch; chained, the
lung-CT recipe paid four passes (and four interpolation blurs) per image. Here the four are composed into a
single 2x3 matrix per image and applied with one `keras.ops.image.affine_transform` (TF's
ImageProjectiveTransformV3). Factors mean what they mean in those Keras layers: rotation a fraction of a full
turn, zoom a fraction of the side (positive = zoom out), translation a fraction of the side, flips with
probability 1/2.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from medkeras.data.cpu_kernels import FILL_MODES, warp_affine


@keras.saving.register_keras_serializable(package="medkeras")
class RandomAffine(keras.layers.Layer):
    """Per-image random flip + rotation + zoom + translation about the image centre, resampled once (bilinear)."""

    def __init__(self, flip="horizontal", rotation=0.0, zoom=0.0, translation=0.0, fill_mode="reflect",
                 fill_value=0.0, interpolation="bilinear", seed=None, kernel="tf", **kwargs):
        super().__init__(**kwargs)
        if flip not in ("none", "horizontal", "vertical", "horizontal_and_vertical"):
            raise ValueError(f"flip must be none, horizontal, vertical or horizontal_and_vertical, got {flip!r}")
        self.flip, self.rotation, self.zoom, self.translation = flip, float(rotation), float(zoom), float(translation)
        self.fill_mode, self.fill_value, self.interpolation, self.seed = fill_mode, float(fill_value), interpolation, seed
        if kernel not in ("tf", "opencv"):
            raise ValueError(f"kernel must be tf or opencv, got {kernel!r}")
        # "opencv": the drawn transforms applied by `cpu_kernels.warp_affine` (tf.data on the CPU); "tf": TF's op
        self.kernel = kernel
        self.generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def transforms(self, batch, height, width):
        """(batch, 8) projective coefficients mapping each output pixel to the input point it samples."""

        def uniform(limit):
            if limit <= 0:
                return ops.zeros((batch,), "float32")
            return keras.random.uniform((batch,), -limit, limit, seed=self.generator)

        def coin():
            return keras.random.uniform((batch,), 0.0, 1.0, seed=self.generator) < 0.5

        none = ops.zeros((batch,), "bool")
        flip_x = coin() if self.flip in ("horizontal", "horizontal_and_vertical") else none
        flip_y = coin() if self.flip in ("vertical", "horizontal_and_vertical") else none
        height, width = ops.cast(height, "float32"), ops.cast(width, "float32")
        return compose(uniform(self.rotation * 2.0 * math.pi), 1.0 + uniform(self.zoom),
                       uniform(self.translation) * width, uniform(self.translation) * height, flip_x, flip_y,
                       height, width)

    def call(self, images, training=True):
        if not training:
            return images
        shape = ops.shape(images)
        transform = self.transforms(shape[0], shape[1], shape[2])
        if self.kernel == "opencv" and self.fill_mode in FILL_MODES:  # wrap stays on TF (`cpu_kernels._BORDERS`)
            return ops.cast(self._opencv(images, transform), images.dtype)
        out = ops.image.affine_transform(
            ops.cast(images, "float32"), transform, interpolation=self.interpolation, fill_mode=self.fill_mode,
            fill_value=self.fill_value, data_format="channels_last",
        )
        return ops.cast(out, images.dtype)

    def _opencv(self, images, transform):
        import tensorflow as tf

        def warp(x, t):
            return warp_affine(x, t, self.interpolation, self.fill_mode, self.fill_value)

        images = tf.cast(images, tf.float32)
        out = tf.numpy_function(warp, [images, tf.cast(transform, tf.float32)], tf.float32, stateful=False)
        return tf.ensure_shape(out, images.shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(), "flip": self.flip, "rotation": self.rotation, "zoom": self.zoom,
            "translation": self.translation, "fill_mode": self.fill_mode, "fill_value": self.fill_value,
            "interpolation": self.interpolation, "seed": self.seed, "kernel": self.kernel,
        }


def compose(angle, scale, tx, ty, flip_x, flip_y, height, width):
    """(B, 8) projective coefficients for `input = centre + scale * R(angle) (output - centre - t)`, then flips.

    Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2); pixel centres are integers and the
    image centre is ((W - 1) / 2, (H - 1) / 2), as in ImageProjectiveTransformV3.
    """
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
    a0, a1, a2 = cos, -sin, cx - cos * (cx + tx) + sin * (cy + ty)
    b0, b1, b2 = sin, cos, cy - sin * (cx + tx) - cos * (cy + ty)
    fx, fy = ops.where(flip_x, -1.0, 1.0), ops.where(flip_y, -1.0, 1.0)
    a0, a1, a2 = a0 * fx, a1 * fx, ops.where(flip_x, width - 1.0 - a2, a2)
    b0, b1, b2 = b0 * fy, b1 * fy, ops.where(flip_y, height - 1.0 - b2, b2)
    zeros = ops.zeros_like(a0)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
