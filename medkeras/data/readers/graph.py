"""The graph twin of the Python readers: PNG/JPEG bytes decoded by TensorFlow ops.

`decode_encoded` is what the SavedModel's `serve_encoded` runs; it gives exactly what `files.read_image` gives for
the same file (tests compare them pixel for pixel). Plain DICOM has no graph decoder: `fit` reads it with numpy
from the layout its listing noted (`dicom_layout.plain_hu`), 2-3x the graph decoder it replaced.
JPEG is decoded with the accurate integer DCT, as Pillow (libjpeg's default) does: TensorFlow's default
(INTEGER_FAST) differs from Pillow by up to ~20 grey levels on real CT JPEGs.
"""

from __future__ import annotations

from medkeras.data.readers.pixels import scale_uint16

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_DCT = "INTEGER_ACCURATE"  # libjpeg's JDCT_ISLOW: Pillow's decoding, exactly


def decode_encoded(data):
    """PNG or JPEG bytes (a scalar string tensor) -> float32 (H, W, C) pixels in [0, 255], C = 1 or 3.

    Pillow's rules (`files._read_picture`): grey stays one channel, alpha is dropped, palettes become RGB,
    16-bit grey is scaled by 255/65535 and 16-bit colour keeps its high byte. Other bytes fail with an
    InvalidArgumentError that says what is accepted.
    """
    import tensorflow as tf

    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(data, 0, 8), PNG_MAGIC)
    check = tf.debugging.Assert(tf.logical_or(is_jpeg, is_png), ["image_bytes: not PNG or JPEG data"])

    def jpeg():
        return tf.cast(tf.io.decode_jpeg(data, channels=0, dct_method=JPEG_DCT), tf.float32)

    def png():
        header = tf.io.decode_raw(tf.strings.substr(data, 24, 2), tf.uint8)  # IHDR: bit depth, colour type
        depth, colour = header[0], header[1]

        def deep():
            image = tf.io.decode_png(data, channels=0, dtype=tf.uint16)
            grey = tf.equal(colour, 0)
            high = tf.cast(tf.bitwise.right_shift(image, 8), tf.float32)
            # Pillow reads 16-bit grey + alpha as RGBA (grey repeated, high byte): three equal channels
            high = tf.cond(tf.equal(colour, 4), lambda: tf.repeat(high[..., :1], 3, axis=-1), lambda: high)
            return tf.cond(grey, lambda: scale_uint16(image), lambda: high)

        return tf.cond(tf.equal(depth, 16), deep, lambda: tf.cast(tf.io.decode_png(data, channels=0), tf.float32))

    with tf.control_dependencies([check]):
        image = tf.cond(is_jpeg, jpeg, png)
    channels = tf.shape(image)[-1]
    image = tf.cond(tf.equal(channels, 2), lambda: image[..., :1], lambda: image)  # grey + alpha -> grey
    image = tf.cond(tf.equal(channels, 4), lambda: image[..., :3], lambda: image)  # RGBA -> RGB
    return tf.ensure_shape(image, [None, None, None])
