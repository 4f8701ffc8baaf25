"""Reading a store that `medkeras prepare` wrote (`prepare.py`): a `Dataset` whose splits stream from its records.

Layout: `DIR/medkeras_store/1.0.0/` (a TensorFlow Datasets dataset: sharded TFRecords + `dataset_info.json`) and
`DIR/index.json` (labels, keyed patient IDs, content hashes and item names per split, so loading a store never
scans its records). Records hold Hounsfield units (a store prepared without `--size`: windowed here, in the graph,
with whatever `data.window` is now) or pixels (windowed before the resize when prepared with `--size`).

A store of CT studies (`prepare` under `model.input: slab | series | volume`) holds each study's HU volume
(D, H, W, 1), resampled once to the `data.spacing` and `data.volume_size` it was prepared at (both recorded; a run
with others is told to prepare again) and windowed here, in the graph, with whatever `data.window` is now.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medkeras.data.readers.pixels import hu_to_pixels
from medkeras.data.resize import resize_dynamic
from medkeras.data.types import SPLITS, Dataset, Split
from medkeras.errors import DataError

STORE_NAME = "medkeras_store"
STORE_VERSION = "1.0.0"
INDEX = "index.json"


def is_store(path) -> bool:
    """True when `path` is a directory written by `medkeras prepare`."""
    path = Path(path)
    return (path / INDEX).is_file() and (path / STORE_NAME / STORE_VERSION / "dataset_info.json").is_file()


def load_store(path, data_cfg) -> Dataset:
    """A prepared store -> `Dataset` whose splits stream from it (labels and names come from `index.json`)."""
    path = Path(path)
    try:
        index = json.loads((path / INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path / INDEX, f"not a readable medkeras store index: {exc}") from exc
    check_shards(path, index)
    class_names = index["class_names"]
    windows = data_cfg.window or []
    if data_cfg.class_names is not None and list(data_cfg.class_names) != list(class_names):
        hint = (f": the same classes in another order; prepare with --config of this recipe (the store then orders "
                f"them as it does) or --set data.class_names=[{','.join(class_names)}] (the positive class is named "
                "by data.positive_class)" if sorted(data_cfg.class_names) == sorted(class_names) else "")
        raise DataError(path, f"the store holds classes {class_names}, not data.class_names {data_cfg.class_names}"
                              f"{hint}")
    if index["hu"] and not windows:
        raise DataError(path, "the store holds Hounsfield units: set data.window (e.g. lung) to read it")
    baked = index.get("windows")
    if baked and [list(map(float, w)) for w in baked] != windows:
        raise DataError(
            path, f"the store was prepared at --size {index['size']} with windows {baked}: set data.window to them, "
            "or prepare again (a store without --size keeps HU and takes any window)"
        )
    studies = bool(index.get("studies"))
    if studies and getattr(data_cfg, "volume_size", None) is None:  # study configs always set it
        raise DataError(path, "is a store of CT studies: read it with a study model (model.input: slab, series or "
                              "volume, with data.volume_size)")
    if studies:
        for key, what in (("volume_size", "data.volume_size"), ("spacing", "data.spacing")):
            want = getattr(data_cfg, key, None)
            have = index.get(key)
            if (None if want is None else [float(v) for v in want]) != (None if have is None else [float(v) for v in have]):
                raise DataError(path, f"the store's studies were prepared at {what} {_shown(have)}, the model reads "
                                      f"{_shown(want)}: prepare the studies again at {_shown(want)} (or train at "
                                      f"{_shown(have)})")
    channels = set(index.get("pixel_channels", [3]))
    # records all pixels of one size and one channel count (a --size store of one kind of image): read in batches
    pixels = not (index["hu"] or studies) and index.get("size") and index.get("pixel_channels") in ([1], [3])
    if index["hu"]:
        channels.add(len(windows))
    splits = {}
    for name in SPLITS:
        entry = index["splits"].get(name, {"labels": [], "keys": [], "groups": [], "hashes": []})
        groups = entry["groups"] if any(g is not None for g in entry["groups"]) else None
        series = entry.get("series") if any(v is not None for v in entry.get("series") or []) else None
        positions = entry.get("positions") if any(v is not None for v in entry.get("positions") or []) else None
        splits[name] = Split(
            labels=np.asarray(entry["labels"], dtype=np.int64),
            groups=groups,
            series=series,
            positions=[tuple(v) if v is not None else None for v in positions] if positions else None,
            store=(str(path / STORE_NAME / STORE_VERSION), name),
            keys=list(entry["keys"]),
            hashes=list(entry["hashes"]),
            channels=sorted(channels),
            studies=studies,
            store_side=int(index["size"]) if pixels else None,
        )
    return Dataset(name=path.name, class_names=list(class_names), splits=splits, positive_class=index["positive_class"])


def check_shards(path: Path, index: dict) -> None:
    """Each shard `prepare` recorded is there at the size it was written, else a `DataError` naming it: a shard cut
    short reads as fewer records without any error from TFRecordDataset (a fit trained on half a split)."""
    for name, size in (index.get("shard_bytes") or {}).items():
        shard = path / name
        try:
            have = shard.stat().st_size
        except OSError:
            raise DataError(shard, "missing from the store: prepare the store again") from None
        if have != size:
            raise DataError(shard, f"holds {have:,} bytes, {size:,} when prepared: truncated or changed since; "
                                   "prepare the store again")


def _records(split: Split, shuffle: bool = False, seed: int = 42, **read):
    """A store split's records as TFDS reads them (files shuffled when `shuffle`; `read`: more `tfds.ReadConfig`)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(split.store[0])
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False, **read)
    return builder.as_dataset(split=split.store[1], shuffle_files=shuffle, read_config=read_config)


def store_examples(split: Split, data_cfg, size: int, shuffle: bool = False, seed: int = 42, with_keys=False,
                   deterministic: bool = True):
    """A tf.data.Dataset of (float32 [size, size, C] pixels in [0, 255], label) streamed from a store split.

    Windows are applied in the graph to HU records, pixel records pass through; then the same resize rule as
    everywhere else (same size passes through unresampled). Records leave with one channel when every record ends
    as grayscale (the pipeline repeats it to 3 after augmentation, a third of the work), else with 3.
    """
    import tensorflow as tf

    ds = _records(split, shuffle, seed)
    windows = data_cfg.window or []
    out = 1 if split.channels == [1] else 3

    def channels(x):
        if out == 1:
            return x[..., :1]
        return tf.cond(tf.shape(x)[-1] == 1, lambda: tf.repeat(x, 3, axis=-1), lambda: x)

    def to_pixels(example):
        image = example["image"]
        if "hu16" in example:  # integral HU kept exactly as int16 (`prepare._image_features`), else in "image"
            image = tf.cond(tf.size(example["hu16"]) > 0, lambda: tf.cast(example["hu16"], tf.float32), lambda: image)
        if windows:  # windowed in the HU branch alone: a sized store's pixel records paid for it too (1.8x slower)
            image = tf.cond(example["hu"], lambda: channels(hu_to_pixels(image[..., 0], windows)),
                            lambda: channels(image))
        else:
            image = channels(image)
        pixels = resize_dynamic(tf.ensure_shape(image, (None, None, out)), size)
        return (pixels, example["label"], example["key"]) if with_keys else (pixels, example["label"])

    return ds.map(to_pixels, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic or not shuffle)


def store_batches(split: Split, data_cfg, batch_size: int, shuffle: bool = False, seed: int = 42, buffer: int = 0,
                  with_keys: bool = False):
    """Batches (float32 (B, S, S, C) pixels in [0, 255], labels[, keys]) of a split with a `store_side`.

    The shards are read as the TFRecords they are and each batch parsed at once (`tf.io.parse_example` with the
    store's own feature spec, the pixels' raw bytes viewed as float32): TFDS' decode, one record at a time, bounded
    the stream (a streamed epoch 1.50x, `bench.ab --epochs 5`). `shuffle`: shard order and a `buffer` of serialized
    records shuffled each epoch, seeded; otherwise the store's own order, as TFDS reads it. Records at another side
    than `data.image_size` are resized as everywhere else.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    side, size, channels = split.store_side, data_cfg.image_size, split.channels[0]
    builder = tfds.builder_from_directory(split.store[0])
    spec = builder.info.features.tf_example_spec
    spec = {k: spec[k] for k in ("image/value", "label", "key")}
    shards = [(str(f.filename), int(f.skip), int(f.take)) for f in builder.info.splits[split.store[1]].file_instructions]
    files = tf.data.Dataset.from_tensor_slices(tuple(np.asarray(v) for v in zip(*shards)))
    if shuffle:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
    def shard(f, skip, take):  # a shard with fewer records than recorded fails, as TFDS' own reads do
        records = tf.data.TFRecordDataset(f, buffer_size=2**20).skip(skip).take(take)
        return records.apply(tf.data.experimental.assert_cardinality(take))

    # the split's size stated: an interleave's is unknown, and Keras fitting `steps_per_epoch` steps from a dataset of
    # unknown size keeps one iterator, so every second epoch found it used up and trained on nothing
    total = sum(take for _, _, take in shards)
    ds = files.interleave(shard, cycle_length=2 if shuffle else 1, block_length=1)
    ds = ds.apply(tf.data.experimental.assert_cardinality(total))
    if shuffle and buffer > 1:
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)

    def parse(serialized):
        record = tf.io.parse_example(serialized, spec)
        pixels = tf.reshape(tf.io.decode_raw(record["image/value"], tf.float32), (-1, side, side, channels))
        if side != size:
            pixels = resize_dynamic(pixels, size)
        return (pixels, record["label"], record["key"]) if with_keys else (pixels, record["label"])

    return ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _shown(values) -> str:
    """A recorded geometry as a user sets it: [5, 1.5, 1.5], or null (none: resized to the volume size alone)."""
    return "null (none)" if values is None else "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def study_examples(split: Split, data_cfg, shuffle: bool = False, seed: int = 42, with_keys=False,
                   deterministic: bool = True):
    """A tf.data.Dataset of (float32 (D, H, W, C) pixels in [0, 255], label) streamed from a store of studies: each
    HU volume windowed in the graph (C = number of windows), as `studies.study_volume` windows a study it reads."""
    import tensorflow as tf

    # Two shards at a time, one record from each in turn: TFDS' default (16 shards, 16 records from each) keeps up to
    # 256 records in flight, which for volumes grew the peak with the split (+3.5 MiB a study; `bench.study_store`).
    ds = _records(split, shuffle, seed, interleave_cycle_length=2, interleave_block_length=1)
    windows = data_cfg.window or []
    shape = (*(int(v) for v in data_cfg.volume_size), len(windows))

    def to_pixels(example):
        pixels = tf.ensure_shape(hu_to_pixels(example["image"][..., 0], windows), shape)
        return (pixels, example["label"], example["key"]) if with_keys else (pixels, example["label"])

    return ds.map(to_pixels, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic or not shuffle)


def store_volumes(split: Split, limit: int) -> list:
    """The first `limit` HU volumes (D, H, W) of a store of studies, as stored (resampled, not windowed)."""
    return [example["image"].numpy()[..., 0] for example in _records(split).take(limit)]


def store_arrays(split: Split, data_cfg, batch_size: int = 256):
    """(images float32 (N, S, S, C), labels, names) of a store split held in memory (evaluation splits); a store of
    studies gives (N, D, H, W, C) volumes.

    Labels and names come from the records, in the store's (write-shuffled, fixed) order.
    """
    size = data_cfg.image_size
    images, labels, names = [], [], []
    if not len(split):  # a split the store has no records for (a test-only store's train): no shards to read
        examples = []
    elif split.studies:
        examples = study_examples(split, data_cfg, with_keys=True).batch(8)
    elif split.store_side:
        examples = store_batches(split, data_cfg, batch_size, with_keys=True)
    else:
        examples = store_examples(split, data_cfg, size, with_keys=True).batch(batch_size)
    for x, y, k in examples:
        images.append(x.numpy())
        labels.append(y.numpy())
        names += [v.decode() for v in k.numpy()]
    if not images:
        shape = (*data_cfg.volume_size, 1) if split.studies else (size, size, 1)
        return np.zeros((0, *shape), np.float32), np.zeros(0, np.int64), []
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), names
