"""medkeras: train, evaluate and export medical-image classifiers with Keras 3 on TensorFlow.

The library is the steps the CLI runs, as plain functions:

    import medkeras
    cfg = medkeras.load_config("demo", ["train.epochs=2"])
    run_dir = medkeras.fit(cfg, out="runs/demo")
    metrics = medkeras.evaluate("runs/demo")
"""

__version__ = "0.1.0"

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from medkeras.config import Config, load_config  # noqa: E402
from medkeras.data.readers.dicom import read_dicom_hu  # noqa: E402
from medkeras.data.windows import window_hu  # noqa: E402
from medkeras.errors import ConfigError, DataError, DicomError, MedkerasError  # noqa: E402
from medkeras.utils import lazy_getattr  # noqa: E402

# Heavy steps (they import TensorFlow) load on first use, so `import medkeras` stays fast.
_LAZY = {
    "load_dataset": "medkeras.data.sources",
    "make_tf_dataset": "medkeras.data.pipeline",
    "build_backbone": "medkeras.models.backbones",
    "build_member": "medkeras.models.ensemble",
    "build_ensemble": "medkeras.models.ensemble",
    "build_model": "medkeras.models.ensemble",
    "load_model": "medkeras.models.io",
    "open_model": "medkeras.models.io",
    "save_model": "medkeras.models.io",
    "fit": "medkeras.train.fit",
    "evaluate": "medkeras.evaluation.evaluate",
    "export_savedmodel": "medkeras.export.savedmodel",
    "predict": "medkeras.export.predict",
    "read_volume": "medkeras.data.readers.volume",
    "resample_volume": "medkeras.data.volumes",
    "load_studies": "medkeras.data.studies",
    "study_arrays": "medkeras.data.studies",
    "study_volume": "medkeras.data.studies",
    "build_volume_member": "medkeras.models.study",
    "build_series_member": "medkeras.models.study",
    "build_slab_member": "medkeras.models.study",
}
__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "DicomError",
    "MedkerasError",
    "__version__",
    "load_config",
    "read_dicom_hu",
    "window_hu",
]
