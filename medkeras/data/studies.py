"""Studies: one item per CT study (a DICOM series folder, a multi-frame DICOM file or a NIfTI file), labelled whole.

Sources end as the same `Dataset` as slices (`types.py`), each split's `paths` naming studies:
- a folder of class folders, each holding studies at any depth: every folder that directly holds DICOM files is one
  series (TCIA's `Patient/Study/Series/1-01.dcm` as it comes), every `.nii` / `.nii.gz` file one volume;
- a CSV manifest `path,label[,split][,patient_id]` whose paths name series folders, multi-frame files or NIfTI files.
A study is named by its path relative to the source's folder (series folders repeat file names, never paths), with
any path part holding the PatientID shown as its key. Patients come from the manifest's `patient_id` or the first
slice's PatientID (keyed), so splits keep a patient's studies together; a NIfTI file without one is its own group.

`study_arrays` reads the studies in parallel threads (pydicom and nibabel release the GIL while reading; the
resampling is TensorFlow's), resamples each to a spacing (mm) and/or a size [D, H, W] (`volumes.py`), applies the
windows, and returns (N, D, H, W, C) pixels in [0, 255].
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medkeras.data.keys import id_masks, keyed
from medkeras.data.readers import common_folder, dicom_items, is_dicom, is_volume_file, read_volume
from medkeras.data.sources import (
    BUNDLED,
    class_folders,
    finish_dataset,
    labels_from_names,
    load_dataset,
    manifest_rows,
    split_column,
)
from medkeras.data.store import is_store, load_store
from medkeras.data.splits import split_groups, split_indices
from medkeras.data.types import SPLITS, Dataset, Split
from medkeras.errors import ConfigError, DataError

STUDY_COLUMNS = ("path", "label")


def find_studies(folder) -> list[Path]:
    """The studies below `folder`, sorted: each folder directly holding DICOM files, and each NIfTI file."""
    out = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths = [Path(here) / f for f in sorted(files) if not f.startswith(".")]
        out += [p for p in paths if is_volume_file(p)]
        if any(is_dicom(p) for p in paths if not is_volume_file(p)):
            out.append(Path(here))
    return sorted(out)


def study_header(path: Path, key_file=None):
    """(keyed patient, keyed series, masks) from a study's first DICOM file; (None, None, ()) for NIfTI."""
    if is_volume_file(path):
        return None, None, ()
    if not path.exists():
        raise DataError(path, "not found")
    first = path if path.is_file() else next((p for p in sorted(path.iterdir()) if p.is_file() and is_dicom(p)), None)
    if first is None:
        raise DataError(path, "holds no DICOM files: not a study")
    info = dicom_items(first, key_file)[0]  # an unreadable header: a DicomError naming the file
    return info.patient, info.series, tuple(info.masks)


def _header_or_skip(path: Path, key_file, on_bad_file: str):
    """`study_header`, or under `on_bad_file: skip` no header for a study that is missing or holds no DICOM: it is
    kept, and skipped and counted where it is read, as a bad slice is."""
    try:
        return study_header(path, key_file)
    except DataError:
        if on_bad_file != "skip":
            raise
        return None, None, ()


def _study_dataset(source, studies, label_names, split_col, patient_ids, cfg, seed, root) -> Dataset:
    key_file = getattr(cfg, "patient_key_file", None)
    class_names = cfg.class_names or sorted({str(n) for n in label_names})
    labels = labels_from_names(source, label_names, class_names)
    for k, c in enumerate(class_names):
        if not (labels == k).any():
            raise DataError(source, f"class '{c}' has no studies")
    headers = [_header_or_skip(p, key_file, cfg.on_bad_file) for p in studies]
    names = [str(p) for p in studies]
    if len(set(names)) != len(names):
        repeated = next(n for n in names if names.count(n) > 1)
        raise DataError(source, f"study {repeated} is listed twice")
    masks = {m for _, _, ms in headers for m in ms}
    if patient_ids is not None:  # keyed here; the raw IDs go no further
        patients = [keyed("patient", pid, key_file) for pid in patient_ids]
        masks |= {m for name, pid, key in zip(names, patient_ids, patients) for m in id_masks(name, pid, key)}
    else:
        patients = [h[0] for h in headers]
    # a NIfTI file has no SeriesInstanceUID: its own series, keyed by its path (results per series keep it)
    series = [h[1] or keyed("series", name, key_file) for h, name in zip(headers, names)]
    groups = split_groups(patients, series, names)
    if split_col is not None:
        column = np.asarray(split_col)
        by_split = {s: np.flatnonzero(column == s) for s in SPLITS}
    else:
        by_split = split_indices(labels, groups, cfg.split, seed, source=source)
    below = all(n.startswith(str(root).rstrip("/") + "/") for n in names)
    shown = str(root) if below else common_folder(names)
    splits = {
        s: Split(labels=labels[ix], paths=[names[i] for i in ix],
                 groups=[patients[i] for i in ix] if any(patients) else None,
                 series=[series[i] for i in ix] if any(series) else None,
                 root=shown, redact=bool(getattr(cfg, "redact_paths", False)), masks=tuple(sorted(masks)),
                 studies=True)
        for s, ix in by_split.items()
    }
    return Dataset(name=Path(source).stem, class_names=list(class_names), splits=splits)


def load_study_folder(path, cfg, seed=42) -> Dataset:
    """A folder with one sub-folder per class, each holding studies (see the module's docstring)."""
    path = Path(path).resolve()
    studies, names = class_folders(path, cfg, "studies", "series folders of DICOM files or NIfTI files", find_studies)
    return _study_dataset(path, studies, names, None, None, cfg, seed, path)


def load_study_manifest(path, cfg, seed=42) -> Dataset:
    """A CSV `path,label[,split][,patient_id]` naming one study a row; relative paths are relative to the CSV."""
    path = Path(path)
    rows = manifest_rows(path)
    if not rows:
        raise DataError(path, "manifest has no rows")
    missing = set(STUDY_COLUMNS) - set(rows[0])
    if missing:
        raise DataError(path, f"manifest lacks required column(s) {', '.join(sorted(missing))}")
    studies = []
    for line, row in enumerate(rows, start=2):
        study = (path.parent / row["path"]).resolve()
        if not study.exists() and cfg.on_bad_file != "skip":  # under skip: skipped and counted where it is read
            raise DataError(path, f"line {line}: {row['path']} not found")
        if study.is_file() and not (is_volume_file(study) or is_dicom(study)):
            raise DataError(path, f"line {line}: {row['path']} is not a study (a series folder, a multi-frame "
                                  "DICOM file or a NIfTI file)")
        if study.is_file() and is_dicom(study) and len(dicom_items(study)) < 2:
            raise DataError(path, f"line {line}: {row['path']} is one slice, not a study: name its series folder")
        studies.append(study)
    split_col = split_column(rows, path)
    patient_ids = [r["patient_id"] for r in rows] if "patient_id" in rows[0] else None
    return _study_dataset(path, studies, [r["label"].strip() for r in rows], split_col, patient_ids, cfg, seed,
                          path.parent.resolve())


def load_studies(cfg, seed=42) -> Dataset:
    """`data.source` (a folder of class folders of studies, or a study manifest) -> `Dataset` of studies."""
    path = Path(str(cfg.source)).expanduser()
    if is_store(path):
        ds = load_store(path, cfg)
        if not any(split.studies for split in ds.splits.values()):
            raise DataError(path, "is a store of images, not of studies: prepare the studies with the study config "
                                  "(medkeras prepare SOURCE --config ... --out ...)")
        return finish_dataset(ds, cfg, seed, str(cfg.source))
    if str(cfg.source) in BUNDLED:
        raise DataError(cfg.source, "is a dataset of images; study models read a folder of class folders of series "
                                    "or NIfTI files, a study manifest, or a store of studies `medkeras prepare` wrote")
    if not path.exists():
        raise DataError(path, "data source not found")
    if path.is_dir():
        ds = load_study_folder(path, cfg, seed)
    elif path.suffix.lower() == ".csv":
        ds = load_study_manifest(path, cfg, seed)
    else:
        raise DataError(path, "a study source is a folder of class folders or a .csv manifest")
    return finish_dataset(ds, cfg, seed, str(cfg.source))


def load_items(cfg, seed=42, studies: bool = False) -> Dataset:
    """The run's items: `data.source` as studies (`studies`, from `config.is_study`: model.input slab, series or
    volume) or as images (`sources.load_dataset`)."""
    return load_studies(cfg, seed) if studies else load_dataset(cfg, seed)


def geometry(values, what: str = "size", whole: bool = False):
    """A size [D, H, W] (`whole`: integers) or a spacing [z, y, x] mm as a list of three positive numbers; None
    stays None; anything else refused in one line naming `what`."""
    if values is None:
        return None
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        out = []
    if len(out) != 3 or min(out) <= 0 or (whole and any(v != int(v) for v in out)):
        raise ConfigError(f"{what} must be three positive {'whole ' if whole else ''}numbers "
                          f"{'[D, H, W]' if whole else '[z, y, x] mm'}, got {values!r}")
    return [int(v) for v in out] if whole else out


def study_volume(path, windows, spacing=None, size=None):
    """One study -> float32 (D, H, W, C) pixels in [0, 255]: read, resampled, windowed (C = number of windows).

    `windows` as `data.window` takes them: "lung", [-600, 1500], or a list of presets or [level, width] pairs."""
    from medkeras.data.readers import hu_to_pixels
    from medkeras.data.windows import parse_windows

    windows = parse_windows(windows)
    if not windows:
        raise ConfigError("studies need windows (data.window): CT volumes are windowed from HU")
    return hu_to_pixels(study_hu(path, spacing, size), windows)  # numpy: the graph's float32 values, in place


def study_hu(path, spacing=None, size=None) -> np.ndarray:
    """One study -> its HU volume (D, H, W) resampled to `spacing` and/or `size` (what a store of studies holds)."""
    from medkeras.data.volumes import resample_volume

    spacing, size = geometry(spacing, "spacing"), geometry(size, "size", whole=True)
    volume = read_volume(path)
    hu, _ = resample_volume(volume.hu, volume.spacing, spacing, size)
    return hu.numpy()


def study_cause(study, exc: DataError) -> str:
    """Why a study could not be read, naming the slice where one file of it is the cause (relative to the study,
    so a patient folder above it is never shown): what a skip records beside the study's own name."""
    path, study = Path(str(exc.path)), Path(str(study))
    return f"{path.relative_to(study)}: {exc.cause}" if study in path.parents else exc.cause


def study_arrays(split: Split, windows, spacing=None, size=None, workers: int | None = None,
                 on_bad_file: str = "fail", skipped: list | None = None) -> np.ndarray:
    """Every study of `split` as `study_volume` does it, read in parallel threads -> (N, D, H, W, C) float32.

    `size` (D, H, W) is required: a batch holds one shape. A study that cannot be read raises its `DataError`, or
    under `on_bad_file: skip` is left out and appended to `skipped` as (index, cause).
    """
    from medkeras.data.windows import parse_windows

    if size is None:
        raise ConfigError("studies need a size [D, H, W] to be batched (one shape a batch)")
    size, windows = geometry(size, "size", whole=True), parse_windows(windows)
    out = np.empty((len(split), *size, max(1, len(windows))), np.float32)
    failed = {}

    def fill(i):
        try:
            out[i] = study_volume(split.paths[i], windows, spacing, size)
        except DataError as exc:
            if on_bad_file == "fail":
                raise
            failed[i] = study_cause(split.paths[i], exc)

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(len(split))))
    if skipped is not None:
        skipped += sorted(failed.items())
    return np.delete(out, sorted(failed), axis=0) if failed else out


def study_split_arrays(split: Split, data_cfg, on_bad_file: str = "fail"):
    """(volumes (N, D, H, W, C), labels, names, bad) of a study split, as `pipeline.split_arrays` gives slices."""
    if split.store is not None:
        from medkeras.data.store import store_arrays

        return (*store_arrays(split, data_cfg), [])
    skipped = []
    volumes = study_arrays(split, data_cfg.window, data_cfg.spacing, data_cfg.volume_size, on_bad_file=on_bad_file,
                           skipped=skipped)
    names = split.names()
    keep = np.setdiff1d(np.arange(len(split)), [i for i, _ in skipped])
    return volumes, split.labels[keep], [names[i] for i in keep], [(names[i], cause) for i, cause in skipped]
