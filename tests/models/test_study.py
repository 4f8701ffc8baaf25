"""Study members (`models/study.py`): slab, series (gated-attention MIL) and volume models take real CT studies read
by `data/studies.py`, give float32 logits, train, and save to `.keras` and back to the same logits; the attention
pooling is a weighted mean whose weights sum to one and do not depend on the slices' order."""

import numpy as np
import pydicom
import pytest
from conftest import LUNG, SERIES_3

from medkeras.data.volumes import slabs
from medkeras.models.study import (
    GatedAttentionPooling,
    build_series_member,
    build_slab_member,
    build_volume_member,
    slice_attention,
)


@pytest.fixture(scope="module")
def real_studies(tmp_path_factory):
    """Two real CT studies (16 x 32 x 32, lung window, 3 channels): the tumour block of each of the patient's two
    series, and a normal slice of each, as `study_arrays` reads them; labels 1, 1, 0, 0."""
    from medkeras.data.studies import study_volume

    root = tmp_path_factory.mktemp("studies")
    out = []
    for label, names in (("tumour", ("1-13.dcm", "1-14.dcm")), ("normal", ("1-01.dcm",))):
        for source in (LUNG, SERIES_3):
            folder = root / label / source.name
            folder.mkdir(parents=True)
            for name in names:
                pydicom.dcmread(source / name).save_as(folder / name)
            out.append(study_volume(folder, [[-600.0, 1500.0]], size=(16, 32, 32)))
    volumes = np.repeat(np.stack(out), 3, axis=-1)  # grey to the 3 channels every backbone takes
    return volumes, np.asarray([1, 1, 0, 0])


def _trains_and_round_trips(model, x, y, tmp_path):
    import keras

    logits = model(x, training=False)
    assert logits.shape == (len(x), 2) and logits.dtype == "float32"
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, model.trainable_weights))
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    back = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    return back


def test_a_volume_member_trains_on_real_studies_and_round_trips(real_studies, tmp_path):
    x, y = real_studies
    _trains_and_round_trips(build_volume_member("resnet18_3d", 2, x.shape[1:4]), x, y, tmp_path)


def test_a_series_member_attends_over_slices_trains_and_round_trips(real_studies, tmp_path):
    import keras

    x, y = real_studies
    model = build_series_member("cnn8_small", 2, 32, slices=16)
    features = keras.Model(model.inputs, model.get_layer("slice_features").output)(x)  # (4, 16, F)
    encoder = model.get_layer("cnn8_small_encoder")
    assert len(encoder._inbound_nodes) == 1  # one encoder call on every slice at once, not one per slice
    np.testing.assert_allclose(np.asarray(features[:, 5]), np.asarray(encoder(x[:, 5])), rtol=1e-5, atol=1e-5)
    back = _trains_and_round_trips(model, x, y, tmp_path)
    attention = np.asarray(slice_attention(back)(x))
    assert attention.shape == (4, 16)
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(attention, np.asarray(slice_attention(model)(x)), rtol=1e-5, atol=1e-7)


def test_a_slab_member_takes_k_adjacent_real_slices_as_channels(real_studies, tmp_path):
    x, y = real_studies
    grey = x[..., :1]
    five = np.stack([np.asarray(slabs(v, 5)) for v in grey])  # (4, 16, 32, 32, 5)
    np.testing.assert_array_equal(five[0, 7, ..., 2], grey[0, 7, ..., 0])  # the centre slice in the middle channel
    np.testing.assert_array_equal(five[0, 7, ..., 0], grey[0, 5, ..., 0])  # two slices down first
    np.testing.assert_array_equal(five[0, 0, ..., 0], grey[0, 0, ..., 0])  # the first slice repeated past the end
    centre = five[:, 8]  # one slab a study, labelled by the study
    _trains_and_round_trips(build_slab_member("cnn8_small", 2, 32, slab=5), centre, y, tmp_path)
    three = build_slab_member("cnn8_small", 2, 32, slab=3)
    assert "slab_to_rgb" not in [layer.name for layer in three.layers]  # K = 3 fits an ImageNet stem as it is
    with pytest.raises(Exception, match="odd number"):
        build_slab_member("cnn8_small", 2, 32, slab=4)


def test_gated_attention_is_an_order_free_weighted_mean():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 7, 16)).astype("float32")
    layer = GatedAttentionPooling(8, return_attention=True)
    pooled, attention = (np.asarray(t) for t in layer(features))
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(pooled, np.einsum("bn,bnf->bf", attention, features), rtol=1e-5, atol=1e-6)
    order = rng.permutation(7)
    shuffled, moved = (np.asarray(t) for t in layer(features[:, order]))
    np.testing.assert_allclose(shuffled, pooled, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moved, attention[:, order], rtol=1e-5, atol=1e-7)


def test_saved_study_members_load_in_a_fresh_process_and_run_under_mixed_precision(real_studies, tmp_path):
    """`import medkeras.models.study` registers every layer a study member holds (TapConv3D, FoldSlices, the
    attention pooling), so `keras.saving.load_model` reads the file in a new Python; under mixed_float16 (what GPU
    users train) a volume member runs (TF has no float16 MaxPool3D on CPU: its pools stay float32)."""
    import subprocess
    import sys

    import keras

    x = real_studies[0][:1]
    want = {}
    for name, model in (("volume", build_volume_member("resnet18_3d", 2, x.shape[1:4])),
                        ("series", build_series_member("cnn8_small", 2, 32, slices=16))):
        model.save(tmp_path / f"{name}.keras")
        want[name] = np.asarray(model(x))
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, keras, medkeras.models.study\n"
            "x = np.load(sys.argv[1] + '/x.npy')\n"
            "for name in ('volume', 'series'):\n"
            "    np.save(sys.argv[1] + f'/{name}.npy', np.asarray(keras.saving.load_model(sys.argv[1] + f'/{name}.keras')(x)))\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for name, logits in want.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), logits, rtol=1e-5, atol=1e-5)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_volume_member("resnet18_3d", 2, x.shape[1:4])
        logits = mixed(x)
        assert logits.dtype == "float32" and np.isfinite(np.asarray(logits)).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_study_slab_member_scores_every_slab_of_a_real_study_and_averages_their_logits(real_studies, tmp_path):
    """The slab member of `model.input: slab`: a study (B, D, H, W, 3) in; each slice's slab (`volumes.slabs`,
    ends repeated) through the 2D backbone; the study's logits the mean of its D slabs' logits."""
    import keras

    from medkeras.models.study import StudySlabs, build_study_slab_member

    x, y = real_studies
    folded = np.asarray(StudySlabs(5, 1)(x))  # (4 * 16, 32, 32, 5)
    want = np.stack([np.asarray(slabs(v, 5)) for v in x[..., :1]]).reshape(-1, 32, 32, 5)
    np.testing.assert_array_equal(folded, want)
    model = build_study_slab_member("cnn8_small", 2, (16, 32, 32), slab=5, windows=1)
    per_slab = keras.Model(model.inputs, model.get_layer("slab_logits").output)(x)  # (4, 16, 2)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(per_slab).mean(axis=1), rtol=1e-5, atol=1e-6)
    assert isinstance(model.get_layer("cnn8_small"), keras.Model)  # the backbone a direct child: phases freeze it
    _trains_and_round_trips(model, x, y, tmp_path)


def test_study_members_of_three_kinds_make_one_ensemble_and_each_is_a_member(real_studies):
    """A series member's shared encoder is a model inside it, not a member; members of different kinds that take
    one study shape average in one ensemble, flipped in the axial plane by TTA."""
    from medkeras.config import load_config
    from medkeras.models.ensemble import members_of
    from medkeras.models.study import build_study_model
    from medkeras.models.tta import with_tta

    x, _ = real_studies
    cfg = load_config("lung-ct-study", ["data.image_size=32", "data.volume_size=[16, 32, 32]",
                                        "model.backbones=[cnn8_small, resnet18_3d]", "model.weights=none"])
    model = build_study_model(cfg.model, cfg.data, 2)
    assert [m.name for m in members_of(model)] == ["cnn8_small", "resnet18_3d"]
    for member in members_of(model):
        assert members_of(member) == [member]
    mirrored = np.asarray(model(x[..., ::-1, :]))  # each slice's columns reversed
    tta = np.asarray(with_tta(model, ["horizontal"])(x))
    np.testing.assert_allclose(tta, (np.asarray(model(x)) + mirrored) / 2, rtol=1e-5, atol=1e-5)


def test_with_attention_gives_the_logits_and_the_series_attention_in_one_pass(real_studies):
    """What predict and every study signature score: (logits, slice attention) of an ensemble of a series and a
    volume member under test-time flips, equal to the logits and to the series member's attention averaged over the
    flips; a model without series members has none."""
    from medkeras.config import load_config
    from medkeras.models.ensemble import leaf_members
    from medkeras.models.study import build_study_model, with_attention
    from medkeras.models.tta import with_tta

    x, _ = real_studies
    cfg = load_config("lung-ct-study", ["data.image_size=32", "data.volume_size=[16, 32, 32]",
                                        "model.backbones=[cnn8_small, resnet18_3d]", "model.weights=none"])
    model = with_tta(build_study_model(cfg.model, cfg.data, 2), ["horizontal"])
    both = with_attention(model)
    logits, attention = (np.asarray(v) for v in both(x))
    np.testing.assert_allclose(logits, np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    series, volume = leaf_members(model)
    flipped = (np.asarray(slice_attention(series)(x)) + np.asarray(slice_attention(series)(x[..., ::-1, :]))) / 2
    np.testing.assert_allclose(attention, flipped, rtol=1e-5, atol=1e-7)
    assert attention.shape == (4, 16) and with_attention(volume) is None
    assert [w.name for w in both.weights] == [w.name for w in model.weights]  # shared, not copied
