"""`medkeras prepare`: decode a data source once into a sharded, streamable TensorFlow Datasets store.

DICOM parsing, VOI LUTs and PNG decoding cost far more than a training step's input needs. `prepare` does them
once, in threads, through the same readers as every other path, and writes a TFDS dataset built by a real
`tfds.core.GeneratorBasedBuilder` over the local files; `store.py` reads it back. Training then streams decoded
arrays from it: memory stays flat however large the store is, and files are shuffled between epochs.

What is stored at native size is the image *before* windowing: Hounsfield units for DICOM / 2-D NPY when a window
is configured at prepare time (so `data.window` can still change afterwards), otherwise pixels in [0, 255].
With `--size` the images are resized once, which is what makes the store fast for 512 x 512 CT; since training,
predict and serving all window *then* resize, a sized store holds windowed pixels and remembers its windows
(training with other windows asks for a new prepare). Records are shuffled when written (TFDS' own global
shuffle), so a series stored patient by patient still streams mixed. Patient IDs are stored only as the keyed
form the sources produce. A failed or killed prepare leaves no store.

Studies (`studies`, from a study config: `model.input: slab | series | volume`) are stored one record each: the HU
volume read, resampled to `data.spacing` and cropped or padded to `data.volume_size` once (`studies.study_hu`), so
`fit` streams them (memory flat) and windows them in the graph with any `data.window`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medkeras.data.readers import hu_to_pixels, is_dicom, read_raw
from medkeras.data.readers.dicom import is_encapsulated
from medkeras.data.resize import resize_images
from medkeras.data.studies import geometry, load_items, study_cause, study_hu
from medkeras.data.splits import content_hash
from medkeras.data.store import INDEX, STORE_VERSION, is_store
from medkeras.data.types import SPLITS, Dataset
from medkeras.errors import ConfigError, DataError, MedkerasError
from medkeras.progress import Progress

# Compressed DICOM files in a split from which reading goes to worker processes: the decoders hold the GIL (threads
# gave 32 JPEG Lossless slices 1.2x on 2 cores, processes 1.9x), and starting the workers costs ~0.5 s. Native files
# stay in threads: reading them is cheaper than sending the arrays back (128 uncompressed slices: 0.6x in processes).
PROCESS_POOL_MIN = 64


def _compressed(paths, sample: int = 8) -> bool:
    """Whether most of the first `sample` DICOM files among `paths` are compressed (encapsulated)."""
    dicom = [p for p in paths if is_dicom(p)][:sample]
    return bool(dicom) and sum(map(is_encapsulated, dicom)) * 2 > len(dicom)


def read_file(path, hu: bool):
    """One file -> (array, is_hu, content hash, None) or (None, False, None, (name, cause)); in a worker process
    for compressed DICOM."""
    try:
        image, is_hu = read_raw(path, hu)
    except DataError as exc:  # sent back as plain values: the exception does not pickle
        return None, False, None, (exc.path, exc.cause)
    return image, is_hu, content_hash(path), None


def _bounded_map(fn, items, workers: int, processes: bool = False, window: int = 64):
    """`map(fn, items)` in `workers` threads (or spawned processes), in order, with at most `window` results held
    (flat memory)."""
    if processes:
        import multiprocessing

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
    with pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, *item) if processes else pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _image_features(image, native_hu: bool) -> dict:
    """A record's image features: an exact int16 copy of integral HU in "hu16" where the store has it, else "image"."""
    if not native_hu:
        return {"image": image}
    whole = image.astype(np.int16)
    if np.array_equal(whole, image):
        return {"image": np.zeros((0, 0, 1), np.float32), "hu16": whole}
    return {"image": image, "hu16": np.zeros((0, 0, 1), np.int16)}


def _builder(dataset: Dataset, data_dir: str, windows, size, on_bad_file: str, workers: int, progress=None,
             geometry_cfg=None):
    """A `GeneratorBasedBuilder` over `dataset`'s files (or in-memory arrays), writing into `data_dir`.

    `progress()` is called once per item read (medkeras shows one bar; TFDS' own bars and prints are off).
    `geometry_cfg` (spacing, volume_size): the splits hold studies, each stored as its resampled HU volume.
    """
    import tensorflow_datasets as tfds

    studies = geometry_cfg is not None
    # Native HU slices whose every value is a whole number in int16's range (CT: integer stored values, slope 1)
    # are kept exactly as int16 raw bytes in "hu16", with an empty "image": zlib on a 512 x 512 float32 slice took
    # 130 ms (native prepare at 8-10 images/s), while int16 bytes cost nothing to write and are half a float32's
    # size. Other HU (a fractional rescale) stays float32 in "image", with an empty "hu16".
    native_hu = not studies and size is None and bool(windows)

    class MedkerasStore(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Decoded medical images with labels, keyed patients and series, positions and content hashes."""

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
                        # compresses) unless they are integral HU ("hu16"); sized ones are raw bytes, read at memory
                        # speed (zlib's per-record inflate capped streaming at ~1,000 images/s on 2 cores).
                        "image": tfds.features.Tensor(  # a study: (D, H, W, 1) HU, zlib'd (air compresses)
                            shape=(None,) * (4 if studies else 3), dtype=np.float32, encoding="bytes" if size else "zlib"
                        ),
                        **({"hu16": tfds.features.Tensor(shape=(None,) * 3, dtype=np.int16, encoding="bytes")}
                           if native_hu else {}),
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
            index = {"labels": [], "keys": [], "groups": [], "hashes": [], "series": [], "positions": []}
            self.index[name] = index

            def finish(image, is_hu):
                if size is not None:
                    if is_hu:  # window, then resize: the order training and serving use
                        image, is_hu = hu_to_pixels(image[..., 0], windows), False
                    image = resize_images(image, size).numpy()
                return image, is_hu

            def load(i):
                array = np.asarray(split.images[i])
                image = array.astype(np.float32)
                return (*finish(image[..., None] if image.ndim == 2 else image, False),
                        hashlib.sha1(array.tobytes()).hexdigest(), None)

            def load_study(i):
                try:
                    hu = study_hu(split.paths[i], *geometry_cfg)
                except DataError as exc:
                    return None, False, None, (exc.path, study_cause(split.paths[i], exc))
                return hu[..., None], True, hashlib.sha1(hu.tobytes()).hexdigest(), None

            if studies:  # a few in flight: each is a whole volume
                results = _bounded_map(load_study, range(len(split)), workers, window=2 * workers)
            elif split.images is not None:
                results = _bounded_map(load, range(len(split)), workers)
            else:  # files: read in worker processes where there are enough of them, windowed and resized here
                jobs = [(str(p), bool(windows)) for p in split.paths]
                if len(jobs) >= PROCESS_POOL_MIN and _compressed(split.paths):
                    reads = _bounded_map(read_file, jobs, min(workers, os.cpu_count() or 1), processes=True)
                else:
                    reads = _bounded_map(lambda job: read_file(*job), jobs, workers)
                results = ((*finish(image, is_hu), digest, error) if error is None else (None, False, None, error)
                           for image, is_hu, digest, error in reads)

            for i, (image, is_hu, digest, error) in enumerate(results):
                if progress is not None:
                    progress()
                if error is not None:
                    if on_bad_file == "fail":
                        raise DataError(*error)
                    self.bad.append((name, names[i], error[1]))
                    continue
                if not is_hu:
                    self.pixel_channels.add(int(image.shape[-1]))
                key = names[i] if split.paths is not None else f"{name}/{i}"  # relative (or redacted) names
                index["labels"].append(int(split.labels[i]))
                index["keys"].append(key)
                index["groups"].append(split.groups[i] if split.groups is not None else None)
                index["hashes"].append(digest)
                index["series"].append(split.series[i] if split.series is not None else None)
                index["positions"].append(split.positions[i] if split.positions is not None else None)
                yield i, {"hu": is_hu, "label": int(split.labels[i]), "key": key, **_image_features(image, native_hu)}

    return MedkerasStore()


def prepare(
    data_cfg, out, size: int | None = None, seed: int = 42, workers: int = 4, overwrite: bool = False, verbose=True,
    studies: bool = False,
) -> dict:
    """Decode `data_cfg.source` once into a store at `out`; returns a summary (counts, skipped files, bytes).
    `studies`: the source's items are CT studies, stored as HU volumes at `data.spacing` / `data.volume_size`.

    Written into a temporary sibling directory and renamed into place: a failed or killed prepare leaves no store.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (overwrite and is_store(out)):
            raise MedkerasError(f"{out}: exists and is not empty (choose another --out, or --overwrite a store)")
    volume = None
    if studies:
        if size is not None:
            raise ConfigError(f"{data_cfg.source}: prepare --size resizes images; studies are stored at "
                              "data.volume_size")
        volume = (geometry(data_cfg.spacing, "data.spacing"), geometry(data_cfg.volume_size, "data.volume_size", True))
        if volume[1] is None:
            raise MedkerasError("studies need data.volume_size [D, H, W] to be stored (one shape a batch)")
    dataset = load_items(data_cfg, seed=seed, studies=studies)
    windows = data_cfg.window or []
    hu = studies or (bool(windows) and size is None)  # what the records hold: HU, or pixels (windowed when sized)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        import tensorflow_datasets as tfds

        tfds.display_progress_bar(False)
        bar = (Progress(sum(len(s) for s in dataset.splits.values()), "preparing", "study" if studies else "image")
               if verbose else None)

        def progress():
            bar.tick()

        builder = _builder(dataset, str(tmp), windows, size, data_cfg.on_bad_file, workers, progress if bar else None,
                           volume)
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
            "windows": windows if size is not None else None,  # baked into a sized store
            "size": size,
            "studies": studies,
            "spacing": volume[0] if studies else None,
            "volume_size": volume[1] if studies else None,
            "counts": counts,
            "skipped": len(builder.bad),
        }
        # every shard's size, so that a store truncated or changed since is refused by name (`store.check_shards`)
        shards = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*.tfrecord-*"))}
        (tmp / INDEX).write_text(json.dumps({**summary, "splits": builder.index, "shard_bytes": shards}))
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
