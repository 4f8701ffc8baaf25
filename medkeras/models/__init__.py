"""Models: the backbone registry, class heads, the functional ensemble, and saving with medkeras metadata.

Names load lazily: reading the registry (config checks, `medkeras backbones`) does not import TensorFlow.
"""

import importlib

from medkeras.utils import lazy_getattr

_LAZY = {
    "REGISTRY": "medkeras.models.backbones",
    "BackboneSpec": "medkeras.models.backbones",
    "build_backbone": "medkeras.models.backbones",
    "get_backbone_spec": "medkeras.models.backbones",
    "build_ensemble": "medkeras.models.ensemble",
    "build_head": "medkeras.models.ensemble",
    "build_member": "medkeras.models.ensemble",
    "build_model": "medkeras.models.ensemble",
    "members_of": "medkeras.models.ensemble",
    "WeightedAverage": "medkeras.models.ensemble",
    "LoadedModel": "medkeras.models.io",
    "load_model": "medkeras.models.io",
    "open_model": "medkeras.models.io",
    "save_model": "medkeras.models.io",
    "ImagePreprocessing": "medkeras.models.preprocessing",
}

__getattr__ = lazy_getattr(__name__, _LAZY)


def register_custom_objects():
    """Import the modules that define medkeras' serializable Keras layers (needed before loading a model)."""
    importlib.import_module("medkeras.models.preprocessing")
    importlib.import_module("medkeras.models.ensemble")
    importlib.import_module("medkeras.models.convnextv2")
    importlib.import_module("medkeras.models.vgg")
    importlib.import_module("medkeras.models.study")
    importlib.import_module("medkeras.models.conv3d")


__all__ = sorted(_LAZY)
