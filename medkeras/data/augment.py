"""Training-split augmentation as one Keras Sequential: Keras' own layers, with flip, rotation, zoom and
translation fused into one `RandomAffine` resampling. Seeded; applied to batches, never at evaluation.
"""

from __future__ import annotations


def _sometimes(layer, probability: float, seed: int):
    """Apply `layer` to each image of a batch with `probability` (for deterministic transforms such as CLAHE)."""
    import keras
    import tensorflow as tf

    class Sometimes(keras.layers.Layer):
        def __init__(self, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(**kwargs)
            self.inner = layer
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=True):
            if not training:
                return x
            pick = keras.random.uniform((tf.shape(x)[0], 1, 1, 1), seed=self.generator) < probability
            return tf.where(pick, tf.cast(self.inner(x), x.dtype), x)

    return Sometimes(name=f"sometimes_{layer.name}")


def build_augmenter(aug_cfg, seed: int):
    """A Keras Sequential of the configured augmentation layers (None when every factor is off).

    Keras core layers (keras-cv is frozen upstream), except flip/rotation/zoom/translation, fused into one
    `RandomAffine` (same factors, one resampling pass); CLAHE is applied to a random share of images.
    """
    import keras

    from medkeras.data.affine import RandomAffine

    f32 = {"dtype": "float32"}  # pixels stay float32 under a mixed policy (float16 rounds 255 to steps of 0.125)
    layers = []
    if aug_cfg.clahe > 0:
        clahe = keras.layers.ContrastLimitedAdaptiveHistogramEqualization(
            value_range=(0, 255), clip_limit=aug_cfg.clahe_clip_limit, name="clahe", **f32
        )
        layers.append(_sometimes(clahe, aug_cfg.clahe, seed + 6))
    if aug_cfg.flip != "none" or aug_cfg.rotation > 0 or aug_cfg.zoom > 0 or aug_cfg.translation > 0:
        # One resampling for all four (Keras' four layers resampled four times: 3.6x slower at 224 px)
        layers.append(RandomAffine(aug_cfg.flip, aug_cfg.rotation, aug_cfg.zoom, aug_cfg.translation,
                                   fill_mode=aug_cfg.fill_mode, seed=seed, name="flip_rotate_zoom_translate", **f32))
    if aug_cfg.brightness > 0:
        layers.append(keras.layers.RandomBrightness(aug_cfg.brightness, value_range=(0, 255), seed=seed + 4, **f32))
    if aug_cfg.contrast > 0:
        layers.append(keras.layers.RandomContrast(aug_cfg.contrast, value_range=(0, 255), seed=seed + 5, **f32))
    if aug_cfg.randaugment > 0:
        layers.append(keras.layers.RandAugment((0, 255), aug_cfg.randaugment, aug_cfg.randaugment_factor, seed=seed + 7,
                                               **f32))
    if aug_cfg.blur > 0:
        layers.append(keras.layers.RandomGaussianBlur(aug_cfg.blur, 3, aug_cfg.blur_sigma, (0, 255), seed=seed + 8, **f32))
    if aug_cfg.erasing > 0:
        layers.append(keras.layers.RandomErasing(aug_cfg.erasing, value_range=(0, 255), seed=seed + 9, **f32))
    if aug_cfg.noise > 0:
        # Keras' GaussianNoise takes a standard deviation in [0, 1]: apply it on pixels / 255
        layers += [keras.layers.Rescaling(1 / 255.0, **f32), keras.layers.GaussianNoise(aug_cfg.noise / 255.0, seed=seed + 10,
                                                                                        **f32),
                   keras.layers.Rescaling(255.0, **f32)]
    return keras.Sequential(layers, name="augment") if layers else None
