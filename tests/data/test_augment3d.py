"""Volume augmentation (`data/augment3d.py`) on a real CT study: one draw per study moves and shades every slice
alike, seeded, training only; slice-only keys refused."""

import numpy as np
import pytest
from conftest import LUNG

from medkeras.config import AugmentConfig
from medkeras.data.augment3d import build_volume_augmenter
from medkeras.errors import ConfigError


@pytest.fixture(scope="module")
def study():
    """The real block 1-13 / 1-14 as one study, lung window, (8, 32, 32, 1); two copies in a batch."""
    from medkeras.data.studies import study_volume

    volume = study_volume([LUNG / "1-13.dcm", LUNG / "1-14.dcm"], [[-600.0, 1500.0]], size=(8, 32, 32))
    return np.stack([volume, volume]).astype("float32")


def test_one_geometric_draw_moves_every_slice_of_a_study_alike(study):
    aug = AugmentConfig(flip="horizontal_and_vertical", rotation=0.1, zoom=0.1, translation=0.1, brightness=0.0,
                        contrast=0.0)
    repeated = np.repeat(study[:, 3:4], 8, axis=1)  # one real slice eight times: any per-slice draw would show
    out = np.asarray(build_volume_augmenter(aug, seed=1)(repeated, training=True))
    assert out.shape == repeated.shape
    np.testing.assert_allclose(out, np.repeat(out[:, :1], 8, axis=1), atol=1e-4)  # all slices moved alike
    assert np.abs(out - repeated).max() > 10  # and moved
    assert np.abs(out[0] - out[1]).max() > 10  # each study its own draw
    again = np.asarray(build_volume_augmenter(aug, seed=1)(repeated, training=True))
    np.testing.assert_array_equal(out, again)  # seeded
    np.testing.assert_array_equal(np.asarray(build_volume_augmenter(aug, seed=1)(study, training=False)), study)


def test_brightness_shifts_a_whole_study_by_one_amount(study):
    aug = AugmentConfig(flip="none", rotation=0.0, brightness=0.2, contrast=0.0)
    out = np.asarray(build_volume_augmenter(aug, seed=2)(study, training=True))
    for k in range(2):
        inside = (out[k] > 0) & (out[k] < 255) & (study[k] > 0) & (study[k] < 255)  # not clipped
        delta = (out[k] - study[k])[inside]
        assert delta.std() < 1e-3 and abs(delta.mean()) > 0.1


def test_slice_only_keys_are_refused_and_nothing_on_is_none():
    with pytest.raises(ConfigError, match="data.augment.clahe applies to slices only"):
        build_volume_augmenter(AugmentConfig(clahe=0.5), seed=0)
    assert build_volume_augmenter(AugmentConfig(flip="none", rotation=0.0, brightness=0.0, contrast=0.0), 0) is None


def test_the_study_front_augments_as_the_pipeline_does(study):
    """`data.augment_on: model` for studies: the block at the front of the fitted model gives what the tf.data
    pipeline gives a batch of real CT studies, draw for draw (same seed; the pipeline resamples with OpenCV, the front
    with TF's kernel), then the window repeated to 3; outside training only the repeat."""
    from medkeras.config import DataConfig
    from medkeras.data.augment3d import study_training_front
    from medkeras.data.pipeline import make_tf_dataset

    aug = AugmentConfig(flip="horizontal", rotation=0.1, zoom=0.1, translation=0.05, brightness=0.2, contrast=0.2,
                        noise=3.0)
    cfg = DataConfig(source="x", window=[[-600.0, 1500.0]], image_size=32, volume_size=[8, 32, 32], augment=aug)
    volumes, labels = np.concatenate([study, study[:, ::-1]]), np.asarray([1, 1, 0, 0])
    piped = next(iter(make_tf_dataset(volumes, labels, cfg, 4, training=True, seed=3)))[0].numpy()
    raw = next(iter(make_tf_dataset(volumes, labels, cfg, 4, training=True, seed=3, front=True)))[0]
    assert raw.shape == (4, 8, 32, 32, 1)  # as read: the front does the rest
    front = study_training_front(aug, 3)
    got = front(raw, training=True).numpy()
    assert got.shape == piped.shape == (4, 8, 32, 32, 3)
    np.testing.assert_allclose(got, piped, atol=0.05)  # OpenCV's resampling against TF's: interpolation error
    assert np.abs(got - np.repeat(raw.numpy(), 3, axis=-1)).max() > 10  # and it did augment
    np.testing.assert_array_equal(front(raw, training=False).numpy(), np.repeat(raw.numpy(), 3, axis=-1))
