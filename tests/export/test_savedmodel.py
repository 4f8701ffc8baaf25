"""Export: layout, signatures, parity with the Keras model on real images, the REST request format, atomicity."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _loaded(path):
    import tensorflow as tf

    return tf.saved_model.load(str(path))


def test_layout_and_assets(exported):
    path, run = exported
    saved = json.loads((run / "metrics.json").read_text())
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert (path / "assets" / "labels.txt").read_text().splitlines() == ["malignant", "benign-or-normal"]
    facts = json.loads((path / "assets" / "preprocessing.json").read_text())
    assert facts["image_size"] == 28 and facts["class_names"] == ["malignant", "benign-or-normal"]
    assert facts["threshold"] == saved["threshold"] and facts["temperature"] == saved["temperature"]
    assert facts["positive_class"] == "malignant" and facts["temperature"] != 1.0  # fitted on validation
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_signatures_names_dtypes_shapes(exported):
    import tensorflow as tf

    loaded = _loaded(exported[0])
    expected_inputs = {
        "serving_default": ("image", tf.float32, [None, None, None, None]),
        "serve_encoded": ("image_bytes", tf.string, [None]),
        "serve_hu": ("hu", tf.float32, [None, None, None]),
    }
    for name, (arg, dtype, shape) in expected_inputs.items():
        fn = loaded.signatures[name]
        spec = fn.structured_input_signature[1][arg]
        assert spec.dtype == dtype and spec.shape.as_list() == shape
        outs = fn.structured_outputs
        assert set(outs) == {"probabilities", "logits", "label"}
        assert outs["probabilities"].dtype == tf.float32 and outs["label"].dtype == tf.int64
        assert outs["probabilities"].shape.as_list() == [None, 2]


def test_parity_with_keras_on_real_images_any_size(exported, breast):
    import tensorflow as tf

    from medkeras.evaluation.metrics import softmax
    from medkeras.models.io import load_model

    path, run = exported
    model, meta = load_model(run)
    images = breast.splits["test"].images[:32].astype(np.float32)[..., None]
    served = _loaded(path).signatures["serving_default"](image=tf.constant(images))
    keras_probs = softmax(model.predict(np.repeat(images, 3, axis=-1), verbose=0), meta["temperature"])
    assert np.abs(served["probabilities"].numpy() - keras_probs).max() <= 1e-4
    pos = meta["class_names"].index("malignant")
    expected_label = np.where(keras_probs[:, pos] >= meta["threshold"], pos, 1 - pos)
    np.testing.assert_array_equal(served["label"].numpy(), expected_label)
    # a larger image is resized in the graph: same answer as resizing first
    big = tf.image.resize(images[:4], (56, 56), method="nearest")
    out_big = _loaded(path).signatures["serving_default"](image=big)["probabilities"].numpy()
    assert out_big.shape == (4, 2) and np.isfinite(out_big).all()


def test_serve_encoded_equals_pixels(exported, test_pngs):
    import tensorflow as tf

    loaded = _loaded(exported[0])
    data = [p.read_bytes() for p in test_pngs]
    by_bytes = loaded.signatures["serve_encoded"](image_bytes=tf.constant(data))["probabilities"].numpy()
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float32)[..., None] for p in test_pngs])
    by_pixels = loaded.signatures["serving_default"](image=tf.constant(pixels))["probabilities"].numpy()
    np.testing.assert_allclose(by_bytes, by_pixels, atol=1e-6)
    with pytest.raises(Exception, match="not PNG or JPEG"):
        loaded.signatures["serve_encoded"](image_bytes=tf.constant([b"not an image"]))


def test_saved_model_cli_runs_a_real_image(exported, tmp_path, breast):
    path, _ = exported
    npy = tmp_path / "x.npy"
    np.save(npy, breast.splits["test"].images[:1].astype(np.float32)[..., None])
    proc = subprocess.run(
        ["saved_model_cli", "run", "--dir", str(path), "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"image={npy}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "probabilities" in proc.stdout and "label" in proc.stdout


def test_killed_export_leaves_no_version(tiny_run, tmp_path):
    run, _ = tiny_run
    proc = subprocess.Popen([sys.executable, "-m", "medkeras", "export", str(run), "--out", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("medkeras/.*")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    versions = [p for p in (tmp_path / "medkeras").iterdir() if p.name.isdigit()]
    assert versions == []


def test_wrong_dtype_or_rank_is_refused_by_the_signature(exported):
    import tensorflow as tf

    fn = _loaded(exported[0]).signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        fn(image=tf.zeros((2, 28, 28), tf.float32))  # rank 3
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        fn(image=tf.zeros((1, 28, 28, 1), tf.int32))  # int pixels


def test_onnx_export_matches_keras(tiny_run, tmp_path, breast):
    import onnxruntime as ort  # the test extra has the 'onnx' extra's packages: tested in CI for real

    from medkeras.models.io import open_model

    result = run_cli("export", tiny_run[0], "--out", tmp_path, "--format", "onnx")
    assert result.returncode == 0, result.stderr
    target = tmp_path / "medkeras" / "1"
    assert {p.name for p in target.iterdir()} == {"model.onnx", "labels.txt", "preprocessing.json"}
    session = ort.InferenceSession(str(target / "model.onnx"))
    x = np.repeat(breast.splits["test"].images[:8, ..., None].astype(np.float32), 3, axis=-1)
    model = open_model(tiny_run[0]).scoring_model()  # as every path scores it (with its flips, where it has any)
    diff = np.abs(session.run(None, {session.get_inputs()[0].name: x})[0] - model.predict(x, verbose=0)).max()
    assert diff < 1e-4


@pytest.mark.slow
def test_export_loads_without_keras_or_medkeras(exported, tmp_path, breast):
    """Set MEDKERAS_KERAS_FREE_PYTHON to a Python with tensorflow-cpu and no keras (see bin/keras_free_check.py)."""
    import os

    from medkeras.evaluation.metrics import softmax
    from medkeras.models.io import load_model

    python = os.environ.get("MEDKERAS_KERAS_FREE_PYTHON")
    if not python:
        pytest.skip("MEDKERAS_KERAS_FREE_PYTHON is not set")
    path, run = exported
    x = breast.splits["test"].images[:4].astype(np.float32)[..., None]
    np.save(tmp_path / "x.npy", x)
    Image.fromarray(breast.splits["test"].images[0]).save(tmp_path / "x.png")
    proc = subprocess.run([python, str(ROOT / "bin" / "keras_free_check.py"), str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "x.png")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    model, meta = load_model(run)
    expected = softmax(model.predict(np.repeat(x, 3, axis=-1), verbose=0), meta["temperature"])
    assert np.abs(np.asarray(served["probabilities"]) - expected).max() <= 1e-4


def test_batchnorm_folding_serves_the_same_function():
    """Conv/DepthwiseConv + BN pairs fold (nested members too); BN after an activation stays; outputs agree."""
    import keras

    from medkeras.export.fold import fold_batchnorm
    from medkeras.models.ensemble import build_ensemble, build_member

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.BatchNormalization()(x)  # after an activation: cannot fold
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    plain = keras.Model(inputs, outputs)
    members = [build_member("cnn8_small", 2, 16, member_name="a"), build_member("resnet18_small", 2, 16, member_name="b")]
    ensemble = build_ensemble(members, 16)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    for model, expected in ((plain, 2), (ensemble, 8 + 20)):
        for w in model.weights:  # trained-looking statistics, or folding would be the identity
            if w.path.endswith(("moving_mean", "beta")):
                w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
            elif w.path.endswith(("moving_variance", "gamma")):
                w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        folded, count = fold_batchnorm(model)
        assert count == expected
        np.testing.assert_allclose(folded(x, training=False), model(x, training=False), rtol=1e-4, atol=1e-4)
    assert fold_batchnorm(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))[1] == 0
