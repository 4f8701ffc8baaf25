"""Readers: the only code that turns a file or encoded bytes into float32 pixels or Hounsfield units.

Fit (in memory and tf.data), eval, predict, gradcam, `prepare` and the SavedModel's signatures all read through
here: `read_image` / `read_raw` in Python (Pillow, pydicom, numpy: a listed plain DICOM's pixels straight from its
bytes), and the graph twin `decode_encoded` (PNG and JPEG bytes), which tests hold equal to the Python readers.
"""

from medkeras.data.readers.dicom import read_dicom_display, read_dicom_hu, split_frame
from medkeras.data.readers.dicom_tags import (
    SliceInfo,
    dicom_items,
    patient_key,
    read_dicom_frames,
    series_in_z_order,
)
from medkeras.data.readers.files import (
    ARRAY_SUFFIXES,
    DICOM_SUFFIXES,
    PICTURE_SUFFIXES,
    READABLE_SUFFIXES,
    collect_inputs,
    common_folder,
    is_dicom,
    named_inputs,
    read_image,
    read_raw,
)
from medkeras.data.readers.graph import decode_encoded
from medkeras.data.readers.pixels import (
    hu_to_pixels,
    minmax_pixels,
    scale_uint16,
    to_pixels,
)
from medkeras.data.readers.volume import Volume, is_volume_file, read_nifti, read_volume

__all__ = [
    "ARRAY_SUFFIXES",
    "DICOM_SUFFIXES",
    "PICTURE_SUFFIXES",
    "READABLE_SUFFIXES",
    "collect_inputs",
    "common_folder",
    "decode_encoded",
    "SliceInfo",
    "dicom_items",
    "hu_to_pixels",
    "is_dicom",
    "minmax_pixels",
    "named_inputs",
    "patient_key",
    "read_dicom_display",
    "read_dicom_frames",
    "read_dicom_hu",
    "read_image",
    "read_raw",
    "scale_uint16",
    "series_in_z_order",
    "split_frame",
    "to_pixels",
    "Volume",
    "is_volume_file",
    "read_nifti",
    "read_volume",
]
