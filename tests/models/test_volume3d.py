"""3D backbones (`models/volume3d.py`): each builds on a small volume; 2D weights inflate into them exactly (a volume of
one real CT slice repeated gives the 2D network's features away from its ends); a mismatch is refused by name."""

import numpy as np
import pytest

from medkeras.errors import ConfigError, MedkerasError
from medkeras.models.volume3d import VOLUME_BACKBONES, build_volume_backbone, inflate_weights


def _randomise_batchnorm(model, seed=0):
    """Non-trivial inference statistics, so the test sees BatchNorm copied (fresh BN is the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


@pytest.mark.parametrize("name", list(VOLUME_BACKBONES))
def test_each_3d_backbone_builds_on_a_small_volume_and_pools_features(name):
    model = build_volume_backbone(name, (32, 32, 32))
    features = model(np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 32, 3)).astype("float32"))
    assert features.shape[0] == 2 and features.shape[1] in (512, 1024, 2048)
    assert np.isfinite(np.asarray(features)).all()


def test_inflated_resnet18_on_a_repeated_real_slice_gives_the_2d_features(ct_pixels_64):
    from medkeras.models.resnet import basic_resnet

    net2d = basic_resnet((64, 64, 3), pooling=None)
    _randomise_batchnorm(net2d)
    net3d = basic_resnet((256, 64, 64, 3), pooling=None, dims=3)
    assert inflate_weights(net3d, net2d) == sum(1 for layer in net2d.layers if layer.weights)
    image = np.repeat(ct_pixels_64[None, ..., None], 3, axis=-1) / 255.0  # (1, 64, 64, 3)
    want = np.asarray(net2d(image))[0]  # (2, 2, 512)
    got = np.asarray(net3d(np.repeat(image[:, None], 256, axis=1)))[0]  # (16, 2, 2, 512)
    # depth 256 -> 16 at the last stage; its receptive field spans ~221 slices, so position 8 never sees an end
    np.testing.assert_allclose(got[8], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.abs(got[0] - want).max() > 1e-3 * np.abs(want).max()  # an end does see the zero padding


def test_resnet50_and_densenet121_take_every_weight_of_their_keras_twins():
    import keras

    for name, twin in (("resnet50_3d", keras.applications.ResNet50), ("densenet121_3d", keras.applications.DenseNet121)):
        net2d = twin(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
        net3d = build_volume_backbone(name, (32, 32, 32))
        assert inflate_weights(net3d, net2d) == sum(1 for layer in net2d.layers if layer.weights)
        stem2d, stem3d = net2d.get_layer("conv1_conv").kernel.numpy(), net3d.get_layer("conv1_conv").kernel.numpy()
        np.testing.assert_allclose(stem3d.sum(axis=0), stem2d, rtol=1e-5, atol=1e-7)  # repeated, divided by kt
        keras.backend.clear_session()


def test_weights_from_a_2d_file_inflate_and_mismatches_are_refused_by_name(tmp_path):
    from medkeras.models.resnet import basic_resnet

    net2d = basic_resnet((64, 64, 3), name="resnet18")
    _randomise_batchnorm(net2d, seed=1)
    path = tmp_path / "resnet18.weights.h5"
    net2d.save_weights(path)  # what `medkeras convert-weights` writes for resnet18
    net3d = build_volume_backbone("resnet18_3d", (16, 32, 32), weights=str(path))
    np.testing.assert_allclose(net3d.get_layer("stage4_block2_bn2").get_weights()[2],
                               net2d.get_layer("stage4_block2_bn2").get_weights()[2])
    with pytest.raises(ConfigError, match="weights file not found"):
        build_volume_backbone("resnet18_3d", (16, 32, 32), weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(MedkerasError, match="no 2D layer 'conv1_conv'"):
        inflate_weights(build_volume_backbone("resnet50_3d", (16, 32, 32)), net2d)
    with pytest.raises(ConfigError, match="unknown 3D backbone"):
        build_volume_backbone("resnet19_3d", (16, 32, 32))
    with pytest.raises(ConfigError, match="at least 16 voxels"):
        build_volume_backbone("resnet18_3d", (8, 32, 32))


@pytest.fixture
def ct_pixels_64():
    """A real CT slice (1-13.dcm, lung window) at 64 px."""
    from conftest import ct_pixels

    from medkeras.data.resize import resize_images

    pixels = ct_pixels("1-13.dcm").astype("float32")
    return np.asarray(resize_images(pixels[..., None] if pixels.ndim == 2 else pixels, 64))[..., 0]
