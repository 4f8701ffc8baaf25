"""Splitting a labelled source into train/val/test (stratified, whole patients only), and checking the result:
exact duplicates across splits (content hashes) and patients shared between splits.

Leaks between train and test inflate every metric; the report warns about them and the run lists them.
"""

from __future__ import annotations

import hashlib
from itertools import combinations
from pathlib import Path

import numpy as np


def split_indices(labels, groups, fractions, seed) -> dict:
    """Stratified train/val/test indices from `data.split` fractions; grouped (no patient in two splits) when
    `groups` (keyed patient IDs) are known."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    train_f, val_f, test_f = fractions

    def cut(sub, frac):
        if frac <= 0:
            return sub, sub[:0]
        if groups is not None:  # stratified by class, whole patients only: one fold of ~1/frac as the cut
            import warnings

            g = np.asarray(groups)[sub]
            folds = StratifiedGroupKFold(n_splits=max(2, int(round(1 / frac))), shuffle=True, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # few members per class: sklearn warns, the split stays grouped
                a, b = next(folds.split(sub, labels[sub], groups=g))
            return sub[a], sub[b]
        y = labels[sub]
        stratify = y if np.bincount(y).min(initial=len(y)) >= 2 else None
        return train_test_split(sub, test_size=frac, random_state=seed, stratify=stratify)

    rest, test = cut(idx, test_f)
    train, val = cut(rest, val_f / max(train_f + val_f, 1e-9))
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _content_hashes(split) -> list[str]:
    if split.hashes is not None:
        return list(split.hashes)
    if split.images is not None:
        return [hashlib.sha1(image.tobytes()).hexdigest() for image in split.images]
    hashes = []
    for path in split.paths:
        try:
            hashes.append(hashlib.sha1(Path(path).read_bytes()).hexdigest())
        except OSError:
            hashes.append(f"unreadable:{path}")
    return hashes


def duplicates_across_splits(dataset) -> dict:
    """{"counts": {"train/test": n, ...}, "pairs": [(split_a, name_a, split_b, name_b), ...]} of identical images."""
    index = {}
    for split_name, split in dataset.splits.items():
        for name, digest in zip(split.names(), _content_hashes(split)):
            index.setdefault(digest, []).append((split_name, name))
    counts = {f"{a}/{b}": 0 for a, b in combinations(dataset.splits, 2)}
    pairs = []
    for items in index.values():
        for (sa, na), (sb, nb) in combinations(items, 2):
            if sa != sb:
                key = f"{sa}/{sb}" if f"{sa}/{sb}" in counts else f"{sb}/{sa}"
                counts[key] += 1
                pairs.append((sa, na, sb, nb))
    return {"counts": counts, "pairs": pairs}


def patients_per_split(dataset) -> dict | None:
    """{"counts": {split: patients}, "shared": {"train/test": n, ...}} where patient keys are known, else None."""
    groups = {s: set(split.groups) for s, split in dataset.splits.items() if split.groups is not None}
    if not groups:
        return None
    shared = {f"{a}/{b}": len(groups[a] & groups[b]) for a, b in combinations(groups, 2)}
    return {"counts": {s: len(g) for s, g in groups.items()}, "shared": shared}
