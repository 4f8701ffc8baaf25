"""Pixels at any size -> the model's square size and three channels: one rule for training, predict and serving.

Bilinear, antialiased; images already at the size pass through unresampled (the serving graph, whose shapes are
only known at run time, decides that with a `tf.cond`). Grayscale is repeated to three channels last.
"""

from __future__ import annotations

import numpy as np

from medkeras.errors import ConfigError


def resize_images(images, size: int):
    """Bilinear, antialiased resize of a (N, H, W, C) or (H, W, C) float tensor to `size` x `size`."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    if images.shape[-3] == size and images.shape[-2] == size:
        return images
    return tf.image.resize(images, (size, size), method="bilinear", antialias=True)


def resize_pixels(image: np.ndarray, size: int) -> np.ndarray:
    """`resize_images` of one (H, W, C) numpy image on the CPU, by Pillow: its BILINEAR resize is the same filter
    (a triangle widened by the scale when shrinking, weights renormalised at the borders), equal to TensorFlow's to
    float32 rounding (<= 4e-3 of 255 from 512 px or 300 x 200 to 224, 28 to 64; tested). It runs without the GIL
    at 0.9 ms a 512 px slice against TensorFlow's 1.1-2.1 ms, so `decode_files`' threads resize on every core.
    The graph paths (serving, stores streamed, progressive resizing) keep TensorFlow's kernel."""
    from PIL import Image

    image = np.asarray(image, dtype=np.float32)
    if image.shape[0] == size and image.shape[1] == size:
        return image
    out = np.empty((size, size, image.shape[-1]), np.float32)
    for c in range(image.shape[-1]):
        plane = Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
        out[..., c] = np.asarray(plane.resize((size, size), Image.BILINEAR))
    return out


def resize_dynamic(images, size: int):
    """`resize_images` with its same-size pass-through decided at run time, for tensors of unknown H, W."""
    import tensorflow as tf

    if any(d is not None and d != size for d in images.shape[-3:-1]):  # known to differ: always resampled
        return resize_images(images, size)
    same = tf.logical_and(tf.equal(tf.shape(images)[-3], size), tf.equal(tf.shape(images)[-2], size))
    target = [size, size, images.shape[-1]] if images.shape.rank == 3 else [None, size, size, images.shape[-1]]
    # The static shape is set after the cond: an EnsureShape inside the untaken branch ran anyway (and failed) for
    # rank-3 inputs when the function was called directly rather than from tf.data.
    resized = tf.cond(same, lambda: tf.cast(images, tf.float32), lambda: resize_images(images, size))
    return tf.ensure_shape(resized, target)


def resize_to(images, size):
    """A (N, H, W, C) batch resized to `size` x `size` (a tensor: progressive resizing's variable, read per batch),
    unresampled where it is already at that size; the spatial shape is left unknown, as the size changes. A batch of
    studies (N, D, H, W, C) is resized in plane, every slice alike, its D slices kept."""
    import tensorflow as tf

    if images.shape.rank == 5:
        shape = tf.shape(images)
        flat = resize_to(tf.reshape(images, tf.concat([[-1], shape[2:]], 0)), size)
        out = tf.reshape(flat, tf.concat([shape[:2], tf.shape(flat)[1:]], 0))
        return tf.ensure_shape(out, [None, images.shape[1], None, None, images.shape[-1]])
    size = tf.convert_to_tensor(size)
    same = tf.logical_and(tf.equal(size, tf.shape(images)[1]), tf.equal(size, tf.shape(images)[2]))
    out = tf.cond(same, lambda: images, lambda: tf.image.resize(images, tf.stack([size, size]), antialias=True))
    return tf.ensure_shape(out, [None, None, None, images.shape[-1]])


def to_model_channels(images, channels: int = 3):
    """Repeat a single grayscale channel to `channels`; pass 3-channel images through (numpy in, a tensor out either
    way: three windows gave callers back their numpy array, and `.numpy()` on it failed)."""
    import tensorflow as tf

    n = images.shape[-1]
    if n == channels:
        return tf.convert_to_tensor(images) if isinstance(images, np.ndarray) else images
    if n == 1:
        return tf.repeat(images, channels, axis=-1)
    raise ConfigError(f"images have {n} channels; the model takes {channels} (use 1 or 3 windows)")


def to_model_input(images, size: int):
    """A graph batch (N, H, W, 1|3) of any size -> (N, size, size, 3): what the SavedModel's signatures feed.

    Resized first, then grey repeated to three channels: the same operations, in the same order, as
    `to_model_pixels` in Python, so both give the same pixels.
    """
    import tensorflow as tf

    resized = resize_dynamic(tf.cast(images, tf.float32), size)
    three = tf.cond(tf.shape(resized)[-1] == 1, lambda: tf.repeat(resized, 3, axis=-1), lambda: resized)
    return tf.ensure_shape(three, [None, size, size, 3])


def to_model_pixels(images, size: int) -> np.ndarray:
    """A pixel batch (N, H, W[, C]) -> float32 numpy (N, size, size, 3): what the model takes, outside tf.data."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    return to_model_channels(resize_images(images, size)).numpy()


def resized_array(images, size: int, chunk: int = 256) -> np.ndarray:
    """(N, H, W, C) -> float32 (N, size, size, C) with `resize_images`, filled chunk by chunk into one array."""
    out = np.empty((len(images), size, size, images.shape[-1]), np.float32)
    for start in range(0, len(images), chunk):
        out[start:start + chunk] = resize_images(images[start:start + chunk], size).numpy()
    return out
