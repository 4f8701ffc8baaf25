"""Data: DICOM to HU, windows, sources (bundled, npz, folders, CSV manifests), splits and tf.data pipelines."""

from medkeras.data.dicom import read_dicom_hu
from medkeras.data.pipeline import make_tf_dataset, split_arrays
from medkeras.data.sources import Dataset, Split, load_dataset, read_image
from medkeras.data.windows import LUNG_WINDOW, WINDOW_PRESETS, parse_windows, window_hu

__all__ = [
    "LUNG_WINDOW",
    "WINDOW_PRESETS",
    "Dataset",
    "Split",
    "load_dataset",
    "make_tf_dataset",
    "parse_windows",
    "read_dicom_hu",
    "read_image",
    "split_arrays",
    "window_hu",
]
