"""Augmentation: every layer seeded and training-only; the fused affine transform's geometry exact; the same draws
in the model's front (`data.augment_on: model`) as in the pipeline."""


import numpy as np
from conftest import FIXTURES

from medkeras.config import DataConfig
from medkeras.data.pipeline import make_tf_dataset


def test_every_augmentation_is_seeded_and_training_only(breast):
    from medkeras.config import AugmentConfig

    split = breast.splits["val"]
    aug = AugmentConfig(noise=5.0, blur=0.5, clahe=0.5, randaugment=2, erasing=0.5, zoom=0.1, translation=0.1)
    cfg = DataConfig(source="breastmnist", image_size=32, augment=aug)

    def first(training, seed=1):
        ds = make_tf_dataset(split.images, split.labels, cfg, 78, training=training, seed=seed)
        return next(iter(ds))[0].numpy()

    a, b = first(True), first(True)
    np.testing.assert_array_equal(a, b)  # same seed, same augmented batch
    assert a.min() >= 0.0 and a.max() <= 255.0
    assert not np.array_equal(a, first(True, seed=2))
    plain = first(False)
    import tensorflow as tf

    expected = tf.image.resize(split.images[..., None].astype("float32"), (32, 32), antialias=True).numpy()
    np.testing.assert_allclose(plain[..., :1], expected, atol=1e-4)  # evaluation sees the images untouched


def test_random_affine_geometry_is_exact(breast):
    """The fused flip/rotation/zoom/translation: each piece alone moves real pixels exactly where it should."""
    from keras import ops

    from medkeras.data.affine import RandomAffine, compose

    x = breast.splits["train"].images[:2, :27, :27, None].astype("float32")  # odd side: the centre is a pixel

    def apply(angle=0.0, scale=1.0, tx=0.0, ty=0.0, fx=False, fy=False):
        t = compose(ops.full((2,), angle), ops.full((2,), scale), ops.full((2,), tx), ops.full((2,), ty),
                    ops.full((2,), fx), ops.full((2,), fy), 27.0, 27.0)
        return ops.convert_to_numpy(ops.image.affine_transform(x, t, fill_mode="constant"))

    np.testing.assert_allclose(apply(), x, atol=1e-4)
    np.testing.assert_allclose(apply(fx=True), x[:, :, ::-1], atol=1e-4)
    np.testing.assert_allclose(apply(fy=True), x[:, ::-1], atol=1e-4)
    np.testing.assert_allclose(apply(angle=np.pi / 2), np.rot90(x, 1, axes=(1, 2)), atol=1e-3)
    shifted = apply(tx=3.0)  # content moves 3 px right, black enters on the left
    np.testing.assert_allclose(shifted[:, :, 3:], x[:, :, :-3], atol=1e-4)
    assert (shifted[:, :, :3] == 0).all()
    zoomed_out = apply(scale=2.0)  # every other input pixel, around the centre
    np.testing.assert_allclose(zoomed_out[:, 7:20, 7:20], x[:, 1:27:2, 1:27:2], atol=1e-4)
    layer = RandomAffine("horizontal", 0.05, 0.1, 0.05, seed=3)
    assert np.array_equal(ops.convert_to_numpy(layer(x, training=False)), x)
    a, b = (ops.convert_to_numpy(RandomAffine("horizontal", 0.05, 0.1, 0.05, seed=3)(x)) for _ in range(2))
    np.testing.assert_array_equal(a, b)  # seeded
    assert not np.allclose(a, x)


def test_the_training_front_augments_as_the_pipeline_does(breast):
    """`data.augment_on: model`: the block at the front of the fitted model gives what the tf.data pipeline gives,
    draw for draw (same seed), on real ultrasound and chest X-ray: grey images augmented on their one channel, then
    repeated to 3; outside training it only repeats the channel. `auto` is the pipeline where no GPU is seen."""
    from medkeras.config import AugmentConfig
    from medkeras.data.augment import augment_where, training_front
    from medkeras.data.sources import load_dataset

    chest = load_dataset(DataConfig(source=str(FIXTURES / "pneumoniamnist" / "pneumoniamnist.npz")))
    every = AugmentConfig(flip="horizontal_and_vertical", rotation=0.1, zoom=0.1, translation=0.1, brightness=0.2,
                          contrast=0.2, noise=5.0, blur=0.5, clahe=0.5, erasing=0.5)
    for data, aug in ((breast, every), (chest, every), (breast, AugmentConfig(randaugment=2))):
        split = data.splits["val"]
        cfg = DataConfig(source="breastmnist", image_size=32, augment=aug)
        piped = next(iter(make_tf_dataset(split.images, split.labels, cfg, 16, training=True, seed=3)))[0].numpy()
        raw = next(iter(make_tf_dataset(split.images, split.labels, cfg, 16, training=True, seed=3, front=True)))[0]
        assert raw.shape == (16, 32, 32, 1)  # as read: the front does the rest
        front = training_front(aug, 3)
        np.testing.assert_allclose(front(raw, training=True).numpy(), piped, atol=1e-3)  # graph vs eager rounding
        np.testing.assert_array_equal(front(raw, training=False).numpy(), np.repeat(raw.numpy(), 3, axis=-1))
    assert augment_where("auto") == "data" and augment_where("model") == "model"  # no GPU on this machine
