"""tf.data pipelines: decoded images -> resized 3-channel float32 pixels [0, 255] -> batches for the model.

Files are decoded once (DICOM in the graph, the rest in threads, with a progress bar) into arrays at the training
size, which batches are gathered from by index; augmentation runs on batches with Keras' own layers, on the
training split only. The same `resize_images` is used by the exported SavedModel, so training and serving
resize identically.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medkeras.data.sources import Split, read_image
from medkeras.data.windows import parse_windows
from medkeras.errors import ConfigError, DataError

AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TF at module load


def resize_images(images, size: int):
    """Bilinear, antialiased resize of a (N, H, W, C) or (H, W, C) float tensor to `size` x `size`.

    Images already `size` x `size` pass through unresampled: training, predict and serving all follow this rule
    (the serving graph, whose shapes are only known at run time, checks it with a `tf.cond`).
    """
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    if images.shape[-3] == size and images.shape[-2] == size:
        return images
    return tf.image.resize(images, (size, size), method="bilinear", antialias=True)


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


def to_model_pixels(images, size: int) -> np.ndarray:
    """A pixel batch (N, H, W[, C]) -> float32 numpy (N, size, size, 3): what the model takes, outside tf.data."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    return to_model_channels(resize_images(images, size)).numpy()


def to_model_channels(images, channels: int = 3):
    """Repeat a single grayscale channel to `channels`; pass 3-channel images through."""
    import tensorflow as tf

    n = images.shape[-1]
    if n == channels:
        return images
    if n == 1:
        return tf.repeat(images, channels, axis=-1)
    raise ConfigError(f"images have {n} channels; the model takes {channels} (use 1 or 3 windows)")


_DECODERS: dict = {}


def _dicom_decoder(windows: tuple, size: int):
    """The graph function of `decode_dicom_graph`, traced once per (windows, size) in a process, not per call."""
    if (windows, size) in _DECODERS:
        return _DECODERS[windows, size]
    import tensorflow as tf

    from medkeras.data.dicom import PIXEL_DTYPES
    from medkeras.data.windows import apply_windows

    types = [getattr(tf, name) for name in PIXEL_DTYPES]
    signature = [tf.TensorSpec((), kind) for kind in (tf.int64, tf.string, tf.int64, tf.int64, tf.int64, tf.int64,
                                                      tf.int32, tf.float32, tf.float32, tf.bool)]

    @tf.function(input_signature=signature, autograph=False)
    def decode(i, path, offset, nbytes, rows, cols, code, slope, intercept, invert):
        raw = tf.strings.substr(tf.io.read_file(path), offset, nbytes)
        branches = [lambda t=t: tf.cast(tf.io.decode_raw(raw, t, little_endian=True), tf.float32) for t in types]
        hu = tf.reshape(tf.switch_case(code, branches), tf.stack([rows, cols])) * slope + intercept
        hu = tf.cond(invert, lambda: tf.reduce_max(hu) + tf.reduce_min(hu) - hu, lambda: hu)
        image = tf.ensure_shape(apply_windows(hu, list(windows)) * 255.0, (None, None, len(windows)))
        return i, resize_dynamic(image, size)

    _DECODERS[windows, size] = decode
    return decode


def decode_dicom_graph(paths, windows, size: int):
    """Decode plain DICOM files (`dicom.pixel_layout`) inside the tf.data graph; yields (index, image) in order.

    pydicom parses only the headers (~1 ms each, one thread: a pool of 4 was 2x slower on the GIL), 16 at a time
    in a generator, while reading the bytes, the HU rescale, MONOCHROME1 inversion, windows and the resize run as
    graph ops on the other cores, outside the GIL. Files that are not plain (compressed, big-endian, multi-frame,
    colour, no rescale tags on CT, unreadable) are not yielded: their indices end in the returned `rest` list,
    for the pydicom path.
    Images equal `read_image` + `resize_images` exactly (tests compare them on real slices).
    """
    import tensorflow as tf

    from medkeras.data.dicom import PIXEL_DTYPES, pixel_layout

    rest = []
    kinds = (np.int64, str, np.int64, np.int64, np.int64, np.int64, np.int32, np.float32, np.float32, bool)

    def headers(chunk=16):
        """Runs in a tf.data thread: the graph decodes the previous chunk on the other cores meanwhile."""
        rows = []
        for i, path in enumerate(paths):  # one thread: pydicom's parser is pure Python; 4 threads were 2x slower
            layout = pixel_layout(path)
            if layout is None:
                rest.append(i)
            else:
                rows.append((i, str(path), layout["offset"], layout["nbytes"], layout["rows"], layout["cols"],
                             PIXEL_DTYPES.index(layout["dtype"]), layout["slope"], layout["intercept"], layout["invert"]))
            if len(rows) == chunk or (rows and i == len(paths) - 1):
                yield tuple(np.asarray(column, dtype=kind) for column, kind in zip(zip(*rows), kinds))
                rows = []

    decode = _dicom_decoder(tuple(tuple(w) for w in windows), size)
    spec = tuple(tf.TensorSpec((None,), s.dtype) for s in decode.input_signature)
    ds = tf.data.Dataset.from_generator(headers, output_signature=spec).prefetch(4).unbatch()
    ds = ds.map(decode, num_parallel_calls=os.cpu_count() or AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)

    def items():
        for i, image in ds.as_numpy_iterator():
            yield int(i), image

    return items(), rest


def decode_files(split: Split, data_cfg, on_bad_file: str = "fail", workers: int = 4, verbose: bool = True):
    """Decode every file of a split to float32 (N, S, S, C) at `data_cfg.image_size`.

    With a window configured, plain DICOM files are decoded in the graph (`decode_dicom_graph`); the rest one by
    one (pydicom, PIL, numpy) in a thread pool. Returns (images, labels, names, bad) where `bad` lists
    (path, cause) of files skipped under `skip`. Under `fail` the first unreadable file raises `DataError`
    naming it, before anything is trained or written.
    """
    from medkeras.data.sources import DICOM_SUFFIXES

    size = data_cfg.image_size
    windows = parse_windows(data_cfg.window)
    paths = [str(p) for p in split.paths]

    def load(path):
        try:
            image = read_image(path, windows)
        except DataError as exc:
            return None, exc
        return resize_images(image, size).numpy(), None

    progbar = None
    if verbose and len(paths) > 200:
        import keras

        progbar = keras.utils.Progbar(len(paths), unit_name="file")
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progbar is not None:
            progbar.update(done)

    results = {}
    pending = list(range(len(paths)))
    dicom = [i for i in pending if Path(paths[i]).suffix.lower() in DICOM_SUFFIXES]
    if windows and dicom:
        decoded, rest = decode_dicom_graph([paths[i] for i in dicom], windows, size)
        for j, image in decoded:
            results[dicom[j]] = (image, None)
            tick()
        graph_done = set(results)
        pending = [i for i in pending if i not in graph_done]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, outcome in zip(pending, pool.map(load, [paths[i] for i in pending])):
            results[i] = outcome
            tick()
    keep, bad = [], []
    for i in range(len(paths)):
        error = results[i][1]
        if error is not None:
            if on_bad_file == "fail":
                raise error
            bad.append((paths[i], error.cause))
        else:
            keep.append(i)
    channels = max((results[i][0].shape[-1] for i in keep), default=3)
    # Filled in place, each decoded image released as it is copied (a list + np.stack held both at once);
    # `make_tf_dataset` then gathers batches from this array without copying it.
    stacked = np.empty((len(keep), size, size, channels), np.float32)
    for k, i in enumerate(keep):
        image = results.pop(i)[0]
        stacked[k] = image if image.shape[-1] == channels else np.repeat(image, channels, axis=-1)
    keep = np.asarray(keep, dtype=np.int64)
    return stacked, split.labels[keep], [paths[i] for i in keep], bad


def split_arrays(split: Split, data_cfg, on_bad_file="fail", verbose=True):
    """(images, labels, names, bad) for a split, whether it is held in memory, as files or in a prepared store."""
    if split.store is not None:
        from medkeras.data.store import store_arrays

        return (*store_arrays(split, data_cfg), [])
    if split.images is not None:
        return split.images, split.labels, split.names(), []
    return decode_files(split, data_cfg, on_bad_file, verbose=verbose)


def _sometimes(layer, probability: float, seed: int):
    """Apply `layer` to each image of a batch with `probability` (for deterministic transforms such as CLAHE)."""
    import keras
    import tensorflow as tf

    class Sometimes(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = layer
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=True):
            if not training:
                return x
            pick = keras.random.uniform((tf.shape(x)[0], 1, 1, 1), seed=self.generator) < probability
            return tf.where(pick, tf.cast(self.inner(x), x.dtype), x)

    return Sometimes(name=f"sometimes_{layer.name}")


def build_augmenter(aug_cfg, seed: int):
    """A Keras Sequential of the configured augmentation layers (None when every factor is off).

    Keras core layers (keras-cv is frozen upstream), except flip/rotation/zoom/translation, fused into one
    `RandomAffine` (same factors, one resampling pass); CLAHE is applied to a random share of images.
    """
    import keras

    from medkeras.data.affine import RandomAffine

    layers = []
    if aug_cfg.clahe > 0:
        clahe = keras.layers.ContrastLimitedAdaptiveHistogramEqualization(
            value_range=(0, 255), clip_limit=aug_cfg.clahe_clip_limit, name="clahe"
        )
        layers.append(_sometimes(clahe, aug_cfg.clahe, seed + 6))
    if aug_cfg.flip != "none" or aug_cfg.rotation > 0 or aug_cfg.zoom > 0 or aug_cfg.translation > 0:
        # One resampling for all four (Keras' four layers resampled four times: 3.6x slower at 224 px)
        layers.append(RandomAffine(aug_cfg.flip, aug_cfg.rotation, aug_cfg.zoom, aug_cfg.translation,
                                   fill_mode=aug_cfg.fill_mode, seed=seed, name="flip_rotate_zoom_translate"))
    if aug_cfg.brightness > 0:
        layers.append(keras.layers.RandomBrightness(aug_cfg.brightness, value_range=(0, 255), seed=seed + 4))
    if aug_cfg.contrast > 0:
        layers.append(keras.layers.RandomContrast(aug_cfg.contrast, value_range=(0, 255), seed=seed + 5))
    if aug_cfg.randaugment > 0:
        layers.append(keras.layers.RandAugment((0, 255), aug_cfg.randaugment, aug_cfg.randaugment_factor, seed=seed + 7))
    if aug_cfg.blur > 0:
        layers.append(keras.layers.RandomGaussianBlur(aug_cfg.blur, 3, aug_cfg.blur_sigma, (0, 255), seed=seed + 8))
    if aug_cfg.erasing > 0:
        layers.append(keras.layers.RandomErasing(aug_cfg.erasing, value_range=(0, 255), seed=seed + 9))
    if aug_cfg.noise > 0:
        # Keras' GaussianNoise takes a standard deviation in [0, 1]: apply it on pixels / 255
        layers += [keras.layers.Rescaling(1 / 255.0), keras.layers.GaussianNoise(aug_cfg.noise / 255.0, seed=seed + 10),
                   keras.layers.Rescaling(255.0)]
    return keras.Sequential(layers, name="augment") if layers else None


def make_tf_dataset(
    images,
    labels,
    data_cfg,
    batch_size: int,
    training: bool = False,
    seed: int = 42,
    augment: bool = True,
    size_var=None,
):
    """Arrays -> a batched, prefetched tf.data.Dataset of (float32 [B, S, S, 3] in [0, 255], int labels).

    The arrays stay where they are: batches are gathered from them by index (`gather_batches`), so a split held
    in memory is held once (`from_tensor_slices` copied it into the dataset graph: a fit's peak was ~2.8x the
    split) and training sees a full shuffle each epoch. Arrays not at the training size are resized once up front
    (`data.cache: memory`, or `auto` below 4 GiB resized) or per batch (`none`, or `auto` above). Grayscale stays
    one channel through augmentation (a third of the work) and is repeated to 3 at the end.
    """
    size = data_cfg.image_size
    if images.ndim == 3:  # (N, H, W) grayscale: a view with a channel axis, not a copy
        images = images[..., None]
    resize = images.shape[1:3] != (size, size)
    nbytes = len(images) * size * size * images.shape[-1] * 4
    if resize and (data_cfg.cache == "memory" or (data_cfg.cache == "auto" and nbytes < 4 * 2**30)):
        images, resize = resized_array(images, size), False
    ds = gather_batches(images, labels, batch_size, shuffle=training, seed=seed)
    if resize:
        ds = ds.map(lambda x, y: (resize_images(x, size), y), num_parallel_calls=AUTOTUNE)
    return augment_batches(ds, data_cfg, training and augment, seed, size_var)


def resized_array(images, size: int, chunk: int = 256) -> np.ndarray:
    """(N, H, W, C) -> float32 (N, size, size, C) with `resize_images`, filled chunk by chunk into one array."""
    out = np.empty((len(images), size, size, images.shape[-1]), np.float32)
    for start in range(0, len(images), chunk):
        out[start:start + chunk] = resize_images(images[start:start + chunk], size).numpy()
    return out


def gather_batches(images: np.ndarray, labels, batch_size: int, shuffle: bool = False, seed: int = 42):
    """Batches (images[idx], labels[idx]) taken from numpy arrays by index; float32 images (uint8 cast per batch).

    Only indices go through tf.data (shuffled in full each epoch when `shuffle`); one `numpy_function` per batch
    copies the batch out, so nothing but the batches in flight exists besides the arrays themselves.
    """
    import tensorflow as tf

    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)

    def take(idx):
        return images[idx], labels[idx]

    def gather(idx):
        x, y = tf.numpy_function(take, [idx], (tf.as_dtype(images.dtype), tf.int64), stateful=False)
        x = tf.cast(tf.ensure_shape(x, (None, *images.shape[1:])), tf.float32)
        return x, tf.ensure_shape(y, (None,))

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(gather, num_parallel_calls=AUTOTUNE, deterministic=True)


def augment_batches(ds, data_cfg, augment: bool = False, seed: int = 42, size_var=None):
    """Batches -> augmented on the batch with Keras layers when `augment`, clipped to [0, 255], 3 channels, prefetched.

    `size_var` (a tf.Variable, progressive resizing): batches are resized to its current value when it differs
    from `data.image_size`, before augmentation; a callback sets it at each epoch's start.
    """
    import tensorflow as tf

    augmenter = build_augmenter(data_cfg.augment, seed) if augment else None
    if augmenter is not None and data_cfg.augment.randaugment > 0:  # RandAugment's colour operations need RGB
        ds = ds.map(lambda x, y: (to_model_channels(x), y))
    if size_var is not None:
        full = data_cfg.image_size

        def rescale(x, y):
            size = tf.convert_to_tensor(size_var)
            x = tf.cond(tf.equal(size, full), lambda: x, lambda: tf.image.resize(x, tf.stack([size, size]), antialias=True))
            return tf.ensure_shape(x, [None, None, None, x.shape[-1]]), y

        ds = ds.map(rescale)
    if augmenter is not None:

        def augment_batch(x, y):
            return to_model_channels(tf.clip_by_value(augmenter(x, training=True), 0.0, 255.0)), y

        return ds.map(augment_batch, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    return ds.map(lambda x, y: (to_model_channels(x), y)).prefetch(AUTOTUNE)


def stream_tf_dataset(split: Split, data_cfg, batch_size: int, training=False, seed=42, augment=True, size_var=None):
    """A prepared-store split streamed as batches (never held in memory): files shuffled, then a bounded buffer."""
    from medkeras.data.store import store_examples

    ds = store_examples(split, data_cfg, data_cfg.image_size, shuffle=training, seed=seed)
    if training:
        # Files are shuffled each epoch; the example buffer is capped at ~64 MiB so memory stays flat as data grows.
        per_image = data_cfg.image_size**2 * max(split.channels or [3]) * 4
        ds = ds.shuffle(min(len(split), max(256, 64 * 2**20 // per_image)), seed=seed, reshuffle_each_iteration=True)
    return augment_batches(ds.batch(batch_size), data_cfg, training and augment, seed, size_var)
