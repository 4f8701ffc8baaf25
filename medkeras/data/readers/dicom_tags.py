"""What a DICOM header says about where an image belongs: its patient and series (keyed, never raw), its frame of
reference and position along the slice normal, and, for a multi-frame file, each frame (`FILE#N`) in z order.

Sources group splits by patient and keep series together with these; predict writes the keys per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medkeras.data.keys import id_masks, keyed
from medkeras.data.readers.dicom import (
    _functional,
    dcmread,
    frame_count,
    frame_name,
    named_errors,
    read_dicom_hu,
    split_frame,
)
from medkeras.data.readers.dicom_layout import note_layout
from medkeras.errors import DicomError


@dataclass(frozen=True)
class SliceInfo:
    """One image of a DICOM file: `name` is the file, or `FILE#N` for frame N of a multi-frame file."""

    name: str
    patient: str | None  # keyed PatientID
    series: str | None  # keyed SeriesInstanceUID
    frame_of_reference: str | None  # keyed FrameOfReferenceUID: positions compare only within one
    position: float | None  # mm along the slice normal (ImagePositionPatient . normal)
    masks: tuple = ()  # parts of the path holding the PatientID, and what outputs show instead (keys.id_masks)


def _normal(orientation) -> np.ndarray | None:
    try:
        row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    except (TypeError, ValueError, IndexError):
        return None
    normal = np.cross(row, col)
    return normal if np.linalg.norm(normal) > 0 else None


def _position(position, orientation) -> float | None:
    """Position along the slice normal; the z coordinate where the orientation is missing."""
    try:
        point = np.asarray(position, float)
    except (TypeError, ValueError):
        return None
    if point.shape != (3,) or not np.isfinite(point).all():
        return None
    normal = _normal(orientation) if orientation is not None else None
    return float(point @ normal) if normal is not None else float(point[2])


@named_errors
def dicom_items(path, key_file=None) -> list[SliceInfo]:
    """The images of one DICOM file, from its header only: one for a single-frame file, one per frame (in z order,
    stored order where frames have no position) for a multi-frame one. Raises `DicomError` for unreadable files."""
    path, number = split_frame(path)
    try:  # pixel data deferred, not skipped: the decoder takes the layout from this parse (`note_layout`)
        ds = dcmread(path, defer_size=1024)
        note_layout(path, ds)
    except DicomError:
        ds = dcmread(path, stop_before_pixels=True)  # a header readable without its pixel element
    patient = keyed("patient", getattr(ds, "PatientID", None), key_file)
    masks = id_masks(path, getattr(ds, "PatientID", None), patient)
    series = keyed("series", getattr(ds, "SeriesInstanceUID", None), key_file)
    reference = keyed("frame-of-reference", getattr(ds, "FrameOfReferenceUID", None), key_file)
    frames = frame_count(ds, path)
    if frames == 1:
        position = _position(getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None))
        return [SliceInfo(str(path) if number is None else frame_name(path, number), patient, series, reference,
                          position, masks)]
    shared = _functional(ds, None, "PlaneOrientationSequence")
    items = []
    for i in range(frames):
        plane = _functional(ds, i, "PlanePositionSequence")
        orientation = _functional(ds, i, "PlaneOrientationSequence") or shared
        position = _position(getattr(plane, "ImagePositionPatient", None) if plane is not None else None,
                             getattr(orientation, "ImageOrientationPatient", None) if orientation is not None else
                             getattr(ds, "ImageOrientationPatient", None))
        items.append(SliceInfo(frame_name(path, i + 1), patient, series, reference, position, masks))
    if number is not None:
        return [item for item in items if split_frame(item.name)[1] == number]
    if all(item.position is not None for item in items):
        items.sort(key=lambda item: item.position)
    return items


def read_dicom_frames(path) -> tuple[np.ndarray, list[int]]:
    """Every frame of a DICOM file as float32 (F, H, W) in z order (stored order where frames have no position),
    with their 1-based frame numbers; a single-frame file gives one frame."""
    items = dicom_items(path)
    frames = [read_dicom_hu(item.name) for item in items]
    numbers = [split_frame(item.name)[1] or 1 for item in items]
    return np.stack(frames), numbers


def series_in_z_order(paths) -> list:
    """DICOM slices of one series sorted along the slice normal (position, then InstanceNumber, then name)."""

    def key(path):
        ds = dcmread(split_frame(path)[0], stop_before_pixels=True)
        position = _position(getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None))
        return (position if position is not None else float("inf"), int(getattr(ds, "InstanceNumber", 0) or 0),
                str(path))

    return sorted(paths, key=key)


@named_errors
def patient_key(path, key_file=None) -> str | None:
    """The keyed PatientID of a DICOM file (for grouping splits), or None. The raw ID never leaves here."""
    return keyed("patient", getattr(dcmread(split_frame(path)[0], stop_before_pixels=True), "PatientID", None),
                 key_file)
