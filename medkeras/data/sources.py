"""Data sources: a bundled dataset, a MedMNIST `.npz`, a folder per class, or a CSV manifest -> labelled splits.

Every source ends as a `Dataset`: class names, and per split either in-memory images or file paths, with integer
labels. Reading a file (PNG/JPEG/DICOM/NPY) to pixels is `read_image`; the tf.data side is in `pipeline.py`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medkeras.data.dicom import hash_patient_id, read_dicom_display, read_dicom_hu
from medkeras.data.windows import apply_windows
from medkeras.errors import ConfigError, DataError

DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
ARRAY_SUFFIXES = {".npy"}
READABLE_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES | ARRAY_SUFFIXES
SPLITS = ("train", "val", "test")

# Class names of the MedMNIST sets we know by file name (MedMNIST v2 INFO), so users never see "0" / "1".
MEDMNIST_CLASSES = {
    "breastmnist": ["malignant", "benign-or-normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
}
# Bundled datasets: name -> (file inside medkeras/datasets, class names, positive class).
BUNDLED = {
    "breastmnist": ("breastmnist.npz", MEDMNIST_CLASSES["breastmnist"], "malignant"),
}


@dataclass
class Split:
    """One split: `images` (N, H, W[, C]) in memory, `paths` to files, or a prepared `store`; `labels` int (N,)."""

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list | None = None
    groups: list | None = None  # hashed patient keys, where known
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


# --- reading one file -------------------------------------------------------------------------------------------


def _to_pixels(array: np.ndarray) -> np.ndarray:
    """Any numeric image -> float32 in [0, 255]: uint8 as is, uint16 by 65535, anything else min-max."""
    if array.dtype == np.uint8:
        return array.astype(np.float32)
    if array.dtype == np.uint16:
        return array.astype(np.float32) * np.float32(255.0 / 65535.0)
    array = array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    return np.zeros_like(array) if hi <= lo else (array - lo) * np.float32(255.0 / (hi - lo))


def _read_picture(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return _to_pixels(np.asarray(img, dtype=np.uint16))
            if img.mode in ("I", "F"):
                return _to_pixels(np.asarray(img))
            if img.mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
                img = img.convert("RGB" if img.mode not in ("LA", "1") else "L")
            return np.asarray(img, dtype=np.float32)
    except UnidentifiedImageError as exc:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"cannot decode image: {str(exc).splitlines()[0]}") from exc


def read_raw(path, hu: bool = False) -> tuple[np.ndarray, bool]:
    """Read a PNG/JPEG/DICOM/NPY file as float32 (H, W, C) before windowing -> (array, is_hu).

    With `hu` (a window is configured), DICOM is returned in Hounsfield units and a 2-D NPY as given (HU), for
    `apply_windows`; otherwise DICOM is shown through its VOI LUT and every array is scaled to pixels [0, 255].
    `medkeras prepare` stores this array, so windows can still change after the data is prepared.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    suffix = path.suffix.lower()
    is_hu = False
    if suffix in DICOM_SUFFIXES:
        if hu:
            image, is_hu = read_dicom_hu(path), True
        else:
            image = _to_pixels(read_dicom_display(path))
    elif suffix in ARRAY_SUFFIXES:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(path, f"not a readable .npy array: {str(exc).splitlines()[0]}") from exc
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
            raise DataError(path, f"expected an (H, W) or (H, W, 1|3) array, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise DataError(path, "array is not numeric or contains NaN / infinite values")
        if hu and array.ndim == 2:
            image, is_hu = array.astype(np.float32), True
        else:
            image = _to_pixels(array)
    elif suffix in IMAGE_SUFFIXES:
        image = _read_picture(path)
    else:
        raise DataError(path, f"unsupported file type '{suffix or '(none)'}' (PNG, JPEG, DICOM or NPY)")
    if image.ndim == 2:
        image = image[..., None]
    if min(image.shape[:2]) < 1:
        raise DataError(path, f"image has no pixels (shape {image.shape})")
    return np.asarray(image, dtype=np.float32), is_hu


def read_image(path, windows=()) -> np.ndarray:
    """Read a PNG/JPEG/DICOM/NPY file as float32 (H, W, C) in pixel space [0, 255], C = 1 or len(windows).

    DICOM (and a 2-D NPY, taken as HU) goes through `windows` when any are configured; otherwise it is scaled.
    """
    image, is_hu = read_raw(path, hu=bool(windows))
    if is_hu:
        image = apply_windows(image[..., 0], windows) * np.float32(255.0)
    return image


# --- sources ------------------------------------------------------------------------------------------------------


def _labels_from_names(source, names, class_names):
    index = {c: i for i, c in enumerate(class_names)}
    labels = []
    for name in names:
        if str(name) not in index:
            raise DataError(source, f"label '{name}' is not one of the classes {class_names}")
        labels.append(index[str(name)])
    return np.asarray(labels, dtype=np.int64)


def load_npz(path, class_names=None, name=None) -> Dataset:
    """A MedMNIST-layout `.npz`: `{train,val,test}_images` and `{train,val,test}_labels`."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(path, f"not a readable .npz: {str(exc).splitlines()[0]}") from exc
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
    if missing:
        raise DataError(path, f"not MedMNIST layout: missing arrays {', '.join(missing)}")
    splits = {}
    for s in SPLITS:
        images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if labels.ndim == 2 and labels.shape[1] > 1:
            raise DataError(path, f"{s}_labels has shape {labels.shape}: multi-label data is not supported")
        labels = labels.reshape(-1).astype(np.int64)
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise DataError(path, f"{s}_images has shape {images.shape} for {len(labels)} labels")
        if not np.issubdtype(images.dtype, np.number) or (images.dtype.kind == "f" and not np.isfinite(images).all()):
            raise DataError(path, f"{s}_images is not numeric or contains NaN / infinite values")
        splits[s] = Split(labels=labels, images=images)
    stem = name or path.stem.lower()
    num_classes = int(max(s.labels.max() for s in splits.values() if len(s))) + 1
    names = class_names or MEDMNIST_CLASSES.get(stem) or [f"class_{i}" for i in range(num_classes)]
    if num_classes > len(names):
        raise DataError(path, f"labels go up to {num_classes - 1} but only {len(names)} class names are given")
    return Dataset(name=stem, class_names=list(names), splits=splits)


def _split_indices(labels, groups, fractions, seed):
    """Stratified train/val/test indices; grouped (no patient in two splits) when groups are known."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

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


def _file_dataset(source, paths, label_names, split_col, groups, cfg, seed) -> Dataset:
    class_names = cfg.class_names or sorted({str(n) for n in label_names})
    labels = _labels_from_names(source, label_names, class_names)
    for i, c in enumerate(class_names):
        if not (labels == i).any():
            raise DataError(source, f"class '{c}' has no images")
    if split_col is not None:
        index = {s: np.flatnonzero(np.asarray(split_col) == s) for s in SPLITS}
    else:
        index = _split_indices(labels, groups, cfg.split, seed)
    splits = {
        s: Split(
            labels=labels[ix],
            paths=[paths[i] for i in ix],
            groups=[groups[i] for i in ix] if groups is not None else None,
        )
        for s, ix in index.items()
    }
    return Dataset(name=Path(source).stem, class_names=list(class_names), splits=splits)


def load_folder(path, cfg, seed=42) -> Dataset:
    """A folder with one sub-folder per class; files are split by `data.split` fractions, stratified."""
    path = Path(path)
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(path, "no class sub-folders (expected one folder per class holding the images)")
    paths, names = [], []
    for d in class_dirs:
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in READABLE_SUFFIXES)
        if not files and (cfg.class_names is None or d.name in cfg.class_names):
            raise DataError(d, f"class '{d.name}' has no images (PNG, JPEG, DICOM or NPY)")
        paths += files
        names += [d.name] * len(files)
    return _file_dataset(path, paths, names, None, None, cfg, seed)


def load_manifest(path, cfg, seed=42) -> Dataset:
    """A CSV with `path,label[,split][,patient_id]`; relative paths are relative to the CSV."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read CSV manifest: {exc}") from exc
    columns = set(rows[0]) if rows else set()
    missing = {"path", "label"} - columns
    if missing:
        raise DataError(path, f"manifest lacks required column(s) {', '.join(sorted(missing))}")
    if not rows:
        raise DataError(path, "manifest has no rows")
    paths = [(path.parent / r["path"]).resolve() if not Path(r["path"]).is_absolute() else Path(r["path"]) for r in rows]
    split_col = None
    if "split" in columns:
        split_col = [r["split"].strip().lower() for r in rows]
        bad = sorted(set(split_col) - set(SPLITS))
        if bad:
            raise DataError(path, f"unknown split value(s) {bad}: use train, val or test")
    groups = None
    if "patient_id" in columns:
        groups = [hash_patient_id(r["patient_id"]) for r in rows]  # the raw ID is dropped here
    names = [r["label"].strip() for r in rows]
    return _file_dataset(path, paths, names, split_col, groups, cfg, seed)


def load_dataset(cfg, seed=42) -> Dataset:
    """`data.source` -> `Dataset`, dispatching on what the source is."""
    source = str(cfg.source)
    if source in BUNDLED:
        file, names, positive = BUNDLED[source]
        ds = load_npz(DATASETS_DIR / file, class_names=cfg.class_names or names, name=source)
        ds.positive_class = positive
    else:
        from medkeras.data.store import is_store, load_store

        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(path, f"data source not found (bundled datasets: {', '.join(BUNDLED)})")
        if is_store(path):
            ds = load_store(path, cfg)
        elif path.is_dir():
            ds = load_folder(path, cfg, seed)
        elif path.suffix.lower() == ".npz":
            ds = load_npz(path, class_names=cfg.class_names)
        elif path.suffix.lower() == ".csv":
            ds = load_manifest(path, cfg, seed)
        else:
            raise DataError(path, "unknown data source type (a bundled name, .npz, .csv or a folder)")
    if cfg.positive_class is not None:
        if cfg.positive_class not in ds.class_names:
            raise ConfigError(f"data.positive_class '{cfg.positive_class}' is not one of {ds.class_names}")
        ds.positive_class = cfg.positive_class
    if ds.num_classes < 2:
        raise DataError(source, f"need at least 2 classes, found {ds.class_names}")
    train = ds.splits["train"]
    if len(train) == 0:
        raise DataError(source, "the train split is empty")
    if len(np.unique(train.labels)) < 2:
        raise DataError(source, "the train split has only one class")
    return ds
