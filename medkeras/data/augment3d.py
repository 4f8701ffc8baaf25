"""Training augmentation for volumes (B, D, H, W, C): the slice augmentation's own layers, one draw per study.

A study's slices are laid side by side as the channels of one image (B, H, W, D x C), so `RandomAffine` (flip,
rotation, zoom and translation in the axial plane, one resampling) moves every slice of a study by the same
transform, and brightness, contrast and noise apply as they do to slices; then the volume is put back. The keys
are `data.augment`'s, meaning what they mean for slices; those that make no sense across a study's slices (CLAHE,
blur, erasing and RandAugment work slice by slice on colour images) are refused by `check_volume_augment`.
Seeded; training only; pixels stay float32 under a mixed policy.
"""

from __future__ import annotations

from medkeras.errors import ConfigError

SLICE_ONLY = ("clahe", "blur", "erasing", "randaugment")


def check_volume_augment(aug_cfg) -> None:
    """Refuse the `data.augment` keys that apply to slices only, in one line naming them."""
    on = [key for key in SLICE_ONLY if getattr(aug_cfg, key) > 0]
    if on:
        raise ConfigError(f"data.augment.{on[0]} applies to slices only; set it to 0 for study models "
                          f"({', '.join(f'data.augment.{k}' for k in SLICE_ONLY)} work slice by slice)")


def build_volume_augmenter(aug_cfg, seed: int, kernel: str = "tf"):
    """A Keras layer augmenting (B, D, H, W, C) volumes in [0, 255], or None when every factor is off; `kernel` as
    in `build_augmenter` (OpenCV resamples a study's slices a few channels at a time: `cpu_kernels._planes`)."""
    import keras

    from medkeras.data.augment import build_augmenter

    check_volume_augment(aug_cfg)
    planar = build_augmenter(aug_cfg, seed, kernel)
    if planar is None:
        return None

    class VolumeAugment(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.planar = planar

        def call(self, x, training=True):
            if not training:
                return x
            from keras import ops

            shape = ops.shape(x)
            d, h, w, c = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
            side = ops.reshape(ops.transpose(x, (0, 2, 3, 1, 4)), (shape[0], h, w, d * c))  # slices as channels
            out = ops.clip(self.planar(side, training=True), 0.0, 255.0)
            return ops.transpose(ops.reshape(out, (shape[0], h, w, d, c)), (0, 3, 1, 2, 4))

        def compute_output_shape(self, input_shape):
            return input_shape

    return VolumeAugment(name="volume_augment")


def study_training_front(aug_cfg, seed: int, size_var=None):
    """`data.augment_on: model` for studies: `build_volume_augmenter`'s layer (TF's kernels: the model's device) at
    the front of the fitted model, then (progressive resizing) the resize in plane to `size_var`, then the channels
    repeated to 3, as `pipeline.study_batches` does in tf.data."""
    from medkeras.data.augment import front_layer

    augmenter = build_volume_augmenter(aug_cfg, seed)
    return front_layer(None if augmenter is None else lambda x: augmenter(x, training=True), augmenter, size_var)
