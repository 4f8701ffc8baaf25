"""tf.data pipelines: a split's images -> resized float32 pixels [0, 255] -> batches for the model.

Files are decoded once through the readers (in threads on every core, with a progress bar)
into one array at the training size, which batches are gathered from by index; augmentation runs on batches with
Keras' own layers (their transforms resampled by OpenCV where it is installed: `cpu_kernels.py`), on the training
split only. Resizing is `resize.py`'s, the rule predict and serving follow.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from medkeras.data.allocator import keep_batch_buffers
from medkeras.data.augment import augment_pixels, build_augmenter
from medkeras.data.cpu_kernels import pipeline_kernel, repeat_grey
from medkeras.data.readers import read_image
from medkeras.data.resize import (
    resize_images,
    resize_pixels,
    resize_to,
    resized_array,
    to_model_channels,
)
from medkeras.data.store import store_arrays, store_batches, store_examples, study_examples
from medkeras.data.types import Split
from medkeras.errors import DataError
from medkeras.progress import Progress

AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TF at module load


def decode_files(split: Split, data_cfg, on_bad_file: str = "fail", workers: int | None = None, verbose: bool = True):
    """Decode every file of a split to float32 (N, S, S, C) at `data_cfg.image_size`.

    Each file is read (`read_image`: a listed plain DICOM by numpy from the layout its listing noted, the rest by
    pydicom, Pillow or numpy), windowed and resized (`resize_pixels`, TensorFlow's filter by Pillow) in a thread
    pool: file reads, numpy and Pillow release the GIL, so every core decodes. Returns (images, labels, names, bad)
    where names are the split's (`Split.names`: relative or redacted) and `bad` lists (name, cause) of files
    skipped under `skip`. Under `fail` the first unreadable file raises `DataError` naming it, before anything is
    trained or written.
    """
    import os

    size = data_cfg.image_size
    windows = data_cfg.window or []
    paths = [str(p) for p in split.paths]
    shown = split.names()  # what outputs call them: relative to the source's folder, or redacted

    def load(path):
        try:
            image = read_image(path, windows)
        except DataError as exc:
            return None, exc
        return resize_pixels(image, size), None

    bar = Progress(len(paths), "decoding files", "file") if verbose and len(paths) > 200 else None
    results = {}
    # 2 threads per core: a thread waiting on a file read leaves its core to the other (540-670 slices/s on 2)
    with ThreadPoolExecutor(max_workers=workers or 2 * (os.cpu_count() or 1)) as pool:
        for i, outcome in enumerate(pool.map(load, paths)):
            results[i] = outcome
            if bar is not None:
                bar.tick()
    keep, bad = [], []
    for i in range(len(paths)):
        error = results[i][1]
        if error is not None:
            if on_bad_file == "fail":
                raise error
            bad.append((shown[i], error.cause))
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
    return stacked, split.labels[keep], [shown[i] for i in keep], bad


def split_arrays(split: Split, data_cfg, on_bad_file="fail", verbose=True):
    """(images, labels, names, bad) for a split, whether it is held in memory, as files or in a prepared store; a
    split of studies gives (N, D, H, W, C) volumes (`studies.study_split_arrays`)."""
    if split.studies:
        from medkeras.data.studies import study_split_arrays

        return study_split_arrays(split, data_cfg, on_bad_file)
    if split.store is not None:
        return (*store_arrays(split, data_cfg), [])
    if split.images is not None:
        return split.images, split.labels, split.names(), []
    return decode_files(split, data_cfg, on_bad_file, verbose=verbose)


def make_tf_dataset(
    images,
    labels,
    data_cfg,
    batch_size: int,
    training: bool = False,
    seed: int = 42,
    augment: bool = True,
    size_var=None,
    deterministic: bool = True,
    balanced: bool = False,
    front: bool = False,
):
    """Arrays -> a batched, prefetched tf.data.Dataset of (float32 [B, S, S, 3] in [0, 255], int labels).

    The arrays stay where they are: batches are gathered from them by index (`gather_batches`), so a split held
    in memory is held once (`from_tensor_slices` copied it into the dataset graph: a fit's peak was ~2.8x the
    split) and training sees a full shuffle each epoch. Arrays not at the training size are resized once up front
    (`data.cache: memory`, or `auto` below 4 GiB resized) or per batch (`none`, or `auto` above). Grayscale stays
    one channel through augmentation (a third of the work) and is repeated to 3 at the end.
    """
    if training:
        keep_batch_buffers()
    if images.ndim == 5:  # (N, D, H, W, C) studies, already at data.volume_size
        return study_batches(images, labels, data_cfg, batch_size, training and augment, seed, deterministic,
                             balanced, front and training, size_var)
    size = data_cfg.image_size
    if images.ndim == 3:  # (N, H, W) grayscale: a view with a channel axis, not a copy
        images = images[..., None]
    resize = images.shape[1:3] != (size, size)
    nbytes = len(images) * size * size * images.shape[-1] * 4
    if resize and (data_cfg.cache == "memory" or (data_cfg.cache == "auto" and nbytes < 4 * 2**30)):
        images, resize = resized_array(images, size), False
    ds = gather_batches(images, labels, batch_size, shuffle=training, seed=seed, balanced=training and balanced)
    if resize:
        ds = ds.map(lambda x, y: (resize_images(x, size), y), num_parallel_calls=AUTOTUNE)
    return augment_batches(ds, data_cfg, training and augment, seed, size_var, deterministic, front and training)


def study_batches(volumes, labels, data_cfg, batch_size: int, training: bool = False, seed: int = 42,
                  deterministic: bool = True, balanced: bool = False, front: bool = False, size_var=None):
    """Studies (N, D, H, W, C) read at `data.volume_size` (`studies.study_arrays`) -> batches of float32
    (B, D, H, W, 3) in [0, 255]: on the training split augmented with one draw per study (`augment3d.py`), a single
    window repeated to 3 channels at the end, as slices are. `front` (`data.augment_on: model`): batches leave as
    read, and `augment3d.study_training_front` in the fitted model does the rest on its device. `size_var`
    (progressive resizing): augmented batches resized in plane to its current value, slices kept."""
    ds = gather_batches(volumes, labels, batch_size, shuffle=training, seed=seed, balanced=training and balanced)
    return _study_batches_out(ds, data_cfg, training, seed, deterministic, front, size_var)


def _study_batches_out(ds, data_cfg, training: bool, seed: int, deterministic: bool, front: bool = False,
                       size_var=None):
    """Batches of studies, in memory or streamed -> augmented (training), resized in plane (progressive resizing),
    3 channels, prefetched."""
    from medkeras.data.augment3d import build_volume_augmenter

    if front:
        return ds.prefetch(2)
    augmenter = build_volume_augmenter(data_cfg.augment, seed, kernel=pipeline_kernel()) if training else None
    if augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=None if deterministic else AUTOTUNE)
    if size_var is not None:
        ds = ds.map(lambda x, y: (resize_to(x, size_var), y))
    # two batches ahead, not AUTOTUNE: its buffer grows with the epoch, and a batch of studies is tens of MiB
    return ds.map(lambda x, y: (_model_channels(x), y)).prefetch(2)


def _model_channels(x):
    """A batch's grey repeated to the model's 3 channels as it leaves the pipeline: by OpenCV where it runs
    (`cpu_kernels.repeat_grey`: 0.11 ms of core time an image in tf.data against 0.17 for `tf.repeat`), else as the
    model's front does it."""
    import tensorflow as tf

    if x.shape[-1] != 1 or pipeline_kernel() != "opencv":
        return to_model_channels(x)
    out = tf.numpy_function(repeat_grey, [tf.cast(x, tf.float32)], tf.float32, stateful=False)
    return tf.ensure_shape(out, [*x.shape[:-1], 3])


def gather_batches(images: np.ndarray, labels, batch_size: int, shuffle: bool = False, seed: int = 42,
                   balanced: bool = False):
    """Batches (images[idx], labels[idx]) taken from numpy arrays by index; float32 images (uint8 cast per batch).

    Only indices go through tf.data (shuffled in full each epoch when `shuffle`); one `numpy_function` per batch
    copies the batch out, so nothing but the batches in flight exists besides the arrays themselves. `balanced`
    (`train.sampling: balanced`): each index drawn from a class chosen uniformly, an epoch as many as the split has.
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

    if balanced:
        ds = balanced_draws([tf.data.Dataset.from_tensor_slices(np.flatnonzero(labels == k).astype(np.int64))
                             for k in np.unique(labels)], seed).take(n)
    else:
        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(gather, num_parallel_calls=AUTOTUNE, deterministic=True)


def balanced_draws(per_class: list, seed: int):
    """An endless stream drawing each element from a class chosen uniformly (each class reshuffled as it repeats)."""
    import tensorflow as tf

    streams = [ds.shuffle(4096, seed=seed + k, reshuffle_each_iteration=True).repeat() for k, ds in enumerate(per_class)]
    return tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(streams)] * len(streams), seed=seed,
                                                rerandomize_each_iteration=True)


def augment_batches(ds, data_cfg, augment: bool = False, seed: int = 42, size_var=None, deterministic: bool = True,
                    front: bool = False):
    """Batches -> augmented on the batch with Keras layers when `augment`, clipped to [0, 255], 3 channels, prefetched.

    `size_var` (a tf.Variable, progressive resizing): augmented batches are resized to its current value when it
    differs from `data.image_size`; a callback sets it at each epoch's start. `front` (`data.augment_on: model`):
    batches leave as read, and `augment.training_front` in the fitted model does all of this on its device.
    """
    if front:
        return ds.prefetch(AUTOTUNE)
    augmenter = build_augmenter(data_cfg.augment, seed, kernel=pipeline_kernel()) if augment else None
    if augmenter is not None:
        # `deterministic`: one batch at a time, so the layers' random draws follow the batch order: the same seed
        # gives the same run (in parallel, batches drew from the shared generators in whatever order they ran).
        # At data.image_size, before any progressive resizing: every layer sees one known size (CLAHE, RandomErasing
        # and the blur fail on images of unknown size; found by bench.config_fuzz).
        ds = ds.map(lambda x, y: (augment_pixels(augmenter, data_cfg.augment, x), y),
                    num_parallel_calls=None if deterministic else AUTOTUNE)
    if size_var is not None:
        ds = ds.map(lambda x, y: (resize_to(x, size_var), y))
    return ds.map(lambda x, y: (_model_channels(x), y)).prefetch(AUTOTUNE)


def stream_tf_dataset(split: Split, data_cfg, batch_size: int, training=False, seed=42, augment=True, size_var=None,
                      deterministic: bool = True, balanced: bool = False, front: bool = False):
    """A prepared-store split streamed as batches (never held in memory): files shuffled, then a bounded buffer."""
    import tensorflow as tf

    # not `keep_batch_buffers()`: streamed from a store, glibc's heap kept more than it reused (10x data: peak 1,373
    # and 1,446 MiB against 1,243 and 1,183, no faster); memory flat matters more here
    if split.studies:
        per_item, least = int(np.prod(data_cfg.volume_size)) * len(data_cfg.window or [1]) * 4, 8
    else:
        per_item, least = data_cfg.image_size**2 * max(split.channels or [3]) * 4, 256
    # Files are shuffled each epoch; the record buffer is capped at ~64 MiB so memory stays flat as data grows
    # (at least 256 images, or 8 studies: a study of 64 x 256 x 256 is 16 MiB).
    buffer = min(len(split), max(least, 64 * 2**20 // per_item)) if training else 0
    if split.store_side and not (training and balanced):  # pixels of one size: parsed in batches
        ds = store_batches(split, data_cfg, batch_size, shuffle=training, seed=seed, buffer=buffer)
        return augment_batches(ds, data_cfg, training and augment, seed, size_var, deterministic, front and training)
    if split.studies:  # one HU volume a record, windowed as it is read
        ds = study_examples(split, data_cfg, shuffle=training, seed=seed, deterministic=deterministic)
    else:
        ds = store_examples(split, data_cfg, data_cfg.image_size, shuffle=training, seed=seed,
                            deterministic=deterministic)
    if training and balanced:  # one filtered stream per class, drawn uniformly
        classes = np.unique(split.labels)
        ds = balanced_draws([ds.filter(lambda x, y, k=int(k): tf.equal(y, k)) for k in classes], seed).take(len(split))
    if training:
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if split.studies:
        return _study_batches_out(ds.batch(batch_size), data_cfg, training and augment, seed, deterministic,
                                  front and training, size_var)
    return augment_batches(ds.batch(batch_size), data_cfg, training and augment, seed, size_var, deterministic,
                           front and training)
