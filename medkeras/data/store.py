"""`medkeras prepare`: decode a data source once into a sharded, streamable TensorFlow Datasets store.

DICOM parsing, VOI LUTs and PNG decoding cost far more than a training step's input needs. `prepare` does them
once, in threads, and writes a TFDS dataset (sharded TFRecords + `dataset_info.json`) built by a real
`tfds.core.GeneratorBasedBuilder` over the local files. Training then streams decoded arrays from it with
`builder.as_dataset`: memory stays flat however large the store is, and files are shuffled between epochs.

What is stored at native size is the image *before* windowing: Hounsfield units for DICOM / 2-D NPY when a window
is configured at prepare time (so `data.window` can still change afterwards), otherwise pixels in [0, 255].
With `--size` the images are resized once, which is what makes the store fast for 512 x 512 CT; since training,
predict and serving all window *then* resize, a sized store holds windowed pixels and remembers its windows
(training with other windows asks for a new prepare). Records are shuffled when written (TFDS' own global
shuffle), so a series stored patient by patient still streams mixed; evaluation reads names and labels from
the records themselves.

Layout: `OUT/medkeras_store/1.0.0/` (TFDS' own), plus `OUT/index.json` (labels, hashed patient keys, content
hashes and item names per split, so loading a store never scans its records) and `bad_files.csv` if any were
skipped. `data.source: OUT` reads it. Patient IDs are stored only as the one-way hash the sources produce.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medkeras.data.sources import SPLITS, Dataset, Split, read_raw
from medkeras.data.windows import apply_windows, parse_windows
from medkeras.errors import DataError, MedkerasError

STORE_NAME = "medkeras_store"
STORE_VERSION = "1.0.0"
INDEX = "index.json"


def is_store(path) -> bool:
    """True when `path` is a directory written by `medkeras prepare`."""
    path = Path(path)
    return (path / INDEX).is_file() and (path / STORE_NAME / STORE_VERSION / "dataset_info.json").is_file()


def _bounded_map(fn, items, workers: int, window: int = 64):
    """`map(fn, items)` in `workers` threads, in order, with at most `window` results held (flat memory)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _relative_name(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def _builder(dataset: Dataset, data_dir: str, windows, size, on_bad_file: str, workers: int, root, progress=None):
    """A `GeneratorBasedBuilder` over `dataset`'s files (or in-memory arrays), writing into `data_dir`.

    `progress()` is called once per item read (medkeras shows one bar; TFDS' own bars and prints are off).
    """
    import tensorflow_datasets as tfds

    from medkeras.data.pipeline import resize_images

    class MedkerasStore(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Decoded medical images with labels, hashed patient keys and content hashes."""

        VERSION = tfds.core.Version(STORE_VERSION)

        def __init__(self, **kwargs):
            self.index = {}
            self.bad = []
            self.pixel_channels = set()  # channel counts of records stored as pixels (HU records have 1)
            super().__init__(data_dir=data_dir, **kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Medical images decoded once by `medkeras prepare` (HU before windowing, or pixels).",
                features=tfds.features.FeaturesDict(
                    {
                        # float32 (H, W, C): HU (C = 1) or pixels [0, 255]. Native slices are zlib'd (air
                        # compresses: half the disk); sized ones are raw bytes, read at memory speed (zlib's
                        # per-record inflate capped streaming at ~1,000 images/s on 2 cores).
                        "image": tfds.features.Tensor(
                            shape=(None, None, None), dtype=np.float32, encoding="bytes" if size else "zlib"
                        ),
                        "hu": tfds.features.Scalar(dtype=np.bool_),
                        "label": tfds.features.ClassLabel(names=list(dataset.class_names)),
                        "key": tfds.features.Text(),
                    }
                ),
                metadata=tfds.core.MetadataDict(
                    class_names=list(dataset.class_names), positive_class=dataset.positive_class, size=size
                ),
            )

        def _log_download_bytes(self):  # TFDS prints download sizes; there is no download here
            pass

        def _log_download_done(self):
            pass

        def _split_generators(self, dl_manager):
            return {name: self._generate_examples(name) for name, split in dataset.splits.items() if len(split)}

        def _generate_examples(self, name):
            split = dataset.splits[name]
            names = split.names()
            index = {"labels": [], "keys": [], "groups": [], "hashes": []}
            self.index[name] = index

            def load(i):
                try:
                    if split.images is not None:
                        array = np.asarray(split.images[i])
                        digest = hashlib.sha1(array.tobytes()).hexdigest()
                        image = array.astype(np.float32)
                        image = image[..., None] if image.ndim == 2 else image
                        is_hu = False
                    else:
                        path = Path(split.paths[i])
                        image, is_hu = read_raw(path, bool(windows))
                        digest = hashlib.sha1(path.read_bytes()).hexdigest()
                    if size is not None:
                        if is_hu:  # window, then resize: the order training and serving use
                            image, is_hu = apply_windows(image[..., 0], windows) * np.float32(255.0), False
                        image = resize_images(image, size).numpy()
                    return i, image, is_hu, digest, None
                except DataError as exc:
                    return i, None, False, None, exc

            for i, image, is_hu, digest, error in _bounded_map(load, range(len(split)), workers):
                if progress is not None:
                    progress()
                if error is not None:
                    if on_bad_file == "fail":
                        raise error
                    self.bad.append((name, str(error.path), error.cause))
                    continue
                if not is_hu:
                    self.pixel_channels.add(int(image.shape[-1]))
                key = _relative_name(Path(names[i]), root) if split.paths is not None else f"{name}/{i}"
                index["labels"].append(int(split.labels[i]))
                index["keys"].append(key)
                index["groups"].append(split.groups[i] if split.groups is not None else None)
                index["hashes"].append(digest)
                yield i, {"image": image, "hu": is_hu, "label": int(split.labels[i]), "key": key}

    return MedkerasStore()


def prepare(
    data_cfg, out, size: int | None = None, seed: int = 42, workers: int = 4, overwrite: bool = False, verbose=True
) -> dict:
    """Decode `data_cfg.source` once into a store at `out`; returns a summary (counts, skipped files, bytes).

    Written into a temporary sibling directory and renamed into place: a failed or killed prepare leaves no store.
    """
    from medkeras.data.sources import load_dataset

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (overwrite and is_store(out)):
            raise MedkerasError(f"{out}: exists and is not empty (choose another --out, or --overwrite a store)")
    dataset = load_dataset(data_cfg, seed=seed)
    windows = parse_windows(data_cfg.window)
    hu = bool(windows) and size is None  # what the records hold: HU, or pixels (windowed when sized)
    source = Path(str(data_cfg.source)).expanduser()
    root = source if source.is_dir() else (source.parent if source.exists() else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        import keras
        import tensorflow_datasets as tfds

        tfds.display_progress_bar(False)
        bar = keras.utils.Progbar(sum(len(s) for s in dataset.splits.values()), unit_name="image") if verbose else None
        done = [0]

        def progress():
            done[0] += 1
            bar.update(done[0])

        builder = _builder(dataset, str(tmp), windows, size, data_cfg.on_bad_file, workers, root, progress if bar else None)
        builder.download_and_prepare()
        shutil.rmtree(tmp / "downloads", ignore_errors=True)  # TFDS' empty download cache
        counts = {}
        for name in SPLITS:
            written = builder.info.splits[name].num_examples if name in builder.info.splits else 0
            index = builder.index.setdefault(name, {"labels": [], "keys": [], "groups": [], "hashes": []})
            if written != len(index["labels"]):
                raise MedkerasError(f"{out}: split {name} wrote {written} records for {len(index['labels'])} items")
            counts[name] = written
        summary = {
            "store": str(out),
            "source": str(data_cfg.source),
            "class_names": list(dataset.class_names),
            "positive_class": dataset.positive_class,
            "hu": hu,
            "pixel_channels": sorted(builder.pixel_channels),
            "windows": [list(w) for w in windows] if size is not None else None,  # baked into a sized store
            "size": size,
            "counts": counts,
            "skipped": len(builder.bad),
        }
        (tmp / INDEX).write_text(json.dumps({**summary, "splits": builder.index}))
        if builder.bad:
            import csv

            with open(tmp / "bad_files.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["split", "path", "cause"])
                writer.writerows(builder.bad)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return summary


def load_store(path, data_cfg) -> Dataset:
    """A prepared store -> `Dataset` whose splits stream from it (labels and names come from `index.json`)."""
    path = Path(path)
    try:
        index = json.loads((path / INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path / INDEX, f"not a readable medkeras store index: {exc}") from exc
    class_names = index["class_names"]
    if data_cfg.class_names is not None and list(data_cfg.class_names) != list(class_names):
        raise DataError(path, f"the store holds classes {class_names}, not data.class_names {data_cfg.class_names}")
    if index["hu"] and not parse_windows(data_cfg.window):
        raise DataError(path, "the store holds Hounsfield units: set data.window (e.g. lung) to read it")
    baked = index.get("windows")
    if baked and [list(w) for w in parse_windows(data_cfg.window)] != baked:
        raise DataError(
            path, f"the store was prepared at --size {index['size']} with windows {baked}: set data.window to them, "
            "or prepare again (a store without --size keeps HU and takes any window)"
        )
    channels = set(index.get("pixel_channels", [3]))
    if index["hu"]:
        channels.add(len(parse_windows(data_cfg.window)))
    splits = {}
    for name in SPLITS:
        entry = index["splits"].get(name, {"labels": [], "keys": [], "groups": [], "hashes": []})
        groups = entry["groups"] if entry["groups"] and all(g is not None for g in entry["groups"]) else None
        splits[name] = Split(
            labels=np.asarray(entry["labels"], dtype=np.int64),
            groups=groups,
            store=(str(path / STORE_NAME / STORE_VERSION), name),
            keys=list(entry["keys"]),
            hashes=list(entry["hashes"]),
            channels=sorted(channels),
        )
    return Dataset(name=path.name, class_names=list(class_names), splits=splits, positive_class=index["positive_class"])


def store_examples(split: Split, data_cfg, size: int, shuffle: bool = False, seed: int = 42, with_keys=False):
    """A tf.data.Dataset of (float32 [size, size, 3] pixels in [0, 255], label) streamed from a store split.

    Windows are applied in the graph to HU records, pixel records pass through; then the same resize rule as
    everywhere else (same size passes through unresampled) and grayscale repeated to 3 channels.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from medkeras.data.pipeline import AUTOTUNE, resize_dynamic

    builder = tfds.builder_from_directory(split.store[0])
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    ds = builder.as_dataset(split=split.store[1], shuffle_files=shuffle, read_config=read_config)
    windows = parse_windows(data_cfg.window)

    # Records leave here with one channel when every record ends as grayscale (the pipeline repeats it to 3
    # after augmentation, a third of the work), else with 3.
    out = 1 if split.channels == [1] else 3

    def three(x):
        if out == 1:
            return x[..., :1]
        return tf.cond(tf.shape(x)[-1] == 1, lambda: tf.repeat(x, 3, axis=-1), lambda: x)

    def to_pixels(example):
        image = example["image"]
        if windows:
            hu = image[..., 0]
            windowed = apply_windows(hu, windows) * 255.0
            image = tf.cond(example["hu"], lambda: three(windowed), lambda: three(image))
        else:
            image = three(image)
        image = tf.ensure_shape(image, (None, None, out))
        pixels = resize_dynamic(image, size)
        return (pixels, example["label"], example["key"]) if with_keys else (pixels, example["label"])

    return ds.map(to_pixels, num_parallel_calls=AUTOTUNE, deterministic=not shuffle)


def store_arrays(split: Split, data_cfg, batch_size: int = 256):
    """(images float32 (N, S, S, 3), labels, names) of a store split held in memory (evaluation splits).

    Labels and names come from the records, in the store's (write-shuffled, fixed) order.
    """
    size = data_cfg.image_size
    images, labels, names = [], [], []
    if len(split):
        for x, y, k in store_examples(split, data_cfg, size, with_keys=True).batch(batch_size):
            images.append(x.numpy())
            labels.append(y.numpy())
            names += [v.decode() for v in k.numpy()]
    if not images:
        return np.zeros((0, size, size, 1), np.float32), np.zeros(0, np.int64), []
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), names
