"""Data: readers (files -> pixels / HU), windows, sources -> `Dataset`s, splits, stores and tf.data pipelines.

Layout, bottom to top: `types` (Split, Dataset), `windows`, `readers/` (the only code that decodes files or
bytes), `resize`, `augment` / `affine`, `splits`, `store` (reading a prepared store), `sources`, `prepare` (writing
a store), `pipeline` (tf.data). Names load lazily, so `import medkeras` does not import TensorFlow.
"""

from medkeras.utils import lazy_getattr

_LAZY = {
    "Dataset": "medkeras.data.types",
    "Split": "medkeras.data.types",
    "LUNG_WINDOW": "medkeras.data.windows",
    "WINDOW_PRESETS": "medkeras.data.windows",
    "parse_windows": "medkeras.data.windows",
    "window_hu": "medkeras.data.windows",
    "read_dicom_hu": "medkeras.data.readers",
    "read_image": "medkeras.data.readers",
    "load_dataset": "medkeras.data.sources",
    "make_tf_dataset": "medkeras.data.pipeline",
    "split_arrays": "medkeras.data.pipeline",
}

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
