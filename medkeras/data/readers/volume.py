"""A CT study as one HU volume with its geometry: a DICOM series (a folder of slices, a list of files, or one
multi-frame file) or a NIfTI file (`.nii`, `.nii.gz`, with nibabel).

The canonical frame (every volume, whatever its source): an array (D, H, W) whose index (d, h, w) increases along
+z, +y, +x of the DICOM patient frame, LPS (x toward the patient's left, y posterior, z superior), for the axis
nearest each array axis (an oblique acquisition keeps its tilt in the affine). `affine` maps (d, h, w, 1) to LPS
millimetres; `spacing` is (z, y, x) mm. NIfTI's RAS world is turned into LPS (x and y negated).

DICOM geometry comes from ImagePositionPatient, ImageOrientationPatient and PixelSpacing of each slice (or frame:
its functional groups): slices are ordered along the slice normal, the slice step is the median distance between
positions (never SliceThickness), and each slice keeps its own rescale (`read_dicom_hu`). A series is refused in
one line naming the file where it cannot be one volume: several series, mixed orientations, localisers, matrices
of different sizes, a missing position, two slices at one position, or a gap over 1.5 times the median step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medkeras.data.readers.dicom import _functional, dataset_hu, dcmread, frame_count, frame_name, headers_parsed
from medkeras.data.readers.dicom_layout import note_layout, plain_hu
from medkeras.data.readers.files import is_dicom
from medkeras.errors import DataError

LPS_TARGET = np.array([[2, 1], [1, 1], [0, 1]])  # array axis 0 along world z, 1 along y, 2 along x, all increasing
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Volume:
    hu: np.ndarray  # float32 (D, H, W) in the canonical frame
    spacing: tuple  # (z, y, x) mm
    affine: np.ndarray  # 4x4: (d, h, w, 1) -> LPS mm
    source: str  # the folder or file it was read from
    names: list  # the file (or FILE#N frame) of each of the D slices, in canonical order

    @property
    def shape(self) -> tuple:
        return self.hu.shape


@dataclass
class _Slice:
    name: str
    position: np.ndarray  # ImagePositionPatient (3,)
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    spacing: tuple  # PixelSpacing (row spacing = y step, column spacing = x step)
    matrix: tuple  # (Rows, Columns)
    series: str | None
    localizer: bool


def is_volume_file(path) -> bool:
    """A NIfTI file (by name)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_volume(source) -> Volume:
    """One HU volume from a series folder, a list of DICOM files, a multi-frame DICOM file or a NIfTI file."""
    if isinstance(source, (list, tuple)):
        return _dicom_volume([Path(p) for p in source], str(Path(str(source[0])).parent) if source else "")
    path = Path(source)
    if not path.exists():
        raise DataError(path, "file not found")
    if is_volume_file(path):
        return read_nifti(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_dicom(p))
        if not files:
            raise DataError(path, "folder holds no DICOM files")
        return _dicom_volume(files, str(path))
    return _dicom_volume([path], str(path))


def _number(values, path, tag) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(path, f"unreadable {tag} ({values!r})") from exc
    if not np.isfinite(out).all():
        raise DataError(path, f"unreadable {tag} ({values!r})")
    return out


def _read_header(path: Path):
    """One DICOM file's header, pixel data deferred (noted for `plain_hu`), and the geometry of each of its images
    (a multi-frame file: each frame's)."""
    ds = dcmread(path, defer_size=1024)
    note_layout(path, ds)
    return ds, _slices_of(ds, path)


def _fill(hu: np.ndarray, at: list, ds, path: Path) -> None:
    """Write one file's images into the volume's slices `at` (the file's frames in stored order): a plain file read
    by numpy straight into its slice, anything else decoded by pydicom with each frame's own rescale."""
    if len(at) == 1 and plain_hu(path, out=hu[at[0]]) is not None:
        return
    if len(at) == 1:
        hu[at[0]] = dataset_hu(ds, path)
        return
    for k, slot in enumerate(at):
        hu[slot] = dataset_hu(ds, path, k + 1)


def _slices_of(ds, path: Path) -> list[_Slice]:
    """The geometry of each image of one read DICOM file, from its header (a multi-frame file: each frame's)."""
    series = str(getattr(ds, "SeriesInstanceUID", "") or "") or None
    localizer = "LOCALIZER" in [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    matrix = (int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0))
    frames = frame_count(ds, path)
    out = []
    for index in range(frames):
        multi = frames > 1
        plane = _functional(ds, index, "PlanePositionSequence") if multi else None
        tilt = _functional(ds, index, "PlaneOrientationSequence") if multi else None
        measures = _functional(ds, index, "PixelMeasuresSequence") if multi else None
        position = getattr(plane if plane is not None else ds, "ImagePositionPatient", None)
        orientation = getattr(tilt if tilt is not None else ds, "ImageOrientationPatient", None)
        spacing = getattr(measures if measures is not None else ds, "PixelSpacing", None)
        name = frame_name(path, index + 1) if multi else str(path)
        for value, tag in ((position, "ImagePositionPatient"), (orientation, "ImageOrientationPatient"),
                           (spacing, "PixelSpacing")):
            if value is None or len(value) != {"ImagePositionPatient": 3, "ImageOrientationPatient": 6,
                                                "PixelSpacing": 2}[tag]:
                raise DataError(name, f"no {tag}: the slice cannot be placed in a volume")
        out.append(_Slice(name, _number(position, name, "ImagePositionPatient"),
                          _number(orientation, name, "ImageOrientationPatient"),
                          tuple(_number(spacing, name, "PixelSpacing")), matrix, series, localizer))
    return out


def _dicom_volume(files: list[Path], source: str) -> Volume:
    """Every header first (pydicom holds the GIL: one thread), the geometry checked and ordered, then the pixels
    read in parallel threads straight into their slices (numpy's file read and rescale release the GIL): a series
    refused for its geometry reads no pixels, and the volume is never copied to be put in order."""
    with headers_parsed():
        headers = [_read_header(f) for f in files]  # an unreadable file: a DicomError naming it
    slices = [s for _, file_slices in headers for s in file_slices]
    if not slices:
        raise DataError(source, "no DICOM images")
    first = slices[0]
    for s in slices:
        if s.localizer:
            raise DataError(s.name, "a localiser (ImageType LOCALIZER) among the series' slices")
        if s.series != first.series:
            raise DataError(s.name, "another series (SeriesInstanceUID) than the first slice's: one volume is one series")
        if np.abs(s.orientation - first.orientation).max() > 1e-4:
            raise DataError(s.name, f"orientation {s.orientation.round(4).tolist()} differs from the first slice's "
                                    f"{first.orientation.round(4).tolist()}")
        if s.matrix != first.matrix:
            raise DataError(s.name, f"matrix {s.matrix[0]}x{s.matrix[1]} differs from the first slice's "
                                    f"{first.matrix[0]}x{first.matrix[1]}")
        if np.abs(np.subtract(s.spacing, first.spacing)).max() > 1e-4:
            raise DataError(s.name, f"PixelSpacing {[float(v) for v in s.spacing]} differs from the first slice's "
                                    f"{[float(v) for v in first.spacing]}")
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    depth = np.asarray([s.position @ normal for s in slices])
    order = np.argsort(depth, kind="stable")
    ordered, depth = [slices[i] for i in order], depth[order]
    if len(ordered) > 1:
        steps = np.diff(depth)
        at = int(np.argmin(steps))
        if steps[at] < 1e-3:
            raise DataError(ordered[at + 1].name, f"at the same position as {Path(ordered[at].name).name} "
                                                  f"({depth[at]:.3f} mm along the slice normal)")
        median = float(np.median(steps))
        at = int(np.argmax(steps))
        if steps[at] > 1.5 * median:
            raise DataError(ordered[at + 1].name, f"a gap of {steps[at]:.2f} mm after {Path(ordered[at].name).name} "
                                                  f"(the median step is {median:.2f} mm): slices are missing")
        dz = median
    else:
        dz = 1.0  # one slice: no step to measure
    dy, dx = first.spacing
    hu = np.empty((len(ordered), *first.matrix), np.float32)
    place = np.empty(len(order), int)
    place[order] = np.arange(len(order))  # the k-th image read (file order) goes to slice place[k]
    tasks, k = [], 0
    for f, (ds, file_slices) in zip(files, headers):
        tasks.append((ds, f, [int(v) for v in place[k:k + len(file_slices)]]))
        k += len(file_slices)
    _fill_all(hu, tasks)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = normal * dz, col * dy, row * dx  # (d, h, w) as stacked
    affine[:3, 3] = ordered[0].position
    return _canonical(hu, affine, source, [s.name for s in ordered])


def _fill_all(hu: np.ndarray, tasks: list) -> None:
    """`_fill` every file's images into `hu`, in parallel threads where there are several files."""
    if len(tasks) < 4:
        for ds, path, at in tasks:
            _fill(hu, at, ds, path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda task: _fill(hu, task[2], task[0], task[1]), tasks))  # the first failure raised


def read_nifti(path) -> Volume:
    """A NIfTI volume (values as stored after its scl_slope / scl_inter: HU for CT) in the canonical LPS frame."""
    try:
        import nibabel as nib
    except ImportError as exc:  # a declared dependency: only a broken install lacks it
        raise DataError(path, "reading NIfTI needs nibabel (pip install nibabel)") from exc
    try:
        image = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as exc:  # noqa: BLE001 - nibabel's errors come in many types
        raise DataError(path, f"cannot read NIfTI: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(path, f"expected a 3-D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise DataError(path, "voxels contain NaN or infinite values")
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # RAS -> LPS
    names = [f"{Path(path).name}#{k + 1}" for k in range(data.shape[2])]  # along the file's third axis
    return _canonical(data, affine, str(path), names, slice_axis=2)


def _canonical(data: np.ndarray, affine: np.ndarray, source: str, names: list, slice_axis: int = 0) -> Volume:
    """`data` and its (index -> LPS mm) affine turned to the canonical frame (see the module's docstring)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    start = io_orientation(affine)
    transform = ornt_transform(start, LPS_TARGET)
    out = np.ascontiguousarray(apply_orientation(data, transform), dtype=np.float32)
    new_affine = affine @ inv_ornt_aff(transform, data.shape)
    axis = int(transform[slice_axis, 0])  # where the named axis went, and whether it was reversed
    order = names[::-1] if transform[slice_axis, 1] < 0 else list(names)
    if axis != 0:  # the named axis is not the canonical slice axis (a sagittal NIfTI): name slices by index
        order = [f"{Path(source).name}#{k + 1}" for k in range(out.shape[0])]
    spacing = tuple(float(v) for v in np.linalg.norm(new_affine[:3, :3], axis=0))
    return Volume(out, spacing, new_affine, source, order)
