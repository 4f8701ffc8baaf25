"""Files -> float32 pixels or Hounsfield units in Python: PNG/JPEG/TIFF (Pillow), DICOM (pydicom), NPY (numpy).

`read_image` is what fit, eval, predict and gradcam see; `read_raw` is what `prepare` stores (HU before windowing).
PNG and JPEG have a graph twin (`graph.decode_encoded`, used by the SavedModel's `serve_encoded`), tested equal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medkeras.data.readers.dicom import read_dicom_display, read_dicom_hu, split_frame
from medkeras.data.readers.dicom_layout import plain_hu
from medkeras.data.readers.pixels import hu_to_pixels, to_pixels
from medkeras.errors import DataError, raise_if_resource

PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
ARRAY_SUFFIXES = {".npy"}
READABLE_SUFFIXES = PICTURE_SUFFIXES | DICOM_SUFFIXES | ARRAY_SUFFIXES


def is_dicom(path) -> bool:
    """A DICOM file by its name, or a frame of one (`scan.dcm#3`)."""
    return split_frame(path)[0].suffix.lower() in DICOM_SUFFIXES


def _read_picture(path: Path) -> np.ndarray:
    """Pillow's decoding, which the graph twin reproduces: grey stays one channel, colour is RGB (alpha dropped,
    palettes expanded), 16-bit grey is scaled to [0, 255], 16-bit colour is Pillow's 8-bit reduction."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return to_pixels(np.asarray(img, dtype=np.uint16))
            if img.mode in ("I", "F"):
                return to_pixels(np.asarray(img))
            if img.mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
                img = img.convert("RGB" if img.mode not in ("LA", "1") else "L")
            return np.asarray(img, dtype=np.float32)
    except UnidentifiedImageError as exc:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError, MemoryError) as exc:
        raise_if_resource(exc, path)
        raise DataError(path, f"cannot decode image: {str(exc).splitlines()[0]}") from exc


def _read_array(path: Path, hu: bool) -> tuple[np.ndarray, bool]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, MemoryError) as exc:
        raise_if_resource(exc, path)
        raise DataError(path, f"not a readable .npy array: {str(exc).splitlines()[0]}") from exc
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
        raise DataError(path, f"expected an (H, W) or (H, W, 1|3) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise DataError(path, "array is not numeric or contains NaN / infinite values")
    if hu and array.ndim == 2:  # a 2-D array with a window configured is taken as HU
        return array.astype(np.float32), True
    return to_pixels(array), False


def read_raw(path, hu: bool = False) -> tuple[np.ndarray, bool]:
    """Read a PNG/JPEG/DICOM/NPY file as float32 (H, W, C) before windowing -> (array, is_hu).

    With `hu` (a window is configured), DICOM is returned in Hounsfield units and a 2-D NPY as given (HU), for
    `hu_to_pixels`; otherwise DICOM is shown through its VOI LUT and every array is scaled to pixels [0, 255].
    `medkeras prepare` stores this array, so windows can still change after the data is prepared.
    """
    name = path
    path = Path(path)
    if is_dicom(name):  # a file, or a frame of a multi-frame file (`scan.dcm#3`): the DICOM reader names the cause
        path = name
    elif not path.is_file():
        raise DataError(path, "file not found")
    elif path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    file, frame = split_frame(path)
    suffix = file.suffix.lower()
    is_hu = False
    if suffix in DICOM_SUFFIXES:
        if hu:  # a listed plain file by numpy from its noted layout (no second parse), else pydicom
            image = plain_hu(path) if frame is None else None
            image, is_hu = (image if image is not None else read_dicom_hu(path)), True
        else:
            image = to_pixels(read_dicom_display(path))
    elif suffix in ARRAY_SUFFIXES:
        image, is_hu = _read_array(path, hu)
    elif suffix in PICTURE_SUFFIXES:
        image = _read_picture(path)
    else:
        raise DataError(path, f"unsupported file type '{suffix or '(none)'}' (PNG, JPEG, DICOM or NPY)")
    if image.ndim == 2:
        image = image[..., None]
    if min(image.shape[:2]) < 1:
        raise DataError(path, f"image has no pixels (shape {image.shape})")
    return np.asarray(image, dtype=np.float32), is_hu


def read_image(path, windows=()) -> np.ndarray:
    """Read a PNG/JPEG/DICOM/NPY file as float32 (H, W, C) pixels in [0, 255], C = 1, 3 or len(windows).

    `windows`: `data.window` as the config resolves it ([[level, width], ...]). DICOM (and a 2-D NPY, taken as
    HU) goes through them when any are configured; otherwise it is scaled.
    """
    image, is_hu = read_raw(path, hu=bool(windows))
    if is_hu:
        image = hu_to_pixels(image[..., 0], windows)
    return image


def common_folder(paths) -> str | None:
    """The deepest folder holding every file of `paths` (a frame `FILE#N` by its file): what names are relative
    to when files lie in several folders, so that two series' `1-01.dcm` keep two names (TCIA's layout)."""
    import os

    parents = [os.path.dirname(str(split_frame(p)[0])) for p in paths]
    return os.path.commonpath(parents) if parents else None


def named_inputs(inputs, key_file=None) -> list[tuple]:
    """(path, name, SliceInfo or None) of every image in `inputs`: files as given, folders searched recursively for PNG, JPEG, DICOM
    and NPY files (sorted; each folder's DICOM slices along the slice normal), a multi-frame DICOM file as its
    frames (`FILE#N`, in z order). Names are what outputs show: relative to a folder given, a file as typed (files
    typed as absolute paths relative to the folder they share, so `/a/s2/1-01.dcm` and `/a/s3/1-01.dcm` are
    `s2/1-01.dcm` and `s3/1-01.dcm`; with several inputs and a folder among them, everything relative to the folder
    all inputs share); never an absolute path; a part named by the PatientID shown by its key. DICOM images come
    with their keyed patient and series (`dicom_tags.SliceInfo`)."""
    import os

    from medkeras.data.keys import masked_name
    from medkeras.data.readers.dicom_tags import series_in_z_order
    from medkeras.data.readers.listing import list_dicom

    typed = [Path(item) for item in inputs if Path(item).is_absolute() and not Path(item).is_dir()]
    shared = common_folder(typed) if typed else None
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES)
            if not found:
                raise DataError(path, "folder holds no PNG, JPEG, DICOM or NPY files")
            by_dir: dict = {}
            for f in found:
                by_dir.setdefault(f.parent, []).append(f)
            for items in by_dir.values():
                dicom = [f for f in items if is_dicom(f)]
                try:
                    dicom = series_in_z_order(dicom)
                except DataError:
                    pass  # an unreadable slice is reported when it is read, in order of the file names
                files += [(f, str(f.relative_to(path))) for f in [f for f in items if not is_dicom(f)] + dicom]
        elif path.exists() or is_dicom(item):
            files.append((item, os.path.relpath(path, shared) if path.is_absolute() else str(item)))
        else:
            raise DataError(path, "file not found")
    if len(inputs) > 1 and any(Path(item).is_dir() for item in inputs):
        # several inputs, a folder among them (two series folders of TCIA's, each with its 1-01.dcm): every name
        # relative to the folder they all share, so no two inputs' files can share one
        base = os.path.commonpath([str(Path(item).resolve() if Path(item).is_dir() else Path(item).resolve().parent)
                                   for item in inputs])
        files = [(f, os.path.relpath(Path(f).resolve(), base)) for f, _ in files]
    at = [i for i, (f, _) in enumerate(files) if is_dicom(f)]
    read = [None] * len(files)  # None: not DICOM, or unreadable (reported when it is read)
    for i, items in zip(at, list_dicom([files[i][0] for i in at], key_file)):
        read[i] = items
    # a folder named by the PatientID is shown by its key in every name under it, an unreadable file's as well
    masks = tuple({m for frames in read if frames for m in frames[0].masks})
    out = []
    for (f, name), frames in zip(files, read):  # frames of multi-frame files, each an input of its own
        shown = masked_name(name, masks)
        if frames is None or len(frames) == 1:
            out.append((f, shown, frames[0] if frames else None))
        else:
            out += [(frame.name, shown + frame.name[len(str(f)):], frame) for frame in frames]
    return out


def collect_inputs(inputs) -> list:
    """The paths of `named_inputs`."""
    return [path for path, _, _ in named_inputs(inputs)]
