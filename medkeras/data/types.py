"""The types every data source ends as: a `Dataset` of named classes holding one `Split` per train/val/test.

A split holds its images in memory, as file paths, or as records of a prepared store; labels are integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split: `images` (N, H, W[, C]) in memory, `paths` to files, or a prepared `store`; `labels` int (N,)."""

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list | None = None
    groups: list | None = None  # keyed patient IDs, where known
    store: tuple | None = None  # (TFDS dataset directory, split name) of a `medkeras prepare` store
    keys: list | None = None  # item names inside a store
    hashes: list | None = None  # content hashes recorded by `prepare`
    channels: list | None = None  # channel counts a store's records end with (after windows)

    def __len__(self):
        return len(self.labels)

    def names(self) -> list[str]:
        """What identifies each item in reports: its path, its name in a store, or its index in the split."""
        if self.keys is not None:
            return list(self.keys)
        return [str(p) for p in self.paths] if self.paths is not None else [str(i) for i in range(len(self.labels))]


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
