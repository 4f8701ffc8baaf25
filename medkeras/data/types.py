"""The types every data source ends as: a `Dataset` of named classes holding one `Split` per train/val/test.

A split holds its images in memory, as file paths, or as records of a prepared store; labels are integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    hashes: list | None = None  # content hashes recorded by `prepare`
    channels: list | None = None  # channel counts a store's records end with (after windows)
    root: str | None = None  # the data source's folder: outputs name files relative to it, never absolutely
    redact: bool = False  # data.redact_paths: outputs name items by keyed patient and index only

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
        return [relative_name(p, self.root) for p in self.paths]


    def keys_of(self, names) -> tuple[list, list]:
        """(keyed patients, keyed series) of the items called `names` (as `names()` calls them); None where unknown."""
        index = {name: i for i, name in enumerate(self.names())}
        rows = [index.get(str(name)) for name in names]
        patients = [self.groups[i] if self.groups is not None and i is not None else None for i in rows]
        series = [self.series[i] if self.series is not None and i is not None else None for i in rows]
        return patients, series


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
