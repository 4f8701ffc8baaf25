"""OpenCV's resampling for the pipeline's augmentation (`data/cpu_kernels.py`): the same drawn transforms as TF's
kernel, the same pixels to interpolation error on real CT and ultrasound, seeded, and TF's kernel where OpenCV is
absent or cannot match (wrap)."""

import numpy as np
import pytest
from conftest import LUNG, ct_pixels

from medkeras.config import AugmentConfig, DataConfig
from medkeras.data import cpu_kernels
from medkeras.data.pipeline import make_tf_dataset

# OpenCV's bilinear weights are fixed point (1/32 px): a few thousandths of a grey level on 0-255 images
INTERPOLATION = 0.02


def _real_images(breast):
    """Real CT (three slices in three windows, as 3-channel 128 px) and real ultrasound (BreastMNIST, grey 28 px)."""
    import tensorflow as tf

    ct = np.stack([ct_pixels(name) for name in ("1-01.dcm", "1-13.dcm", "1-14.dcm")]).astype("float32")
    ct = tf.image.resize(ct, (128, 128), antialias=True).numpy()
    # two windows: OpenCV's 2-channel float path was off by up to 4 grey levels (planes of 2 are never sent)
    return {"ct": ct, "ct, two windows": np.ascontiguousarray(ct[..., :2]),
            "ultrasound": breast.splits["train"].images[:16, ..., None].astype("float32")}


@pytest.mark.parametrize("fill", ["reflect", "constant", "nearest", "wrap"])
def test_opencv_resamples_what_tf_resamples(breast, fill):
    """One seed, the two kernels: the same transforms (flip, rotation, zoom, translation), the same pixels to
    interpolation error, at every fill mode; wrap stays on TF's kernel (its period is W - 1) and is equal."""
    from keras import ops

    from medkeras.data.affine import RandomAffine

    for kind, x in _real_images(breast).items():
        tf_out, cv_out = (ops.convert_to_numpy(RandomAffine("horizontal", 0.1, 0.1, 0.1, fill_mode=fill, seed=7,
                                                            kernel=k)(x)) for k in ("tf", "opencv"))
        moved = np.abs(tf_out - x).mean()
        assert moved > 5.0, kind  # the transforms really move the images
        gap = np.abs(tf_out - cv_out)
        if fill == "wrap":
            np.testing.assert_array_equal(cv_out, tf_out)
        else:
            assert gap.max() < INTERPOLATION and gap.mean() < 1e-3, (kind, gap.max(), gap.mean())


def test_the_pipeline_augments_on_opencv_seeded_and_as_tf_would(breast, monkeypatch):
    """Training batches through tf.data: OpenCV where installed, the same seed the same batches, and within
    interpolation error of the batches TF's kernel gives (OpenCV absent), every layer of the recipes on."""
    split = breast.splits["val"]
    aug = AugmentConfig(flip="horizontal_and_vertical", rotation=0.05, zoom=0.1, translation=0.08, brightness=0.1,
                        contrast=0.15, noise=3.0)
    cfg = DataConfig(source="breastmnist", image_size=32, augment=aug)

    def epoch(seed=3):
        ds = make_tf_dataset(split.images, split.labels, cfg, 32, training=True, seed=seed)
        return np.concatenate([x.numpy() for x, _ in ds])

    assert cpu_kernels.pipeline_kernel() == "opencv"
    first = epoch()
    np.testing.assert_array_equal(first, epoch())
    assert not np.allclose(first, epoch(seed=4))
    monkeypatch.setattr(cpu_kernels, "opencv", lambda: None)
    assert cpu_kernels.pipeline_kernel() == "tf"
    on_tf = epoch()
    assert first.shape == on_tf.shape == (len(split), 32, 32, 3)
    assert np.abs(first - on_tf).max() < INTERPOLATION


def test_a_study_is_augmented_alike_on_either_kernel():
    """Volumes: slices go to OpenCV 4 channels at a time; a real CT block of slices moves as on TF's kernel, with
    one window (3 slices: one plane of 3) and with two (6 channels: 4 + 1 + 1)."""
    from keras import ops

    from medkeras.data.augment3d import build_volume_augmenter
    from medkeras.data.readers import read_image

    hu = np.stack([read_image(p, [[-600.0, 1500.0]])[..., 0] for p in sorted((LUNG / "3.000000-5mm-41315").glob("*.dcm"))])
    volume = np.repeat(hu[None, :, ::4, ::4, None], 2, axis=0).astype("float32")  # (2, D, 128, 128, 1)
    aug = AugmentConfig(flip="horizontal", rotation=0.03, zoom=0.1, translation=0.05, brightness=0.05, contrast=0.1)
    for x in (volume, np.concatenate([volume, 255.0 - volume], axis=-1)):
        tf_out, cv_out = (ops.convert_to_numpy(build_volume_augmenter(aug, 5, kernel=k)(x)) for k in ("tf", "opencv"))
        assert np.abs(tf_out - x).mean() > 1.0
        assert np.abs(tf_out - cv_out).max() < INTERPOLATION, x.shape


def test_grey_leaves_the_pipeline_repeated_bit_for_bit():
    """`repeat_grey` (OpenCV's merge) gives exactly `np.repeat` for a batch of real CT slices and of studies."""
    slices = np.stack([ct_pixels(name)[..., :1] for name in ("1-01.dcm", "1-13.dcm")]).astype("float32")
    for grey in (slices, np.stack([slices, slices[:, ::-1]])):  # (B, H, W, 1) and (B, D, H, W, 1)
        out = cpu_kernels.repeat_grey(grey)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, np.repeat(grey, 3, axis=-1))


def test_clahe_on_the_cpu_is_keras_layer(breast):
    """`cpu_kernels.clahe` gives what Keras' CLAHE layer gives (the model's front runs the layer) on real CT in
    three windows at 128 px and real ultrasound at 28 px (tiles padded), and the pipeline uses it."""
    import keras

    from medkeras.data.augment import build_augmenter

    for images in _real_images(breast).values():
        for limit in (2.0, 0.0):
            layer = keras.layers.ContrastLimitedAdaptiveHistogramEqualization(value_range=(0, 255), clip_limit=limit)
            np.testing.assert_allclose(cpu_kernels.clahe(images, limit), keras.ops.convert_to_numpy(layer(images)),
                                       atol=1e-3)
    aug = AugmentConfig(flip="none", rotation=0, brightness=0, contrast=0, clahe=1.0)
    images = _real_images(breast)["ultrasound"]
    on = [keras.ops.convert_to_numpy(build_augmenter(aug, 1, kernel=k)(images, training=True)) for k in ("tf", "opencv")]
    assert np.abs(on[0] - images).mean() > 1.0
    np.testing.assert_allclose(on[1], on[0], atol=1e-3)


def test_blur_on_the_cpu_draws_and_blurs_as_keras_layer(breast):
    """The blur layer of the CPU pipeline makes the draws of Keras' RandomGaussianBlur (same seed, same images picked,
    same sigmas) and blurs as its depthwise convolution does, zeros past the border, on real CT and ultrasound."""
    import keras

    from medkeras.data.augment import build_augmenter

    aug = AugmentConfig(flip="none", rotation=0, brightness=0, contrast=0, blur=0.5, blur_sigma=1.0)
    for images in _real_images(breast).values():
        tf_out, cv_out = (keras.ops.convert_to_numpy(build_augmenter(aug, 3, kernel=k)(images, training=True))
                          for k in ("tf", "opencv"))
        changed = np.abs(tf_out - images).reshape(len(images), -1).max(axis=1) > 1.0
        assert 0 < changed.sum() < len(images)  # some images picked, not all
        np.testing.assert_allclose(cv_out, tf_out, atol=1e-3)
