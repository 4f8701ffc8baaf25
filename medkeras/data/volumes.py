"""Volumes to what a model sees: trilinear resampling to a spacing (mm) and/or a shape, in the TensorFlow graph (so
it runs inside tf.data, or a SavedModel signature, where the volume is already decoded).

Trilinear is separable: the in-plane bilinear of every slice, then the bilinear along the slices, with TF's
half-pixel convention (output voxel o samples input coordinate (o + 0.5) * in / out - 0.5, clamped at the edges,
as `scipy.ndimage.map_coordinates(order=1, mode="nearest")` does on the same coordinates). No antialiasing: CT
resampling (MONAI's Spacing, SimpleITK's ResampleImageFilter) samples, it does not low-pass first.
"""

from __future__ import annotations

import numpy as np

AIR_HU = -1024.0  # what a crop-or-pad to `size` pads with


def resampled_shape(shape, spacing, target_spacing) -> tuple:
    """The (D, H, W) that covers the same extent at `target_spacing`: round(shape * spacing / target), at least 1."""
    ratio = np.asarray(spacing, float) / np.asarray(target_spacing, float)
    return tuple(int(v) for v in np.maximum(1, np.round(np.asarray(shape, float) * ratio)))


def resample_volume(hu, spacing, target_spacing=None, size=None, pad_value: float = AIR_HU):
    """(D, H, W) HU -> (resampled volume, its spacing (z, y, x) mm), as TensorFlow tensors.

    `target_spacing` [z, y, x] mm: resampled to it (each axis's spacing then exactly extent / voxels: within half a
    voxel of the target). `size` [D, H, W]: without a spacing, resampled to that shape; with one, the resampled
    volume is centre-cropped or padded (with `pad_value`, air) to it, spacing kept.
    """
    import tensorflow as tf

    hu = tf.convert_to_tensor(hu, tf.float32)
    spacing = tf.cast(tf.convert_to_tensor(spacing), tf.float32)
    shape = tf.cast(tf.shape(hu), tf.float32)
    if target_spacing is not None:
        out = tf.maximum(1, tf.cast(tf.round(shape * spacing / tf.constant(target_spacing, tf.float32)), tf.int32))
    elif size is not None:
        out = tf.constant(size, tf.int32)
    else:
        return hu, spacing
    new_spacing = spacing * shape / tf.cast(out, tf.float32)
    x = tf.image.resize(hu[..., None], out[1:3], method="bilinear", antialias=False)  # every slice in plane
    x = tf.transpose(x, [1, 0, 2, 3])  # (H', D, W', 1): slices along an image axis
    x = tf.image.resize(x, tf.stack([out[0], out[2]]), method="bilinear", antialias=False)
    x = tf.transpose(x, [1, 0, 2, 3])[..., 0]
    if target_spacing is not None and size is not None:
        x = crop_or_pad(x, size, pad_value)
    return x, new_spacing


def resize_volumes(volumes, size):
    """A batch (N, D, H, W, C) resized trilinearly to `size` [D, H, W] (the same half-pixel rule as
    `resample_volume`: in plane, then along the slices; the identity at the same size)."""
    import tensorflow as tf

    x = tf.convert_to_tensor(volumes, tf.float32)
    n, d, c = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[4]
    depth, height, width = (int(v) for v in size)
    x = tf.reshape(x, tf.concat([[n * d], tf.shape(x)[2:4], [c]], 0))
    x = tf.image.resize(x, (height, width), method="bilinear", antialias=False)
    x = tf.transpose(tf.reshape(x, [n, d, height, width, c]), [0, 2, 1, 3, 4])  # (N, H', D, W', C)
    x = tf.image.resize(tf.reshape(x, [n * height, d, width, c]), (depth, width), method="bilinear", antialias=False)
    return tf.transpose(tf.reshape(x, [n, height, depth, width, c]), [0, 2, 1, 3, 4])


def crop_or_pad(volume, size, pad_value: float = AIR_HU):
    """A (D, H, W) tensor centre-cropped or padded (with `pad_value`) to `size` on each axis: on an axis longer than
    its size, (extra // 2) dropped before; on a shorter one, (short // 2) padded before and the rest after. One slice
    and one pad (a volume already at `size` passes through both unchanged)."""
    import tensorflow as tf

    have, want = tf.shape(volume), tf.constant(size, tf.int32)
    extra, short = tf.maximum(have - want, 0), tf.maximum(want - have, 0)
    volume = tf.slice(volume, extra // 2, tf.minimum(have, want))
    volume = tf.pad(volume, tf.stack([short // 2, short - short // 2], axis=1), constant_values=pad_value)
    return tf.ensure_shape(volume, list(size))


def slabs(volume, k: int):
    """(D, H, W, C) -> (D, H, W, k * C): at each slice the k slices centred on it (2.5D), the first and last slices
    repeated past the ends; channels slice-major (slice d - k // 2 first, each with its C windows)."""
    import tensorflow as tf

    volume = tf.convert_to_tensor(volume)
    depth = tf.shape(volume)[0]
    offsets = tf.range(k) - k // 2
    index = tf.clip_by_value(tf.range(depth)[:, None] + offsets[None, :], 0, depth - 1)  # (D, k)
    stacked = tf.gather(volume, index)  # (D, k, H, W, C)
    stacked = tf.transpose(stacked, [0, 2, 3, 1, 4])  # (D, H, W, k, C)
    shape = tf.shape(stacked)
    return tf.reshape(stacked, tf.concat([shape[:3], [k * volume.shape[-1]]], 0))
