"""The graph twins of the Python readers: PNG/JPEG bytes and plain DICOM files decoded by TensorFlow ops.

`decode_encoded` is what the SavedModel's `serve_encoded` runs, `decode_dicom_graph` what `fit` runs for plain
DICOM; both give exactly what `files.read_image` gives for the same file (tests compare them pixel for pixel).
JPEG is decoded with the accurate integer DCT, as Pillow (libjpeg's default) does: TensorFlow's default
(INTEGER_FAST) differs from Pillow by up to ~20 grey levels on real CT JPEGs.
"""

from __future__ import annotations

import os

import numpy as np

from medkeras.data.readers.pixels import hu_to_pixels, scale_uint16

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


_DICOM_DECODERS: dict = {}


def dicom_decoder(windows):
    """The graph function that turns one plain DICOM (its `pixel_layout` fields) into windowed pixels (H, W, C).

    Traced once per windows in a process, not per call.
    """
    key = tuple(tuple(float(v) for v in w) for w in windows)
    if key in _DICOM_DECODERS:
        return _DICOM_DECODERS[key]
    import tensorflow as tf

    from medkeras.data.readers.dicom_layout import PIXEL_DTYPES

    types = [getattr(tf, name) for name in PIXEL_DTYPES]
    signature = [tf.TensorSpec((), kind) for kind in (tf.string, tf.int64, tf.int64, tf.int64, tf.int64, tf.int32,
                                                      tf.float32, tf.float32, tf.bool)]

    @tf.function(input_signature=signature, autograph=False)
    def decode(path, offset, nbytes, rows, cols, code, slope, intercept, invert):
        raw = tf.strings.substr(tf.io.read_file(path), offset, nbytes)
        branches = [lambda t=t: tf.cast(tf.io.decode_raw(raw, t, little_endian=True), tf.float32) for t in types]
        hu = tf.reshape(tf.switch_case(code, branches), tf.stack([rows, cols])) * slope + intercept
        hu = tf.cond(invert, lambda: tf.reduce_max(hu) + tf.reduce_min(hu) - hu, lambda: hu)
        return tf.ensure_shape(hu_to_pixels(hu, [list(w) for w in key]), (None, None, len(key)))

    _DICOM_DECODERS[key] = decode
    return decode


def decode_dicom_graph(paths, windows, then=None):
    """Decode plain DICOM files (`dicom.pixel_layout`) inside the tf.data graph -> (items, rest).

    `items` yields (index, pixels) in order, each `then(pixels)` when given (e.g. the resize, fused into the same
    map). pydicom parses only the headers (~1 ms each, one thread: a pool of 4 was 2x slower on the GIL), 16 at
    a time in a generator, while reading the bytes, the HU rescale, MONOCHROME1 inversion and the windows run as
    graph ops on the other cores, outside the GIL. Files that are not plain (compressed, big-endian, multi-frame,
    colour, no rescale tags on CT, unreadable) are not yielded: their indices end in `rest`, for pydicom.
    """
    import tensorflow as tf

    from medkeras.data.readers.dicom_layout import PIXEL_DTYPES, pixel_layout

    rest = []
    kinds = (np.int64, str, np.int64, np.int64, np.int64, np.int64, np.int32, np.float32, np.float32, bool)

    def headers(chunk=16):
        """Runs in a tf.data thread: the graph decodes the previous chunk on the other cores meanwhile."""
        rows = []
        for i, path in enumerate(paths):
            layout = pixel_layout(path)
            if layout is None:
                rest.append(i)
            else:
                rows.append((i, str(path), layout["offset"], layout["nbytes"], layout["rows"], layout["cols"],
                             PIXEL_DTYPES.index(layout["dtype"]), layout["slope"], layout["intercept"], layout["invert"]))
            if len(rows) == chunk or (rows and i == len(paths) - 1):
                yield tuple(np.asarray(column, dtype=kind) for column, kind in zip(zip(*rows), kinds))
                rows = []

    decode = dicom_decoder(windows)

    def one(i, *fields):
        image = decode(*fields)
        return i, (then(image) if then is not None else image)

    spec = (tf.TensorSpec((None,), tf.int64), *(tf.TensorSpec((None,), s.dtype) for s in decode.input_signature))
    ds = tf.data.Dataset.from_generator(headers, output_signature=spec).prefetch(4).unbatch()
    ds = ds.map(one, num_parallel_calls=os.cpu_count() or -1, deterministic=True).prefetch(-1)

    def items():
        for i, image in ds.as_numpy_iterator():
            yield int(i), image

    return items(), rest
