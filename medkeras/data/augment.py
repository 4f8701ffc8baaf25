"""Training-split augmentation as one Keras Sequential: Keras' own layers, with flip, rotation, zoom and
translation fused into one `RandomAffine` resampling. Seeded; applied to batches, never at evaluation.

Where it runs (`data.augment_on`, decided in `augment_where`): in the tf.data pipeline (`pipeline.augment_batches`)
or, as `TrainingFront`, at the front of the model being fitted, so an accelerator does it (the saved model is the
one behind the front: nothing of it is evaluated, saved or exported).
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


def _cpu_clahe(clip_limit: float):
    """Keras' CLAHE layer as `cpu_kernels.clahe` computes it, for augmentation in tf.data on the CPU."""
    import keras
    import tensorflow as tf

    from medkeras.data.cpu_kernels import clahe

    class CpuClahe(keras.layers.Layer):
        def call(self, x):
            out = tf.numpy_function(lambda v: clahe(v, clip_limit), [tf.cast(x, tf.float32)], tf.float32,
                                    stateful=False)
            return tf.ensure_shape(out, x.shape)

    return CpuClahe(dtype="float32", name="clahe")


def _cpu_blur():
    """Keras' RandomGaussianBlur, its draws its own, the blur applied by `cpu_kernels.gaussian_blur` (OpenCV)."""
    import keras
    import tensorflow as tf

    from medkeras.data.cpu_kernels import gaussian_blur

    class CpuGaussianBlur(keras.layers.RandomGaussianBlur):
        def transform_images(self, images, transformation=None, training=True):
            images = tf.cast(images, self.compute_dtype)
            if not training or transformation is None:
                return images
            out = tf.numpy_function(lambda x, s, pick: gaussian_blur(x, s, pick, self.kernel_size),
                                    [images, transformation["blur_factor"], transformation["should_apply_blur"]],
                                    tf.float32, stateful=False)
            return tf.clip_by_value(tf.ensure_shape(out, images.shape), *self.value_range)

    return CpuGaussianBlur


def build_augmenter(aug_cfg, seed: int, kernel: str = "tf"):
    """A Keras Sequential of the configured augmentation layers (None when every factor is off).

    Keras core layers (keras-cv is frozen upstream), except flip/rotation/zoom/translation, fused into one
    `RandomAffine` (same factors, one resampling pass); CLAHE is applied to a random share of images. `kernel`
    ("tf" or "opencv", `cpu_kernels.py`) is what resamples the drawn transforms (the draws are the same either way)
    and computes CLAHE (numpy on the CPU) and the blur (OpenCV): the same values.
    """
    import keras

    from medkeras.data.affine import RandomAffine

    f32 = {"dtype": "float32"}  # pixels stay float32 under a mixed policy (float16 rounds 255 to steps of 0.125)
    layers = []
    if aug_cfg.clahe > 0:
        if kernel == "tf":
            clahe = keras.layers.ContrastLimitedAdaptiveHistogramEqualization(
                value_range=(0, 255), clip_limit=aug_cfg.clahe_clip_limit, name="clahe", **f32
            )
        else:  # the same algorithm in numpy, ~4-5x the layer on this CPU (`cpu_kernels.clahe`)
            clahe = _cpu_clahe(aug_cfg.clahe_clip_limit)
        layers.append(_sometimes(clahe, aug_cfg.clahe, seed + 6))
    if aug_cfg.flip != "none" or aug_cfg.rotation > 0 or aug_cfg.zoom > 0 or aug_cfg.translation > 0:
        # One resampling for all four (Keras' four layers resampled four times: 3.6x slower at 224 px)
        layers.append(RandomAffine(aug_cfg.flip, aug_cfg.rotation, aug_cfg.zoom, aug_cfg.translation,
                                   fill_mode=aug_cfg.fill_mode, seed=seed, kernel=kernel,
                                   name="flip_rotate_zoom_translate", **f32))
    if aug_cfg.brightness > 0:
        layers.append(keras.layers.RandomBrightness(aug_cfg.brightness, value_range=(0, 255), seed=seed + 4, **f32))
    if aug_cfg.contrast > 0:
        layers.append(keras.layers.RandomContrast(aug_cfg.contrast, value_range=(0, 255), seed=seed + 5, **f32))
    if aug_cfg.randaugment > 0:
        layers.append(keras.layers.RandAugment((0, 255), aug_cfg.randaugment, aug_cfg.randaugment_factor, seed=seed + 7,
                                               **f32))
    if aug_cfg.blur > 0:
        blur = keras.layers.RandomGaussianBlur if kernel == "tf" else _cpu_blur()  # the same draws either way
        layers.append(blur(aug_cfg.blur, 3, aug_cfg.blur_sigma, (0, 255), seed=seed + 8, **f32))
    if aug_cfg.erasing > 0:
        layers.append(keras.layers.RandomErasing(aug_cfg.erasing, value_range=(0, 255), seed=seed + 9, **f32))
    if aug_cfg.noise > 0:
        # Keras' GaussianNoise takes a standard deviation in [0, 1]: apply it on pixels / 255
        layers += [keras.layers.Rescaling(1 / 255.0, **f32), keras.layers.GaussianNoise(aug_cfg.noise / 255.0, seed=seed + 10,
                                                                                        **f32),
                   keras.layers.Rescaling(255.0, **f32)]
    return keras.Sequential(layers, name="augment") if layers else None


def augment_pixels(augmenter, aug_cfg, x):
    """One training batch through `build_augmenter`'s layers, clipped to [0, 255]: the pipeline's and the front's
    one sequence (RandAugment's colour operations need RGB, so grey is repeated to 3 channels first for it)."""
    import tensorflow as tf

    from medkeras.data.resize import to_model_channels

    if aug_cfg.randaugment > 0:
        x = to_model_channels(x)
    return tf.clip_by_value(augmenter(x, training=True), 0.0, 255.0)


def augment_where(setting: str) -> str:
    """"data" or "model" for `data.augment_on` ("auto": the model where TensorFlow sees a GPU, else the data)."""
    if setting != "auto":
        return setting
    import tensorflow as tf

    return "model" if tf.config.list_physical_devices("GPU") else "data"


def training_front(aug_cfg, seed: int, size_var=None):
    """The augmentation (then, under progressive resizing, the resize to `size_var`) as one Keras layer for the front
    of the fitted model: what `pipeline.augment_batches` does to a training batch (grey images augmented on their one
    channel, then repeated to 3), on the device that trains. Outside training it only repeats the channel.

    The pipeline then feeds batches as read (`front=True`): `data.image_size`, the data's own channels.
    """
    augmenter = build_augmenter(aug_cfg, seed)
    return front_layer(None if augmenter is None else lambda x: augment_pixels(augmenter, aug_cfg, x), augmenter,
                       size_var)


def front_layer(augment, layers, size_var=None):
    """The layer at the front of a fitted model: in training `augment(x)` (None: nothing), then the resize to
    `size_var` (progressive resizing), then grey repeated to 3 channels; outside training the channels alone.
    `layers`: the Keras layers `augment` calls (tracked here, so their seed state lives with the model). Slices
    (B, H, W, C) and studies (B, D, H, W, C) alike."""
    import keras

    from medkeras.data.resize import resize_to, to_model_channels

    class TrainingFront(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.augmenter = layers

        def call(self, x, training=False):
            if training and augment is not None:
                x = augment(x)
            if training and size_var is not None:
                x = resize_to(x, size_var)
            return to_model_channels(x)

        def compute_output_shape(self, input_shape):
            side = (None, None) if size_var is not None else tuple(input_shape[-3:-1])
            return (*input_shape[:-3], *side, 3)

    return TrainingFront(name="training_front")
