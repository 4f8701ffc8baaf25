"""medkeras' own distributed loop (`train.strategy: multiworker`) under the switches GPU users turn: the loss scaled
under mixed_float16 as Keras' compile does, and the weights' EMA what validation and checkpoints see."""

import numpy as np

from medkeras.config import TrainConfig
from medkeras.train.losses import make_optimizer


def test_the_loop_scales_the_loss_under_mixed_float16_and_keeps_the_ema(breast):
    import keras
    import tensorflow as tf

    from medkeras.train.loop import custom_fit

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    split = breast.splits["train"]
    x = np.repeat(split.images[:32, ..., None].astype("float32"), 3, axis=-1)
    ds = tf.data.Dataset.from_tensor_slices((x, split.labels[:32])).batch(8)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = keras.Sequential([keras.Input((28, 28, 3)), keras.layers.Rescaling(1 / 255),
                                      keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                                      keras.layers.Dense(2, dtype="float32")])
            optimizer = make_optimizer(TrainConfig(ema=0.5, learning_rate=0.01, schedule="constant"), 4)
        start = [w.copy() for w in model.get_weights()]
        seen = []

        class Grab(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append(model.get_weights())

        history = custom_fit(model, ds, strategy=strategy, loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), optimizer=optimizer, epochs=2, initial_epoch=0, steps=4, verbose=0,
            callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True), Grab()])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    scaler = model.optimizer
    assert isinstance(scaler, keras.optimizers.LossScaleOptimizer) and scaler.inner_optimizer is optimizer
    # the dynamic loss scale at work: each of the 8 steps either applied finite gradients (unscaled) or, where the
    # scaled float16 gradients overflowed, was skipped and halved the scale from Keras' initial 2^15
    scale = float(keras.ops.convert_to_numpy(scaler.scale_loss(1.0)))
    applied = int(keras.ops.convert_to_numpy(scaler.iterations))
    assert applied >= 1 and applied + np.log2(2.0**15 / scale) == 8
    assert all(np.isfinite(h) for h in history.history["loss"])
    ema = [keras.ops.convert_to_numpy(v) for v in optimizer._model_variables_moving_average]
    for got, want, before in zip(seen[-1], ema, start):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)  # validation saw the averaged weights
        assert not np.allclose(got, before)


_TWO_REPLICAS = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from medkeras.train.loop import _skip_together
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
def step(bad):
    first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
    g = tf.where(first & bad, float("inf"), 1.0) * tf.ones((3,))
    return _skip_together([g, None])[0]
for bad in (False, True):
    out = strategy.experimental_local_results(tf.function(lambda: strategy.run(step, args=(tf.constant(bad),)))())
    print(len(out), [bool(np.all(np.isfinite(o.numpy()))) for o in out])
"""


def test_an_overflow_on_one_replica_skips_the_step_on_every_replica():
    """Keras' LossScaleOptimizer decides on each replica's own gradients; where one worker's float16 gradients
    overflowed alone, it skipped while the others waited in the all-reduce it never joined (the two-worker fit hung
    at its second image size). `_skip_together` makes the decision global: two replicas, an overflow on the first."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _TWO_REPLICAS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["2 [True, True]", "2 [False, False]"]
