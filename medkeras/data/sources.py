"""Data sources: a bundled dataset, a MedMNIST `.npz`, a folder per class, a CSV manifest or a prepared store.

Every source ends as a `Dataset` (`types.py`): class names, and per split either in-memory images, file paths or
store records, with integer labels. Only DICOM headers are read here (frames, patients, series, positions);
`readers/` decodes the images, `pipeline.py` batches them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medkeras.data.keys import id_masks, keyed
from medkeras.data.readers import READABLE_SUFFIXES, common_folder, is_dicom
from medkeras.data.readers.listing import list_dicom
from medkeras.data.splits import split_groups, split_indices
from medkeras.data.store import is_store, load_store
from medkeras.data.types import SPLITS, Dataset, Split
from medkeras.errors import ConfigError, DataError

DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"

# Class names of the MedMNIST sets we know by file name (MedMNIST v2 INFO), so users never see "0" / "1".
MEDMNIST_CLASSES = {
    "breastmnist": ["malignant", "benign-or-normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
}
# Bundled datasets: name -> (file inside medkeras/datasets, class names, positive class).
BUNDLED = {
    "breastmnist": ("breastmnist.npz", MEDMNIST_CLASSES["breastmnist"], "malignant"),
}


def labels_from_names(source, names, class_names):
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


def _dicom_structure(paths, key_file):
    """Each file's images from its DICOM header: [SliceInfo] per path ([None] for other files; a DICOM file whose
    header cannot be read stays one item, named when it is decoded). Many headers are parsed on every core."""
    dicom = [i for i, path in enumerate(paths) if is_dicom(path)]
    out = [[None] for _ in paths]
    for i, items in zip(dicom, list_dicom([paths[i] for i in dicom], key_file)):
        if items is not None:
            out[i] = items
    return out


def _file_dataset(source, paths, label_names, split_col, patient_ids, cfg, seed, root=None, series_ids=None,
                  patient_labels=None) -> Dataset:
    """Files (or manifest rows) -> `Dataset`. DICOM headers give multi-frame files as their frames (`FILE#N`),
    patients (keyed; a manifest's `patient_id` column wins) and series; splits keep patients (else series) whole,
    and list each split's slices by series and position."""
    key_file = getattr(cfg, "patient_key_file", None)
    class_names = cfg.class_names or sorted({str(n) for n in label_names})
    structure = _dicom_structure(paths, key_file)
    rows = [(i, info) for i, infos in enumerate(structure) for info in infos]  # one row per image (frame)
    names = [info.name if info is not None else str(paths[i]) for i, info in rows]
    label_names = [label_names[i] for i, _ in rows]
    labels = labels_from_names(source, label_names, class_names)
    for k, c in enumerate(class_names):
        if not (labels == k).any():
            raise DataError(source, f"class '{c}' has no images")
    if patient_ids is not None:  # keyed here; the raw IDs go no further
        patients = [keyed("patient", patient_ids[i], key_file) for i, _ in rows]
        masks = {m for (i, _), name, key in zip(rows, names, patients) for m in id_masks(name, patient_ids[i], key)}
    else:
        patients = [info.patient if info is not None else None for _, info in rows]
        masks = set()
    masks |= {m for _, info in rows if info is not None for m in info.masks}  # folders named by the PatientID
    if series_ids is not None:  # a manifest's series_id column (keyed like patients: UIDs can identify)
        series = [keyed("series", series_ids[i], key_file) if series_ids[i] else None for i, _ in rows]
    else:
        series = [info.series if info is not None else None for _, info in rows]
    given = None
    if patient_labels is not None:  # a manifest's patient_label column: the patient's class, as a class name
        unknown = sorted({str(v) for v in patient_labels if v and str(v) not in class_names})
        if unknown:
            raise DataError(source, f"patient_label value(s) {unknown[:3]} are not classes {class_names}")
        given = [class_names.index(str(patient_labels[i])) if patient_labels[i] else None for i, _ in rows]
    positions = [(info.frame_of_reference, info.position) if info is not None and info.position is not None else None
                 for _, info in rows]
    groups = split_groups(patients, series, names)
    if split_col is not None:
        column = np.asarray([split_col[i] for i, _ in rows])
        index = {s: np.flatnonzero(column == s) for s in SPLITS}
    else:
        index = split_indices(labels, groups, cfg.split, seed, source=source)

    def order(ix):  # each series along its slice normal; other files keep their order
        return sorted(ix, key=lambda i: (series[i] or "", positions[i][1] if positions[i] else float("inf"), i))

    known = any(patients)
    # outputs name files relative to the source's folder, or to the folder all of them share where some lie
    # outside it (a manifest of absolute paths): never by a bare file name that repeats across series
    below = root is not None and all(n.startswith(str(root).rstrip("/") + "/") for n in names)
    shown = str(root) if below or not names else common_folder(names)
    splits = {}
    for s, ix in index.items():
        ix = order(ix)
        splits[s] = Split(
            labels=labels[ix], paths=[names[i] for i in ix],
            groups=[patients[i] for i in ix] if known else None,
            series=[series[i] for i in ix] if any(series) else None,
            positions=[positions[i] for i in ix] if any(positions) else None,
            root=shown, redact=bool(getattr(cfg, "redact_paths", False)),
            patient_labels=[given[i] for i in ix] if given is not None else None, masks=tuple(sorted(masks)),
        )
    return Dataset(name=Path(source).stem, class_names=list(class_names), splits=splits)


def load_folder(path, cfg, seed=42) -> Dataset:
    """A folder with one sub-folder per class; files are split by `data.split` fractions, stratified."""
    path = Path(path).resolve()
    paths, names = class_folders(path, cfg, "images", "PNG, JPEG, DICOM or NPY", lambda d: sorted(
        f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in READABLE_SUFFIXES))
    return _file_dataset(path, paths, names, None, None, cfg, seed, root=path)


def class_folders(path: Path, cfg, what: str, kinds: str, find) -> tuple[list, list]:
    """(items, their class names) of a folder with one sub-folder per class; `find(folder)` lists a class's items
    (`what`, of `kinds`, in errors). A class folder with none is refused unless `data.class_names` leaves it out."""
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(path, f"no class sub-folders (expected one folder per class holding the {what})")
    items, names = [], []
    for d in class_dirs:
        found = find(d)
        if not found and (cfg.class_names is None or d.name in cfg.class_names):
            raise DataError(d, f"class '{d.name}' has no {what} ({kinds})")
        items += found
        names += [d.name] * len(found)
    return items, names


def load_manifest(path, cfg, seed=42) -> Dataset:
    """A CSV with `path,label[,split][,patient_id][,series_id][,patient_label]`; relative paths are relative to the
    CSV. `patient_label`: the patient's class where it is not "positive if any slice is" (eval.aggregate)."""
    path = Path(path)
    rows = manifest_rows(path)
    columns = set(rows[0]) if rows else set()
    missing = {"path", "label"} - columns
    if missing:
        raise DataError(path, f"manifest lacks required column(s) {', '.join(sorted(missing))}")
    if not rows:
        raise DataError(path, "manifest has no rows")
    paths = [(path.parent / r["path"]).resolve() for r in rows]  # an absolute path stays itself, resolved
    split_col = split_column(rows, path)
    patient_ids = [r["patient_id"] for r in rows] if "patient_id" in columns else None
    series_ids = [r["series_id"].strip() for r in rows] if "series_id" in columns else None
    patient_labels = [r["patient_label"].strip() for r in rows] if "patient_label" in columns else None
    names = [r["label"].strip() for r in rows]
    return _file_dataset(path, paths, names, split_col, patient_ids, cfg, seed, root=path.parent.resolve(),
                         series_ids=series_ids, patient_labels=patient_labels)


def manifest_rows(path: Path) -> list[dict]:
    """A CSV manifest's rows as dicts, or a `DataError` naming the file."""
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read CSV manifest: {exc}") from exc


def split_column(rows, path) -> list | None:
    """A manifest's `split` column, lower-cased, or None without one; an unknown value is refused."""
    if not rows or "split" not in rows[0]:
        return None
    column = [r["split"].strip().lower() for r in rows]
    bad = sorted(set(column) - set(SPLITS))
    if bad:
        raise DataError(path, f"unknown split value(s) {bad}: use train, val or test")
    return column


def load_dataset(cfg, seed=42) -> Dataset:
    """`data.source` -> `Dataset` of images, dispatching on what the source is (studies: `studies.load_items`)."""
    source = str(cfg.source)
    if source in BUNDLED:
        file, names, positive = BUNDLED[source]
        ds = load_npz(DATASETS_DIR / file, class_names=cfg.class_names or names, name=source)
        ds.positive_class = positive
    else:
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
    return finish_dataset(ds, cfg, seed, source)


def finish_dataset(ds: Dataset, cfg, seed, source) -> Dataset:
    """What every source gets once read: `data.positive_class` checked and set (binary: the last class by default),
    two classes at least, and under `data.folds` the fold's train and val."""
    if cfg.positive_class is not None:
        if cfg.positive_class not in ds.class_names:
            raise ConfigError(f"data.positive_class '{cfg.positive_class}' is not one of {ds.class_names}")
        ds.positive_class = cfg.positive_class
    if ds.num_classes < 2:
        raise DataError(source, f"need at least 2 classes, found {ds.class_names}")
    if getattr(cfg, "folds", 0):
        from medkeras.data.splits import with_fold

        ds = with_fold(ds, cfg.folds, cfg.fold, seed, source)
    if ds.num_classes == 2 and ds.positive_class is None:  # said once, here, and carried into every output
        ds.positive_class = ds.class_names[-1]
    return ds


def check_trainable(ds: Dataset, source) -> None:
    """What training needs of a dataset (evaluation and `prepare` take any subset of splits: an external test set
    is a source of its own): a train split holding two classes or more."""
    train = ds.splits["train"]
    if len(train) == 0:
        raise DataError(source, "the train split is empty")
    if len(np.unique(train.labels)) < 2:
        raise DataError(source, "the train split has only one class")
