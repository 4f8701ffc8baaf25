"""The types every data source ends as: a `Dataset` of named classes holding one `Split` per train/val/test.

A split holds its images in memory, as file paths, or as records of a prepared store; labels are integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split: `images` (N, H, W[, C]) in memory, `paths` to files, or a prepared `store`; `labels` int (N,)."""

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list | None = None
    groups: list | None = None  # keyed patient IDs, where known (None for an item without one)
    series: list | None = None  # keyed series (SeriesInstanceUID) per item, where known
    positions: list | None = None  # (keyed frame of reference, mm along the slice normal) per DICOM item, or None
    store: tuple | None = None  # (TFDS dataset directory, split name) of a `medkeras prepare` store
    keys: list | None = None  # item names inside a store
    store_side: int | None = None  # a --size store of pixels, one side and one channel count: read in batches
    hashes: list | None = None  # content hashes recorded by `prepare`
    channels: list | None = None  # channel counts a store's records end with (after windows)
    root: str | None = None  # the data source's folder: outputs name files relative to it, never absolutely
    redact: bool = False  # data.redact_paths: outputs name items by keyed patient and index only
    patient_labels: list | None = None  # class index of each item's patient (a manifest's patient_label), or None
    masks: tuple = ()  # path parts holding a patient ID, and what names show instead (keys.id_masks)
    studies: bool = False  # each path a CT study (a series folder, a multi-frame file or a NIfTI file: studies.py)

    def __len__(self):
        return len(self.labels)

    def names(self) -> list[str]:
        """What identifies each item in outputs (CSV files, reports, stores): its path relative to the source's
        folder, its name in a store, or its index in the split; with `redact`, its keyed patient and index."""
        if self.redact:
            patients = self.groups or [None] * len(self.labels)
            return [f"{patient or 'item'}-{i:05d}" for i, patient in enumerate(patients)]
        if self.keys is not None:
            return list(self.keys)
        if self.paths is None:
            return [str(i) for i in range(len(self.labels))]
        from medkeras.data.keys import masked_name

        return [masked_name(relative_name(p, self.root), self.masks) for p in self.paths]


    def keys_of(self, names) -> tuple[list, list]:
        """(keyed patients, keyed series) of the items called `names` (as `names()` calls them); None where unknown."""
        return self.values_of("groups", names), self.values_of("series", names)

    def values_of(self, field_name: str, names) -> list:
        """A per-item field (`groups`, `series`, `patient_labels`, ...) for the items called `names`; None where
        unknown. Names are unique (paths relative to one folder): a repeated one is a bug, never a silent merge."""
        own = self.names()
        index = {name: i for i, name in enumerate(own)}
        if len(index) != len(own):
            raise ValueError(f"items share a name ({len(own) - len(index)} repeats): names must identify items")
        values = getattr(self, field_name)
        return [values[index[str(n)]] if values is not None and str(n) in index else None for n in names]

    def take(self, ix) -> "Split":
        """The items at `ix`, everything known about them kept (a prepared store cannot be cut)."""
        if self.store is not None:
            raise ValueError("a prepared store's split cannot be re-split")
        ix = [int(i) for i in ix]
        pick = {f: None if getattr(self, f) is None else [getattr(self, f)[i] for i in ix] for f in _PER_ITEM}
        images = None if self.images is None else self.images[ix]
        return replace(self, labels=np.asarray(self.labels)[ix], images=images, **pick)


_PER_ITEM = ("paths", "groups", "series", "positions", "keys", "hashes", "channels", "patient_labels")


def concat(a: Split, b: Split) -> Split:
    """Two splits of one source as one (cross-validation pools train and val)."""
    if a.store is not None or b.store is not None:
        raise ValueError("a prepared store's splits cannot be pooled")

    def both(x, y, n, m):
        if x is None and y is None:
            return None
        return list(x if x is not None else [None] * n) + list(y if y is not None else [None] * m)

    n, m = len(a), len(b)
    parts = {f: both(getattr(a, f), getattr(b, f), n, m) for f in _PER_ITEM}
    images = None if a.images is None else np.concatenate([a.images, b.images]) if m else a.images
    return replace(a, labels=np.concatenate([a.labels, b.labels]).astype(a.labels.dtype), images=images, **parts)


def relative_name(path, root) -> str:
    """`path` relative to `root` where it lies below it, else its file name: never an absolute path."""
    text = str(path)
    if root is not None:
        base = str(root).rstrip("/") + "/"
        if text.startswith(base):
            return text[len(base):]
    return Path(text).name if Path(text).is_absolute() else text


@dataclass
class Dataset:
    name: str
    class_names: list
    splits: dict
    positive_class: str | None = None
    bad_files: list = field(default_factory=list)  # (path, cause) skipped under data.on_bad_file: skip

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> dict:
        """{split: {class name: count}} for reports."""
        return {
            split: {c: int((s.labels == i).sum()) for i, c in enumerate(self.class_names)}
            for split, s in self.splits.items()
        }
