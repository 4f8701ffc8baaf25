"""Splitting a labelled source into train/val/test (stratified, whole patients only), and checking the result:
exact duplicates across splits (content hashes) and patients shared between splits.

Leaks between train and test inflate every metric; the report warns about them and the run lists them.
"""

from __future__ import annotations

import hashlib
from itertools import combinations
from pathlib import Path

import numpy as np


def split_groups(patients, series, names) -> list | None:
    """What a split keeps together: the patient, else the series, else the file; None where nothing is known."""
    if not any(patients) and not any(series):
        return None
    return [p or (f"series:{s}" if s else f"file:{n}") for p, s, n in zip(patients, series, names)]


def split_indices(labels, groups, fractions, seed, source="data") -> dict:
    """Stratified train/val/test indices from `data.split` fractions; grouped (no patient in two splits) when
    `groups` (keyed patients, else series or files) are known."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    from medkeras.errors import DataError

    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    train_f, val_f, test_f = fractions
    if groups is not None:
        n = len(set(groups))
        needed = 1 + (test_f > 0) + (val_f > 0)
        if n < needed:
            raise DataError(source, f"{n} patient(s) (or series) in all: splitting whole patients into "
                                    f"train/val/test {fractions} needs at least {needed}; give a split column, "
                                    "or more patients")

    def cut(sub, frac):
        if frac <= 0:
            return sub, sub[:0]
        if groups is not None:  # stratified by class, whole patients only: one fold of ~1/frac as the cut
            import warnings

            g = np.asarray(groups)[sub]
            n_splits = min(max(2, int(round(1 / frac))), len(set(g)))
            if n_splits < 2:
                return sub, sub[:0]
            if np.bincount(labels[sub]).max(initial=0) < n_splits:  # too few per class for folds
                return _few_groups_cut(sub, labels[sub], g, frac, seed)
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
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


def _few_groups_cut(sub, labels, groups, frac: float, seed: int):
    """(rest, cut) of `sub` by whole groups where a class has too few items for stratified folds (a study dataset
    of a few patients): first one group for each class that has two groups or more (so both sides keep it; a
    validation or test split of one class cannot choose a threshold or score an AUROC), then groups in seeded order
    while the cut is under `frac` of the items."""
    rng = np.random.default_rng(seed)
    names = sorted(set(groups))
    order = [names[i] for i in rng.permutation(len(names))]
    members = {name: np.flatnonzero(groups == name) for name in names}
    classes = {name: set(labels[members[name]].tolist()) for name in names}
    cut: list = []
    for c in sorted(set(labels.tolist())):
        holders = [name for name in order if c in classes[name]]
        if len(holders) >= 2 and not any(c in classes[name] for name in cut):
            cut.append(next(name for name in holders if name not in cut))
    size = sum(len(members[name]) for name in cut)
    for name in order:
        if size >= frac * len(sub) or len(cut) >= len(names) - 1:
            break
        if name not in cut:
            cut.append(name)
            size += len(members[name])
    chosen = np.isin(groups, cut)
    return sub[~chosen], sub[chosen]


def fold_indices(labels, groups, folds: int, seed: int, source="data") -> list:
    """Validation indices of each of `folds` stratified folds; whole patients (else series or files) per fold when
    `groups` are known. Too few patients or images of a class for the folds is a one-line `DataError`."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from medkeras.errors import DataError

    labels = np.asarray(labels)
    if groups is None:
        smallest = int(np.bincount(labels).min())
        if smallest < folds:
            raise DataError(source, f"{folds} folds need at least {folds} images of each class in train+val; the "
                                    f"rarest class has {smallest}")
        splitter, kw = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed), {}
    else:
        per_class = [len({g for g, y in zip(groups, labels) if y == c}) for c in np.unique(labels)]
        if min(per_class) < folds:
            raise DataError(source, f"{folds} folds need at least {folds} patients (or series) of each class in "
                                    f"train+val; there are {min(per_class)} of the rarest class "
                                    f"({len(set(groups))} in all)")
        splitter, kw = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed), {"groups": list(groups)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uneven classes per patient: sklearn warns, folds stay grouped
        return [np.sort(val) for _, val in splitter.split(np.zeros(len(labels)), labels, **kw)]


def pool_of(dataset, source="data"):
    """Train and val as one `Split` (what cross-validation cuts into folds); in-memory items are named
    `train/<i>` / `val/<i>` by where they came from, so every fold names an item alike."""
    from dataclasses import replace

    from medkeras.data.types import concat
    from medkeras.errors import DataError

    train, val = dataset.splits["train"], dataset.splits["val"]
    if train.store is not None:
        items = "studies" if train.studies else "images"
        raise DataError(source, f"cross-validation needs the {items}, not a prepared store: give the store's source")

    def named(split, prefix):
        if split.paths is None and split.keys is None:
            return replace(split, keys=[f"{prefix}/{i}" for i in range(len(split))])
        return split

    return concat(named(train, "train"), named(val, "val"))


def with_fold(dataset, folds: int, fold: int, seed: int, source="data"):
    """`dataset` with train and val re-split for fold `fold` (1..folds) of `folds`: val is that fold of train+val,
    train the rest; test untouched. The same config and seed give the same folds (so a fold run resumes)."""
    pool = pool_of(dataset, source)
    unknown = [None] * len(pool)
    groups = split_groups(pool.groups or unknown, pool.series or unknown, pool.names())
    held = fold_indices(pool.labels, groups, folds, seed, source)[fold - 1]
    rest = np.setdiff1d(np.arange(len(pool)), held)
    dataset.splits = {**dataset.splits, "train": pool.take(rest), "val": pool.take(held)}
    return dataset


def _content_hashes(split) -> list[str]:
    if split.hashes is not None:
        return list(split.hashes)
    if split.images is not None:
        return [hashlib.sha1(image.tobytes()).hexdigest() for image in split.images]
    return [content_hash(path) for path in split.paths]


def content_hash(path) -> str:
    """sha1 of a file's bytes (and frame number, for `FILE#N`): what makes two items identical."""
    base, mark, number = str(path).rpartition("#")
    file, frame = (base, number) if mark and base and number.isdigit() else (str(path), "")
    try:
        digest = hashlib.sha1(Path(file).read_bytes())
    except OSError:
        return f"unreadable:{path}"
    digest.update(frame.encode())
    return digest.hexdigest()


def _across_splits(dataset, index) -> dict:
    """{"counts": {"train/test": n, ...}, "pairs": [(split_a, name_a, split_b, name_b), ...]} of the items that share
    a key of `index` ({key: [(split, name), ...]}) but lie in different splits."""
    return _counted(dataset, [pair for items in index.values() for pair in combinations(items, 2)])


def _counted(dataset, candidates) -> dict:
    """Of `candidates` ([((split, name), (split, name)), ...]) the pairs across two splits, counted by split pair."""
    counts = {f"{a}/{b}": 0 for a, b in combinations(dataset.splits, 2)}
    pairs = []
    for (sa, na), (sb, nb) in candidates:
        if sa != sb:
            key = f"{sa}/{sb}" if f"{sa}/{sb}" in counts else f"{sb}/{sa}"
            counts[key] += 1
            pairs.append((sa, na, sb, nb))
    return {"counts": counts, "pairs": pairs}


def duplicates_across_splits(dataset) -> dict:
    """{"counts": {"train/test": n, ...}, "pairs": [(split_a, name_a, split_b, name_b), ...]} of identical images."""
    index = {}
    for split_name, split in dataset.splits.items():
        for name, digest in zip(split.names(), _content_hashes(split)):
            index.setdefault(digest, []).append((split_name, name))
    return _across_splits(dataset, index)


def patients_per_split(dataset) -> dict | None:
    """{"counts": {split: patients}, "shared": {"train/test": n, ...}} where patient keys are known, else None."""
    groups = {s: set(split.groups) - {None} for s, split in dataset.splits.items() if split.groups is not None}
    if not groups:
        return None
    shared = {f"{a}/{b}": len(groups[a] & groups[b]) for a, b in combinations(groups, 2)}
    return {"counts": {s: len(g) for s, g in groups.items()}, "shared": shared}


def near_duplicates_across_splits(dataset, tolerance_mm: float = 0.5) -> dict:
    """{"counts": {"train/test": n, ...}, "pairs": [...]} of slices at the same position (within `tolerance_mm`) in
    one frame of reference (one patient's scan), found in two splits: other reconstructions or series of the same
    slice, which leak as surely as a copy. Grouping by patient prevents them; they appear where it could not."""
    scans = {}
    for split_name, split in dataset.splits.items():
        for name, where in zip(split.names(), split.positions or []):
            if where is not None and where[0] is not None:
                scans.setdefault(where[0], []).append((float(where[1]), split_name, name))
    candidates = []
    for items in scans.values():  # every pair within the tolerance (buckets of it split neighbours 0.02 mm apart)
        items.sort()
        for i, (z, split_name, name) in enumerate(items):
            for z2, split2, name2 in items[i + 1:]:
                if z2 - z > tolerance_mm:
                    break
                candidates.append(((split_name, name), (split2, name2)))
    return _counted(dataset, candidates)

