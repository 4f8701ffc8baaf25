"""Training mechanics on real images: frozen phases, class weights, schedules, fusion weights, resume after kill -9."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from medkeras.config import DataConfig, TrainConfig
from medkeras.train.losses import class_weights, make_loss, make_optimizer
from medkeras.train.phases import phases, set_backbones_trainable


def _breast_batch(breast, n=32, size=32):
    import tensorflow as tf

    split = breast.splits["train"]
    x = tf.image.resize(split.images[:n, ..., None].astype("float32"), (size, size)).numpy()
    return np.repeat(x, 3, axis=-1), split.labels[:n]


def _backbone(member):
    import keras

    return next(layer for layer in member.layers if isinstance(layer, keras.Model))


def test_phase_one_leaves_the_backbone_unchanged_and_phase_two_changes_it(breast):
    import keras

    from medkeras.models.ensemble import build_member

    x, y = _breast_batch(breast)
    member = build_member("resnet18_small", 2, 32)
    before = [w.copy() for w in _backbone(member).get_weights()]  # kernels and BatchNorm moving statistics
    head_before = member.layers[-1].get_weights()[0].copy()
    set_backbones_trainable(member, False)
    member.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   run_eagerly=True)
    member.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(before, _backbone(member).get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(head_before, member.layers[-1].get_weights()[0])
    set_backbones_trainable(member, True)
    member.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   run_eagerly=True)
    member.fit(x, y, epochs=1, batch_size=16, verbose=0)
    changed = [not np.array_equal(a, b) for a, b in zip(before, _backbone(member).get_weights())]
    assert all(changed)  # train.finetune_batchnorm: trainable -- moving statistics too


def test_finetuning_keeps_batchnorm_frozen_where_asked(breast):
    """`train.finetune_batchnorm: frozen` (auto's choice for a pretrained backbone): phase 2 changes every kernel of
    a real ResNet18 on real images, and no BatchNorm weight or moving statistic; `auto` picks per member."""
    import keras

    from medkeras.config import Config, ModelConfig
    from medkeras.models.ensemble import build_member
    from medkeras.train.phases import batchnorm_modes

    x, y = _breast_batch(breast)
    member = build_member("resnet18_small", 2, 32)
    backbone = _backbone(member)
    bn = [v.path for layer in backbone._flatten_layers(include_self=False)
          if isinstance(layer, keras.layers.BatchNormalization) for v in layer.weights]
    before = {v.path: v.numpy().copy() for v in backbone.weights}
    set_backbones_trainable(member, True, "frozen")
    assert not any(v.path in bn for v in member.trainable_weights)
    member.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   run_eagerly=True)
    member.fit(x, y, epochs=1, batch_size=16, verbose=0)
    after = {v.path: v.numpy() for v in backbone.weights}
    assert len(bn) >= 4 * 5 and all(np.array_equal(before[p], after[p]) for p in bn)
    assert all(not np.array_equal(before[p], after[p]) for p in before if p not in bn)
    cfg = Config(model=ModelConfig(backbones=["vgg19_bn", "efficientnetb0", "resnet101"],
                                   weights={"vgg19_bn": "none", "efficientnetb0": "imagenet", "resnet101": "imagenet"}))
    assert batchnorm_modes(cfg) == {"vgg19_bn": "trainable", "efficientnetb0": "frozen", "resnet101": "frozen"}
    cfg.train.finetune_batchnorm = "trainable"
    assert set(batchnorm_modes(cfg).values()) == {"trainable"}


def test_phase_plans():
    assert phases(TrainConfig(epochs=10)) == [("train", 10, 1e-3, False)]
    assert phases(TrainConfig(epochs=10, freeze_epochs=3, learning_rate=1e-3)) == [
        ("frozen", 3, 1e-3, True), ("finetune", 10, 1e-4, False)]
    assert phases(TrainConfig(epochs=5, freeze_backbone=True)) == [("frozen", 5, 1e-3, True)]


def test_class_weights_balanced_and_pos_weight_change_the_loss(breast):
    from sklearn.utils.class_weight import compute_class_weight

    labels = breast.splits["train"].labels
    names = breast.class_names
    w = class_weights(TrainConfig(class_weight="balanced"), labels, names, 0)
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.array([0, 1]), y=labels), rtol=1e-6)
    w = class_weights(TrainConfig(pos_weight=3.0), labels, names, 0)
    np.testing.assert_array_equal(w, [3.0, 1.0])
    assert class_weights(TrainConfig(), labels, names, 0) is None
    loss, one_hot = make_loss(TrainConfig(), 2)
    logits = np.array([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.0]], np.float32)
    y = np.array([0, 1, 1])
    plain = float(loss(y, logits))
    weighted = float(loss(y, logits, sample_weight=w[y]))
    assert weighted != pytest.approx(plain)
    focal, one_hot = make_loss(TrainConfig(loss="focal"), 2)
    assert one_hot and float(focal(np.eye(2)[y], logits)) < plain  # focal down-weights easy examples


def test_optimizer_schedules_and_accumulation():
    opt = make_optimizer(TrainConfig(learning_rate=0.1, schedule="step", step_epochs=2, step_gamma=0.5), 10)
    assert float(opt.learning_rate) == pytest.approx(0.1)
    assert float(opt._learning_rate(20)) == pytest.approx(0.05)
    opt = make_optimizer(TrainConfig(gradient_accumulation_steps=4), 10)
    assert opt.gradient_accumulation_steps == 4


def test_adamw_updates_as_keras_does_with_one_rate_per_step_and_a_fused_kernel():
    """The lung recipe's AdamW + cosine schedule: medkeras' optimizer (weight decay with the rate computed once per
    step, Adam through TF's fused ResourceApplyAdam) gives Keras' own weights in compiled steps, and its graph has
    one schedule and one update op per variable (bench/startup.py --fit: 26 s and 15 s of tracing)."""
    import keras
    import tensorflow as tf

    from medkeras.config import load_config

    train = load_config("lung-ct-ensemble").train
    assert train.optimizer == "adamw" and train.schedule == "cosine" and train.weight_decay > 0
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")

    def run(patched, weight_decay=None):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.Dense(2)])
        optimizer = make_optimizer(train, 4, 3, 1e-2)
        if weight_decay is not None:
            optimizer.weight_decay = weight_decay
        if not patched:
            del optimizer._apply_weight_decay, optimizer._distributed_tf_update_step  # Keras' own methods
        model.compile(optimizer, "mse")
        model.fit(x, y, epochs=3, batch_size=4, verbose=0, shuffle=False)
        graph = tf.function(lambda: optimizer.apply_gradients(
            [(tf.ones_like(v), v) for v in model.trainable_variables])).get_concrete_function().graph
        types = [op.type for op in graph.get_operations()]
        return [w.numpy() for w in model.weights], types

    ours, our_ops = run(True)
    keras_own, keras_ops = run(False)
    # The kernel computes 1 - beta_2 in float32 (1.0000467e-3; Keras: 1e-3 from Python floats), so the weights
    # agree to ~1e-5 of what training changed them, not bit for bit.
    keras.utils.set_random_seed(0)
    fresh = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.Dense(2)])
    initial = [w.numpy() for w in fresh.weights]
    for a, b, w0 in zip(ours, keras_own, initial):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b - w0).max()
    undecayed, _ = run(True, weight_decay=0.0)
    assert max(np.abs(a - b).max() for a, b in zip(ours, undecayed)) > 1e-6  # weight decay did act
    conds = [sum(t in ("If", "StatelessIf") for t in ops) for ops in (our_ops, keras_ops)]
    assert conds == [2, 1 + 4]  # the schedule in the update and in weight decay; Keras: once per variable
    assert our_ops.count("ResourceApplyAdam") == 4 and "ResourceApplyAdam" not in keras_ops
    assert our_ops.count("ResourceApplyGradientDescent") == 4  # weight decay, one kernel a variable
    assert len(our_ops) < 0.5 * len(keras_ops)


def test_fusion_weights_prefer_the_better_member(breast):
    from medkeras.models.ensemble import fit_fusion_weights

    labels = breast.splits["val"].labels
    rng = np.random.default_rng(0)
    good = np.eye(2)[labels] * 3.0 + rng.normal(size=(len(labels), 2))
    noise = rng.normal(size=(len(labels), 2)) * 3.0
    weights = fit_fusion_weights([good, noise], labels)
    assert weights[0] > 0.8 and abs(sum(weights) - 1) < 1e-9


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_resume_after_kill_continues_at_the_epoch_reached(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "medkeras", "fit", "--out", str(out), "--set", "train.epochs=5",
            "--set", "train.steps_per_epoch=4", "--set", "train.run_eagerly=true", "--set", "train.verbose=0",
            "--set", "eval.bootstrap=50", "--set", "model.backbones=[cnn8_small]"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "train_log.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(_rows(log)) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_rows(log))
    assert 2 <= done < 5, "the run must be killed midway for this test to mean anything"
    assert not (out / "model.keras").exists()
    result = subprocess.run([*args[:6], "--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["epoch"] for r in _rows(log)] == ["1", "2", "3", "4", "5"]
    assert (out / "model.keras").is_file() and not (out / "FAILED").exists()
    # finished: --resume says so and leaves it as it is; more epochs continue it, keeping what it had
    model_time = (out / "model.keras").stat().st_mtime_ns
    again = subprocess.run([*args[:6], "--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "is finished (5 epochs): nothing to resume" in again.stdout
    assert (out / "model.keras").stat().st_mtime_ns == model_time
    more = subprocess.run([*args[:6], "--resume", "--set", "train.epochs=6"], capture_output=True, text=True,
                          timeout=600)
    assert more.returncode == 0, more.stderr[-2000:]
    assert [r["epoch"] for r in _rows(log)] == ["1", "2", "3", "4", "5", "6"]
    assert (out / "before-epoch-6" / "model.keras").is_file() and (out / "model.keras").stat().st_mtime_ns != model_time


def test_steps_per_execution_runs_every_step(tmp_path, monkeypatch):
    """Several steps per compiled call, a count that does not divide the epoch: every epoch logged, all steps run."""
    import importlib

    import medkeras

    fit_module = importlib.import_module("medkeras.train.phases")
    counted, original = [], fit_module._first_step_callback

    def counting(timer, *args):  # medkeras' own first-step callback, also reading the optimizer's step count
        first = original(timer, *args)

        class Counting(type(first)):
            def on_train_end(self, logs=None):
                counted.append(int(self.model.optimizer.iterations.numpy()))

        return Counting()

    monkeypatch.setattr(fit_module, "_first_step_callback", counting)
    cfg = medkeras.load_config("demo", ["train.epochs=2", "train.steps_per_epoch=4", "train.steps_per_execution=3",
                                        "train.verbose=0", "train.run_eagerly=true", "eval.bootstrap=0",
                                        "model.backbones=[cnn8_small]"])
    run = medkeras.fit(cfg, out=tmp_path / "run")
    assert [r["epoch"] for r in _rows(run / "train_log.csv")] == ["1", "2"]
    assert counted == [8]


_MIRRORED = r"""
import sys, json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import medkeras
from medkeras.train.fit import make_strategy
cfg = medkeras.load_config("demo", ["train.epochs=1", "train.steps_per_epoch=2", "train.verbose=0",
                                    "train.strategy=mirrored", "eval.bootstrap=20", "model.backbones=[cnn8_small]"])
replicas = make_strategy("mirrored").num_replicas_in_sync
run = medkeras.fit(cfg, out=sys.argv[1])
print(json.dumps({"replicas": replicas, "auroc": json.load(open(run / "metrics.json"))["test"]["auroc"]}))
"""


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):

    proc = subprocess.run([sys.executable, "-c", _MIRRORED, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and 0.0 <= out["auroc"] <= 1.0
    assert (tmp_path / "run" / "model.keras").is_file()


def test_progressive_resizing_schedule_pipeline_and_fit(tmp_path, breast):
    import tensorflow as tf

    from medkeras.config import ConfigError, DataConfig, load_config
    from medkeras.data.pipeline import make_tf_dataset
    from medkeras.train.callbacks import size_schedule

    assert size_schedule([[1, 16], [3, 24]], 4, 28) == [16, 16, 24, 24]
    with pytest.raises(ConfigError, match="size_schedule"):
        load_config("demo", ["train.size_schedule=[[2, 16]]"])  # must start at epoch 1
    with pytest.raises(ConfigError, match="size_schedule"):
        load_config("demo", ["train.size_schedule=[[1, 64]]"])  # larger than data.image_size (28)
    split = breast.splits["train"]
    size = tf.Variable(28, dtype=tf.int32)
    ds = make_tf_dataset(split.images[:8], split.labels[:8], DataConfig(image_size=28), 4, True, size_var=size)
    assert next(iter(ds))[0].shape == (4, 28, 28, 3)
    size.assign(16)
    assert next(iter(ds))[0].shape == (4, 16, 16, 3)  # read when each epoch's iterator runs
    # the layers that need one known image size (CLAHE, erasing, blur; they failed on resized batches) augment at
    # data.image_size, before the batch is resized to the epoch's size
    cfg = load_config("demo", ["data.augment.clahe=1.0", "data.augment.erasing=0.5", "data.augment.blur=0.5"]).data
    ds = make_tf_dataset(split.images[:8], split.labels[:8], cfg, 4, True, size_var=size)
    batch = next(iter(ds))[0].numpy()
    assert batch.shape == (4, 16, 16, 3) and 0.0 <= batch.min() and batch.max() <= 255.0

    out = tmp_path / "run"
    result = run_cli(
        "fit", "--out", out, "--set", "train.epochs=3", "--set", "train.steps_per_epoch=2", "--set", "train.verbose=0",
        "--set", "train.run_eagerly=true", "--set", "model.backbones=[cnn8_small]", "--set", "eval.bootstrap=0",
        "--set", "train.size_schedule=[[1, 16], [2, 20], [3, 28]]",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [r["image_size"] for r in rows] == ["16.0", "20.0", "28.0"]
    assert "epoch 2: training at 20 px" in result.stdout


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multiworker_strategy_two_local_workers_train_the_same_weights(tmp_path):
    """Two `medkeras fit` processes on 127.0.0.1 joined by TF_CONFIG train one model with medkeras' own loop, under
    progressive resizing (the two together failed before: the schedule flag reached `train_model` as a tag), mixed
    float16 (loss scaled) and the weights' EMA (swapped in at each epoch's end on every worker)."""
    import os

    import keras

    from medkeras.models.io import load_model

    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    args = [sys.executable, "-m", "medkeras", "fit", "--out", str(tmp_path / "run"), "--set", "train.strategy=multiworker",
            "--set", "train.epochs=2", "--set", "train.steps_per_epoch=3", "--set", "train.verbose=0",
            "--set", "model.backbones=[cnn8_small]", "--set", "eval.bootstrap=0", "--set", "train.batch_size=16",
            "--set", "train.size_schedule=[[1, 16], [2, 28]]", "--set", "train.precision=mixed_float16",
            "--set", "train.ema=0.9"]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=400) for p in procs]  # bounded: a hung collective fails the test
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    run = tmp_path / "run"
    assert (run / "model.keras").is_file() and (run / "metrics.json").is_file()
    rows = _rows(run / "train_log.csv")  # each epoch written once, at the size the schedule gives it
    assert [r["image_size"] for r in rows] == ["16.0", "28.0"]
    scratch = outs[1][0].split("scratch: ")[1].split(")")[0]
    chief, _ = load_model(run / "checkpoints" / "best.keras")
    worker, _ = load_model(os.path.join(scratch, "checkpoints", "best.keras"))
    for a, b in zip(chief.trainable_weights, worker.trainable_weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-6)
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_mlflow_tracking_logs_params_epochs_results_and_artifacts(tmp_path, monkeypatch):

    mlflow = pytest.importorskip("mlflow")

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database; a file store is enough for a test
    result = run_cli(
        "fit", "--out", tmp_path / "run", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=2",
        "--set", "train.verbose=0", "--set", "train.run_eagerly=true", "--set", "model.backbones=[cnn8_small]",
        "--set", "eval.bootstrap=0", "--set", "track.mlflow=true", "--set", f"track.tracking_uri={uri}",
        "--set", "track.experiment=medkeras-test",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("medkeras-test").experiment_id])
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.backbones"] == "['cnn8_small']"
    history = client.get_metric_history(run.info.run_id, "val_auroc")
    assert [m.step for m in history] == [1, 2]
    assert 0.0 <= run.data.metrics["test.auroc"] <= 1.0
    assert {"config.yaml", "metrics.json", "report.html"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_weight_ema_is_what_validation_and_checkpoints_see(breast):
    """train.ema: the optimizer keeps an EMA of the weights, and the callbacks that validate and checkpoint at each
    epoch's end (placed after SwapEMAWeights, as train_model does) see the averaged weights, not the raw ones."""
    import keras

    from medkeras.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.ema"):
        load_config("demo", ["train.ema=1.5"])
    x, y = _breast_batch(breast, 16, 16)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    optimizer = make_optimizer(TrainConfig(ema=0.5, learning_rate=0.05, schedule="constant"), 2)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.5
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seen, raw = [], []

    class Grab(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append(model.get_weights())

        def on_epoch_end(self, epoch, logs=None):
            seen.append(model.get_weights())

    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
              callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True), Grab()])
    ema = [v.numpy() for v in optimizer._model_variables_moving_average]
    for got, want, latest in zip(seen[-1], ema, raw[-1]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert not np.allclose(got, latest)  # the raw weights of the last step differ


def test_dataset_normalization_in_the_graph(breast):
    from medkeras.data.pipeline import make_tf_dataset
    from medkeras.models.preprocessing import ImagePreprocessing
    from medkeras.train.inputs import dataset_statistics

    images = breast.splits["train"].images
    cfg = DataConfig(source="breastmnist", image_size=28, augment=None)
    mean, std = dataset_statistics(make_tf_dataset(images, breast.splits["train"].labels, cfg, 256))
    pixels = images.astype(np.float64) / 255.0
    assert mean[0] == pytest.approx(pixels.mean(), abs=1e-5) and std[0] == pytest.approx(pixels.std(), abs=1e-5)
    layer = ImagePreprocessing("dataset", mean, std)
    out = np.asarray(layer(np.repeat(images[:64, ..., None].astype("float32"), 3, axis=-1)))
    np.testing.assert_allclose(out[..., 0], (images[:64] / 255.0 - mean[0]) / std[0], atol=1e-4)


def test_fit_reads_each_split_once_and_scores_what_it_read(tmp_path, monkeypatch):
    """The end of a fit scores the validation and test arrays decoded at its start; it never reads them again
    (a second read under memory pressure once found the validation split empty after 3 epochs on it)."""
    import medkeras
    import medkeras.data.pipeline as pipeline

    reads, original = [], pipeline.split_arrays

    def counting(split, *args, **kwargs):
        reads.append(len(split))
        return original(split, *args, **kwargs)

    monkeypatch.setattr(pipeline, "split_arrays", counting)
    cfg = medkeras.load_config("demo", ["train.epochs=1", "train.steps_per_epoch=1", "train.verbose=0",
                                        "train.run_eagerly=true", "eval.bootstrap=0", "model.backbones=[cnn8_small]"])
    run = medkeras.fit(cfg, out=tmp_path / "run")
    assert reads == [546, 78, 156]  # train, val, test: once each
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["n"] == 78 and metrics["test"]["n"] == 156


def test_a_run_is_never_replaced_without_overwrite_and_a_failed_fit_leaves_nothing(tmp_path, tiny_run):
    """A finished run in --out is refused (one line, exit 1) unless --overwrite; a fit that fails before training
    (bad data) leaves no directory behind, and with --overwrite puts the run it was replacing back."""
    import shutil

    from conftest import run_cli

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    before = (run / "model.keras").read_bytes()
    refused = run_cli("fit", "--out", run, "--set", "train.epochs=1")
    assert refused.returncode == 1 and "holds a finished run: use --overwrite to replace it" in refused.stderr
    failing = ["--set", "data.source=" + str(tmp_path / "nowhere")]
    result = run_cli("fit", "--out", tmp_path / "new", *failing)
    assert result.returncode == 1 and not (tmp_path / "new").exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = run_cli("fit", *failing, cwd=fresh)  # the default runs/<config>-<time>: no empty runs/ either
    assert result.returncode == 1 and list(fresh.iterdir()) == []
    result = run_cli("fit", "--out", run, "--overwrite", *failing)
    assert result.returncode == 1 and (run / "model.keras").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside
    result = run_cli("fit", "--out", run, "--overwrite", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1",
                     "--set", "train.run_eagerly=true", "--set", "model.backbones=[cnn8_small]", "--set",
                     "eval.bootstrap=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "model.keras").read_bytes() != before and len(_rows(run / "train_log.csv")) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]



def test_the_same_config_and_seed_give_the_same_run(tmp_path):
    """Reproducible by default: two fits of the demo recipe (augmentation on, graph mode) with one seed write the same
    train_log.csv and predictions; augmentation in parallel (`train.deterministic: false`) is the documented way out."""
    from conftest import run_cli

    args = ["--set", "train.epochs=2", "--set", "train.steps_per_epoch=4", "--set", "train.verbose=0",
            "--set", "model.backbones=[cnn8_small]", "--set", "eval.bootstrap=0", "--set", "data.image_size=32"]
    for name in ("a", "b"):
        result = run_cli("fit", "--out", tmp_path / name, *args)
        assert result.returncode == 0, result.stderr[-2000:]
    for output in ("train_log.csv", "predictions.csv"):
        assert (tmp_path / "a" / output).read_text() == (tmp_path / "b" / output).read_text(), output


def test_balanced_sampling_trains(tmp_path):
    from conftest import run_cli

    result = run_cli("fit", "--out", tmp_path / "run", "--set", "train.sampling=balanced", "--set", "train.epochs=1",
                     "--set", "train.steps_per_epoch=3", "--set", "train.run_eagerly=true", "--set", "train.verbose=0",
                     "--set", "model.backbones=[cnn8_small]", "--set", "eval.bootstrap=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.isfinite(float(_rows(tmp_path / "run" / "train_log.csv")[0]["loss"]))


def test_resume_backup_is_written_whole_or_not_at_all(tmp_path):
    """A kill while the resume backup is written leaves the previous backup in place, never a truncated
    latest.weights.h5 that --resume cannot open (CI's kill test once caught Keras' in-place write)."""
    import keras

    from medkeras.train.callbacks import AtomicBackupAndRestore

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    backup = tmp_path / "backup"
    callback = AtomicBackupAndRestore(str(backup), double_checkpoint=True, delete_checkpoint=False)
    callback.set_model(model)
    callback._current_epoch, callback._last_batch_seen = 1, 0
    callback._save_model()
    latest = backup / "latest.weights.h5"
    whole = latest.read_bytes()

    def killed_midway(path, *args, **kwargs):
        Path(path).write_bytes(whole[:100])  # what a kill -9 during the write leaves
        raise KeyboardInterrupt

    model.save_weights = killed_midway
    with pytest.raises(KeyboardInterrupt):
        callback._save_model()
    assert latest.read_bytes() == whole
    assert sorted(p.name for p in backup.iterdir() if p.name.startswith(".")) == []
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    fresh.compile("adam", "mse")
    restore = AtomicBackupAndRestore(str(backup), double_checkpoint=True, delete_checkpoint=False)
    restore.set_model(fresh)
    restore.on_train_begin()
    np.testing.assert_array_equal(fresh.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())
