"""DICOM to Hounsfield units with pydicom: rescale slope/intercept, MONOCHROME1 inversion, one clear error.

Patient identifiers are never returned or logged here; grouping by patient uses `patient_key`, a one-way hash.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from medkeras.errors import DicomError, ResourceError, raise_if_resource


def _dcmread(path, stop_before_pixels=False, defer_size=None):
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise DicomError(path, "file not found")
    if path.stat().st_size == 0:
        raise DicomError(path, "empty file (0 bytes)")
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, defer_size=defer_size)
    except InvalidDicomError:
        try:  # files written without the 128-byte preamble are still DICOM
            return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, defer_size=defer_size, force=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for garbage
            raise_if_resource(exc, path)
            raise DicomError(path, f"not a DICOM file ({type(exc).__name__})") from exc
    except Exception as exc:  # noqa: BLE001
        raise_if_resource(exc, path)
        raise DicomError(path, f"cannot parse DICOM: {exc}") from exc


def read_dicom_hu(path) -> np.ndarray:
    """Read one DICOM image as float32 (H, W).

    CT: Hounsfield units, `pixel * RescaleSlope + RescaleIntercept` (slope 1 / intercept 0 with a warning where
    the tags are missing). Other modalities: the stored values after any rescale, with MONOCHROME1 inverted so
    that higher always means brighter. Raises `DicomError` (a `ValueError`) naming the file for anything unreadable.
    """
    image, ds = _modality_values(path)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        image = image.max() + image.min() - image
    return image


def read_dicom_display(path) -> np.ndarray:
    """A DICOM image as a radiologist's viewer shows it without a configured window, float32 (H, W).

    Non-CT images with a VOI LUT or WindowCenter/WindowWidth (X-ray, mammography) go through it (pydicom's
    `apply_voi_lut`); CT and images without one return the rescaled values. MONOCHROME1 is inverted.
    """
    image, ds = _modality_values(path)
    if str(getattr(ds, "Modality", "")) != "CT" and ("VOILUTSequence" in ds or "WindowCenter" in ds):
        from pydicom.pixels import apply_voi_lut

        try:
            image = np.asarray(apply_voi_lut(image, ds), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - malformed VOI tags: fall back to the stored values
            warnings.warn(f"{Path(path).name}: VOI LUT not applied ({exc})", stacklevel=2)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        image = image.max() + image.min() - image
    return image


# The fastest installed decoder per transfer syntax, measured here (`bench.dicom_syntaxes`: 512 px 12-bit CT, one
# core, images/s): RLE pylibjpeg 657 / pydicom 159; JPEG-LS pyjpegls 191 / gdcm 129 / pylibjpeg 49; JPEG Lossless
# (process 14, SV1) gdcm 190 / pylibjpeg 108; JPEG 2000 lossless gdcm 51 / pylibjpeg 33 / pillow 19; JPEG 2000
# lossy pylibjpeg 142 / gdcm 122 / pillow 68. A file the preferred one cannot decode (GDCM and 12-bit JPEG Extended)
# goes to pydicom's own order over every installed plugin.
_PREFERRED = {
    "1.2.840.10008.1.2.5": ("pylibjpeg", "pydicom"),
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.57": ("gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.70": ("gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.90": ("gdcm", "pylibjpeg", "pillow"),
    "1.2.840.10008.1.2.4.91": ("pylibjpeg", "gdcm", "pillow"),
}


def decode_pixels(ds, index=None):
    """`ds`'s stored pixel values (one frame with `index`), decoded by the fastest installed plugin for its syntax."""
    from pydicom.pixels import get_decoder, pixel_array

    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax in _PREFERRED:
        available = get_decoder(syntax).available_plugins
        plugin = next((p for p in _PREFERRED[syntax] if p in available), None)
        if plugin is not None:
            try:
                return pixel_array(ds, index=index, decoding_plugin=plugin)
            except Exception as exc:  # noqa: BLE001 - e.g. GDCM and 12-bit JPEG Extended: let pydicom try the rest
                raise_if_resource(exc, getattr(ds, "filename", ""))
    return pixel_array(ds, index=index)


def _modality_values(path):
    """(pixel data after the modality rescale as float32, dataset) with every failure as a `DicomError`."""
    ds = _dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(path, "no pixel data in this DICOM file")
    try:
        pixels = decode_pixels(ds)
    except Exception as exc:  # noqa: BLE001 - decoder errors come in many types
        raise_if_resource(exc, path)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise DicomError(path, f"cannot decode pixel data (transfer syntax {name}): {str(exc).splitlines()[0]}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1 or pixels.ndim not in (2,):
        if pixels.ndim == 3 and pixels.shape[-1] in (3, 4) and frames == 1:
            pixels = pixels[..., :3].mean(axis=-1)  # colour (RGB) DICOM: luminance-like mean
        else:
            raise DicomError(path, f"multi-frame DICOM ({frames} frames) is not supported as one image")
    image = pixels.astype(np.float32)
    modality = str(getattr(ds, "Modality", ""))
    slope = getattr(ds, "RescaleSlope", None)
    intercept = getattr(ds, "RescaleIntercept", None)
    if slope is None or intercept is None:
        if modality == "CT":
            warnings.warn(f"{Path(path).name}: CT without RescaleSlope/RescaleIntercept; assuming 1 and 0", stacklevel=2)
        slope, intercept = slope or 1.0, intercept or 0.0
    image = image * np.float32(float(slope)) + np.float32(float(intercept))
    if not np.isfinite(image).all():
        raise DicomError(path, "pixel data contains NaN or infinite values")
    return image, ds


# Uncompressed little-endian transfer syntaxes: pixel bytes lie in the file as stored (implicit / explicit VR).
_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
# (BitsAllocated, PixelRepresentation) -> what tf.io.decode_raw reads (it has no uint32: those go through pydicom)
_DTYPES = {(8, 0): "uint8", (8, 1): "int8", (16, 0): "uint16", (16, 1): "int16", (32, 1): "int32"}
PIXEL_DTYPES = tuple(_DTYPES.values())


def pixel_layout(path) -> dict | None:
    """Where a plain DICOM keeps its pixels, so that the graph can read them without pydicom; None otherwise.

    "Plain": uncompressed little-endian, one frame, one sample per pixel, 8/16/32-bit integers, with both
    RescaleSlope and RescaleIntercept (or neither, outside CT). pydicom parses the header only (pixel data
    deferred); `read_dicom_hu` on the same file gives exactly `stored * slope + intercept` (pydicom 3 returns
    native pixels as stored, unused high bits uncorrected), MONOCHROME1 inverted. Every other file returns None
    and goes through `read_dicom_hu`, which also names the cause of any failure.
    """
    try:
        ds = _dcmread(path, defer_size=1024)
    except (DicomError, ResourceError):  # the Python path reads it again and names the cause
        return None
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    element = ds.get_item(0x7FE00010, keep_deferred=True)
    if syntax not in _NATIVE_LITTLE_ENDIAN or element is None or not hasattr(element, "value_tell"):
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        dtype = _DTYPES.get((int(ds.BitsAllocated), int(ds.PixelRepresentation)))
        samples, frames = int(getattr(ds, "SamplesPerPixel", 1) or 1), int(getattr(ds, "NumberOfFrames", 1) or 1)
        slope, intercept = getattr(ds, "RescaleSlope", None), getattr(ds, "RescaleIntercept", None)
        photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    except (AttributeError, TypeError, ValueError):
        return None
    nbytes = rows * cols * int(ds.BitsAllocated) // 8
    if dtype is None or samples != 1 or frames != 1 or rows < 1 or cols < 1 or element.length < nbytes:
        return None
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or "ModalityLUTSequence" in ds:
        return None
    if (slope is None) != (intercept is None) or (slope is None and str(getattr(ds, "Modality", "")) == "CT"):
        return None  # read_dicom_hu warns about the missing tags
    if element.value_tell + element.length > Path(path).stat().st_size:
        return None  # truncated: read_dicom_hu names the failure
    return {
        "offset": int(element.value_tell), "nbytes": nbytes, "rows": rows, "cols": cols, "dtype": dtype,
        "slope": float(slope if slope is not None else 1.0), "intercept": float(intercept or 0.0),
        "invert": photometric == "MONOCHROME1",
    }


def series_in_z_order(paths) -> list:
    """DICOM slices of one series sorted along the patient z axis (ImagePositionPatient, then InstanceNumber)."""

    def key(path):
        ds = _dcmread(path, stop_before_pixels=True)
        position = getattr(ds, "ImagePositionPatient", None)
        z = float(position[2]) if position is not None and len(position) == 3 else float("inf")
        return (z, int(getattr(ds, "InstanceNumber", 0) or 0), str(path))

    return sorted(paths, key=key)


def patient_key(path) -> str | None:
    """A one-way hash of the file's PatientID (for grouping splits), or None. The raw ID never leaves here."""
    ds = _dcmread(path, stop_before_pixels=True)
    pid = str(getattr(ds, "PatientID", "") or "")
    return hash_patient_id(pid) if pid else None


def hash_patient_id(patient_id: str) -> str:
    return hashlib.sha256(("medkeras:" + str(patient_id)).encode()).hexdigest()[:16]
