"""DICOM to Hounsfield units with pydicom: rescale slope/intercept (per frame where the file has functional groups),
MONOCHROME1 inversion, single- and multi-frame files, the fastest installed decoder per transfer syntax, one error.

A frame of a multi-frame file is named `FILE#N` (N its 1-based frame number); `read_dicom_frames` reads them all in
z order (`dicom_tags.read_dicom_frames`). Patient identifiers are never returned here (`dicom_tags.py` keys them).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
import warnings
from pathlib import Path

import numpy as np

from medkeras.errors import DicomError, MedkerasError, ResourceError, raise_if_resource

FRAME_MARK = "#"


def split_frame(path) -> tuple[Path, int | None]:
    """`scan.dcm#3` -> (Path("scan.dcm"), 3); a path without a frame number -> (path, None)."""
    text = str(path)
    base, mark, number = text.rpartition(FRAME_MARK)
    if mark and base and number.isdigit():
        return Path(base), int(number)
    return Path(text), None


def frame_name(path, number: int) -> str:
    return f"{path}{FRAME_MARK}{number}"


def decoder_failure(exc: BaseException) -> bool:
    """Whether `exc` is a library refusing its input: any Exception, and the PanicException (a BaseException) that
    decoders written in Rust raise on malformed data (pylibjpeg-rle on a corrupt RLE segment, found by fuzzing)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def named_errors(read):
    """Whatever else a malformed file makes pydicom or a decoder raise while `read(path, ...)` runs (a header value
    of an unknown VR raises NotImplementedError when first read, found by fuzzing) becomes a `DicomError` naming
    the file; machine limits stay `ResourceError`s."""

    @functools.wraps(read)
    def wrapper(path, *args, **kwargs):
        try:
            return read(path, *args, **kwargs)
        except MedkerasError:  # already one line with its own cause (a patient key file that is missing: no bad DICOM)
            raise
        except BaseException as exc:  # noqa: BLE001
            if not decoder_failure(exc):
                raise
            raise_if_resource(exc, path)
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise DicomError(split_frame(path)[0], f"unreadable DICOM ({type(exc).__name__}: {first})") from exc

    return wrapper


_GC_HOLD = {"holders": 0, "was_enabled": True}  # threads parsing now, and whether the collector ran before them
_GC_LOCK = threading.Lock()


@contextlib.contextmanager
def headers_parsed():
    """Python's cyclic garbage collector held off while many headers are parsed (threads share one hold).

    pydicom makes a few hundred small objects a header, alive until the caller is done with them; collections during
    the parse promote them, and once survivors pass a quarter of the long-lived objects (with TensorFlow and Keras
    loaded: ~400,000) Python scans them all: a 64-slice series read in 0.1 s here took 0.3-0.4 s now and then
    (`bench.volumes`, 2.5-5.0 series/s from run to run). Held off, the headers die young; nothing else changes."""
    with _GC_LOCK:
        if _GC_HOLD["holders"] == 0:
            _GC_HOLD["was_enabled"] = gc.isenabled()
            gc.disable()
        _GC_HOLD["holders"] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_HOLD["holders"] -= 1
            if _GC_HOLD["holders"] == 0 and _GC_HOLD["was_enabled"]:
                gc.enable()


def dcmread(path, stop_before_pixels=False, defer_size=None):
    """pydicom's `dcmread` with every failure as a `DicomError` naming the file (machine limits as `ResourceError`)."""
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
            ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, defer_size=defer_size, force=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for garbage
            raise_if_resource(exc, path)
            raise DicomError(path, f"not a DICOM file ({type(exc).__name__})") from exc
        # forced, anything parses: a text file named .dcm gave "no pixel data in this DICOM file"
        if not any(key in ds for key in ("SOPClassUID", "Modality", "Rows", "PixelData")):
            raise DicomError(path, "not a DICOM file (no DICM preamble, and no image elements where DICOM has them)")
        return ds
    except Exception as exc:  # noqa: BLE001
        raise_if_resource(exc, path)
        raise DicomError(path, f"cannot parse DICOM: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def is_encapsulated(path) -> bool:
    """Whether a DICOM file's pixels are compressed (an encapsulated transfer syntax: JPEG, JPEG-LS, JPEG 2000,
    RLE); False for native files and anything unreadable (its reader names the cause)."""
    try:
        ds = dcmread(split_frame(path)[0], stop_before_pixels=True)
        return bool(ds.file_meta.TransferSyntaxUID.is_encapsulated)
    except Exception:  # noqa: BLE001 - not ours to report here
        return False


@named_errors
def read_dicom_hu(path) -> np.ndarray:
    """Read one DICOM image (or one frame, `FILE#N`) as float32 (H, W).

    CT: Hounsfield units, `pixel * RescaleSlope + RescaleIntercept` (the frame's own, from the per-frame or shared
    functional groups of an enhanced file; slope 1 / intercept 0 with a warning where a CT has none). Other
    modalities: the stored values after any rescale, with MONOCHROME1 inverted so that higher always means brighter.
    Raises `DicomError` (a `ValueError`) naming the file for anything unreadable.
    """
    image, ds = _modality_values(path)
    image = _brighter(image, ds)
    return image


@named_errors
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
    image = _brighter(image, ds)
    return image


# The decoders the reader uses per transfer syntax, in order; measured here (`bench.dicom_syntaxes`: 512 px 12-bit CT,
# one core, images/s): RLE pylibjpeg 657 / pydicom 159; JPEG-LS pyjpegls 191 / pylibjpeg 49; JPEG Lossless (process
# 14, SV1) pylibjpeg 108; JPEG 2000 lossless pylibjpeg 33 / pillow 19; lossy pylibjpeg 142 / pillow 68. GDCM is
# faster on JPEG Lossless (190) and JPEG 2000 lossless (51) but is never used: fuzzing (`bench.fuzz_dicom`) found a
# corrupt JPEG 2000 file that makes it abort the whole process (an uncaught C++ exception), where the others raise.
# Only the plugins listed are tried, so an installed GDCM (the test extra has it) is not reached as a fallback.
_PLUGINS = {
    "1.2.840.10008.1.2.5": ("pylibjpeg", "pydicom"),
    "1.2.840.10008.1.2.4.50": ("pylibjpeg", "pillow"),
    "1.2.840.10008.1.2.4.51": ("pylibjpeg", "pillow"),
    "1.2.840.10008.1.2.4.57": ("pylibjpeg",),
    "1.2.840.10008.1.2.4.70": ("pylibjpeg",),
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "pylibjpeg"),
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "pylibjpeg"),
    "1.2.840.10008.1.2.4.90": ("pylibjpeg", "pillow"),
    "1.2.840.10008.1.2.4.91": ("pylibjpeg", "pillow"),
    "1.2.840.10008.1.2.4.201": ("pylibjpeg",),
    "1.2.840.10008.1.2.4.202": ("pylibjpeg",),
    "1.2.840.10008.1.2.4.203": ("pylibjpeg",),
}


def decode_pixels(ds, index=None, source=None):
    """`ds`'s stored pixel values (frame `index`, 0-based, of a multi-frame file), decoded by the listed plugins
    for its syntax in turn (`_PLUGINS`; pydicom's own choice for the rest). `source`: the file, so that one frame
    is read without loading the others."""
    from pydicom.pixels import get_decoder, pixel_array

    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    src = ds if has_pixels or source is None else str(source)
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in _PLUGINS:
        return pixel_array(src, index=index)
    available = get_decoder(syntax).available_plugins
    plugins = [p for p in _PLUGINS[syntax] if p in available]
    if not plugins:
        raise RuntimeError(f"no decoder installed for it (medkeras reads it with {' or '.join(_PLUGINS[syntax])})")
    for i, plugin in enumerate(plugins):
        try:
            return pixel_array(src, index=index, decoding_plugin=plugin)
        except BaseException as exc:  # noqa: BLE001 - the next listed plugin may read what this one cannot
            if not decoder_failure(exc) or i == len(plugins) - 1:
                raise
            raise_if_resource(exc, getattr(ds, "filename", ""))


def _functional(ds, index, sequence):
    """The item of `sequence` (e.g. PixelValueTransformationSequence) for frame `index`: the per-frame functional
    groups first, then the shared ones; None where neither has it."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and i is not None and i < len(items):
            inner = items[i].get(sequence)
            if inner:
                return inner[0]
    return None


def frame_count(ds, path) -> int:
    """NumberOfFrames (1 where absent), refused where the file cannot hold that many: more frames than bytes, or
    a count the per-frame functional groups contradict (fuzzing found 2**31 - 1 frames in a 7 KB file)."""
    value = getattr(ds, "NumberOfFrames", None)
    if value in (None, ""):
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError) as exc:
        raise DicomError(path, f"NumberOfFrames is not a number ({value!r})") from exc
    if frames < 1 or frames > Path(path).stat().st_size:
        raise DicomError(path, f"NumberOfFrames {frames} is impossible for a file of {Path(path).stat().st_size} bytes")
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    if frames > 1 and groups is not None and len(groups) != frames:
        raise DicomError(path, f"NumberOfFrames {frames} but {len(groups)} per-frame functional groups")
    return frames


def _rescale(ds, index):
    transform = _functional(ds, index, "PixelValueTransformationSequence")
    source = transform if transform is not None else ds
    return getattr(source, "RescaleSlope", None), getattr(source, "RescaleIntercept", None)


def _brighter(image, ds):
    """MONOCHROME1 (low values bright) inverted within its own range, so that higher always means brighter."""
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        return image.max() + image.min() - image
    return image


@named_errors
def dataset_hu(ds, path, number=None) -> np.ndarray:
    """`read_dicom_hu` of a file already read whole (`dcmread(path)`; frame `number`, 1-based, of a multi-frame
    one): the file is not parsed again."""
    image, ds = _values_of(ds, Path(path), number)
    image = _brighter(image, ds)
    return image


def _modality_values(path):
    """(pixel data after the modality rescale as float32, dataset) with every failure as a `DicomError`."""
    path, number = split_frame(path)
    ds = dcmread(path, stop_before_pixels=number is not None)  # a frame: header here, that frame's bytes below
    return _values_of(ds, path, number)


def _values_of(ds, path, number):
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds and number is None:
        raise DicomError(path, "no pixel data in this DICOM file")
    frames = frame_count(ds, path)
    if number is None and frames > 1:
        raise DicomError(path, f"multi-frame DICOM ({frames} frames): read a frame as {path.name}#N (N = 1..{frames}), "
                               "or all of them with read_dicom_frames")
    if number is not None and not 1 <= number <= frames:
        raise DicomError(path, f"frame {number} does not exist (the file has {frames})")
    index = number - 1 if frames > 1 else None
    try:
        pixels = decode_pixels(ds, index, source=path)
    except BaseException as exc:  # noqa: BLE001 - decoder errors come in many types
        if not decoder_failure(exc):
            raise
        raise_if_resource(exc, path)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DicomError(path, f"cannot decode pixel data (transfer syntax {name}): {first}") from exc
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = pixels[..., :3].mean(axis=-1)  # colour (RGB) DICOM: luminance-like mean
    if pixels.ndim != 2:
        raise DicomError(path, f"expected one 2-D image, got pixel data of shape {pixels.shape}")
    image = pixels.astype(np.float32)
    slope, intercept = _rescale(ds, index)
    if slope is None or intercept is None:
        if str(getattr(ds, "Modality", "")) == "CT":
            warnings.warn(f"{path.name}: CT without RescaleSlope/RescaleIntercept; assuming 1 and 0", stacklevel=2)
        slope, intercept = slope or 1.0, intercept or 0.0
    try:
        image = image * np.float32(float(slope)) + np.float32(float(intercept))
    except (TypeError, ValueError) as exc:
        raise DicomError(path, f"unreadable rescale slope/intercept ({slope!r}, {intercept!r})") from exc
    if not np.isfinite(image).all():
        raise DicomError(path, "pixel data contains NaN or infinite values")
    return image, ds
