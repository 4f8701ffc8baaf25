"""Each backbone's own input normalization as a Keras layer, so it lives inside the model graph.

Clients (and TF Serving requests) send pixels in [0, 255]; the model does the rest, exactly as in training.
"""

from __future__ import annotations

import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MODES = ("none", "tf", "torch", "caffe", "unit", "dataset")


@keras.saving.register_keras_serializable(package="medkeras")
class ImagePreprocessing(keras.layers.Layer):
    """Pixels [0, 255] -> what a backbone was trained on.

    Modes follow `keras.applications.imagenet_utils.preprocess_input`: `tf` scales to [-1, 1]; `torch` to [0, 1]
    then ImageNet mean/std; `caffe` flips RGB to BGR and subtracts the ImageNet BGR mean; `unit` scales to [0, 1];
    `none` passes through (EfficientNet, ConvNeXt and MobileNetV3 normalize inside their own graph);
    `dataset` is `torch` with the training set's own per-channel mean and std (of pixels / 255).
    """

    def __init__(self, mode: str = "tf", mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown preprocessing mode '{mode}' (one of {MODES})")
        if mode == "dataset" and (mean is None or std is None):
            raise ValueError("preprocessing mode 'dataset' needs mean and std")
        self.mode = mode
        self.mean = [float(v) for v in mean] if mean is not None else None
        self.std = [float(v) for v in std] if std is not None else None

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        if self.mode in ("torch", "dataset"):
            mean = ops.convert_to_tensor(self.mean or IMAGENET_MEAN, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(self.std or IMAGENET_STD, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
            return ops.flip(x, axis=-1) - mean
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "mean": self.mean, "std": self.std}
