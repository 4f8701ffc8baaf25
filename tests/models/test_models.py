"""Registry entries build small and give K logits; the ensemble is exactly the mean of its members' logits."""


import numpy as np
import pytest

from medkeras.errors import ConfigError
from medkeras.models.backbones import REGISTRY, build_backbone
from medkeras.models.ensemble import build_ensemble, build_member, members_of
from medkeras.models.preprocessing import ImagePreprocessing

QUICK = [name for name, spec in REGISTRY.items() if not spec.slow]


SLOW = [name for name, spec in REGISTRY.items() if spec.slow]


def _build_and_run(name, k=3):
    spec = REGISTRY[name]
    size = max(spec.min_size, 32)
    member = build_member(name, num_classes=k, image_size=size)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    logits = member(x, training=False)
    assert tuple(logits.shape) == (2, k)
    assert logits.dtype == "float32"
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("name", QUICK)
def test_registry_entry_builds_small_and_returns_k_logits(name):
    _build_and_run(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_large_registry_entry_builds_small(name):
    _build_and_run(name)


def test_own_architectures_have_the_published_sizes():
    import keras

    published = [("resnet18", 11.69e6), ("resnet34", 21.80e6), ("vgg19_bn", 143.68e6), ("regnety_4gf", 20.65e6),
                 ("regnety_8gf", 39.3e6), ("convnextv2_tiny", 28.64e6), ("convnextv2_base", 88.72e6)]
    for name, params in published:
        backbone = build_backbone(name, 224)
        inputs = keras.Input((224, 224, 3))
        model = keras.Model(inputs, keras.layers.Dense(1000)(backbone(inputs)))
        assert abs(model.count_params() - params) / params < 0.02, (name, model.count_params())


def test_imagenet_weights_for_own_architectures_is_a_clear_error():

    with pytest.raises(ConfigError, match="no ImageNet weights for 'resnet18_small'"):
        build_backbone("resnet18_small", 32, "imagenet")


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_in_graph_preprocessing_matches_keras_applications(mode):
    from keras.applications import imagenet_utils

    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = np.asarray(ImagePreprocessing(mode)(x))
    theirs = imagenet_utils.preprocess_input(x.copy(), mode=mode)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_ensemble_output_is_exactly_the_mean_of_member_logits():
    members = [build_member(n, 2, 32, member_name=n) for n in ("resnet18_small", "cnn8_small", "mobilenetv3small")]
    ensemble = build_ensemble(members, 32)
    assert [m.name for m in members_of(ensemble)] == ["resnet18_small", "cnn8_small", "mobilenetv3small"]
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    combined = np.asarray(ensemble(x, training=False))
    each = np.stack([np.asarray(m(x, training=False)) for m in members])
    np.testing.assert_array_equal(combined, each.sum(axis=0) / 3)
    assert ensemble.output.dtype == "float32"


def test_weighted_ensemble(tmp_path):
    import keras

    from medkeras.models.io import load_model, save_model

    members = [build_member(n, 2, 16) for n in ("cnn8_small", "resnet18_small")]
    ensemble = build_ensemble(members, 16, weights=[3, 1])
    x = np.random.default_rng(3).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    expected = 0.75 * np.asarray(members[0](x)) + 0.25 * np.asarray(members[1](x))
    np.testing.assert_allclose(np.asarray(ensemble(x)), expected, rtol=1e-6, atol=1e-6)
    path = save_model(ensemble, tmp_path / "m.keras", {"class_names": ["a", "b"], "image_size": 16})
    again, meta = load_model(path)
    assert meta == {"class_names": ["a", "b"], "image_size": 16}
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(ensemble(x)), rtol=1e-6, atol=1e-6)
    assert isinstance(again, keras.Model)


def test_one_door_for_saved_models(tmp_path, tiny_run, exported):
    """`open_model` opens a run directory, its .keras file and its SavedModel export alike (same metadata and
    config), and refuses anything else with one message naming the file."""
    import keras

    from medkeras.errors import MedkerasError
    from medkeras.models.io import open_model

    run, _ = tiny_run
    by_dir, by_file, served = open_model(run), open_model(run / "model.keras"), open_model(exported[0].parent)
    assert by_dir.kind == by_file.kind == "keras" and served.kind == "savedmodel"
    assert by_dir.meta == by_file.meta == served.meta and served.path == exported[0]
    assert served.config == by_dir.config and by_dir.config.name == "demo"
    assert by_dir.positive_index == 0 and by_dir.class_names == ["malignant", "benign-or-normal"]
    assert by_dir.threshold == by_dir.meta["threshold"] and by_dir.windows == []
    with pytest.raises(MedkerasError, match="an exported SavedModel; export needs the Keras model"):
        open_model(exported[0], keras_only=True, purpose="export")
    plain = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(plain)
    with pytest.raises(MedkerasError, match=r"plain\.keras: not a medkeras model"):
        open_model(plain)
    with pytest.raises(MedkerasError, match="model not found"):
        open_model(tmp_path)



def test_the_offline_imagenet_message_names_the_file_to_place():
    from medkeras.models.backbones import offline_message

    keras_error = ("URL fetch failure on https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5: "
                   "None -- [Errno -2] Name or service not known")
    message = offline_message("efficientnetb0", keras_error)
    assert "put efficientnetb0_notop.h5 (from https://storage.googleapis.com/keras-applications/" in message
    assert "~/.keras/models/" in message and "\n" not in message
