"""medkeras' own distributed train loop, for `train.strategy: multiworker` (MultiWorkerMirroredStrategy).

Keras 3.15's `model.fit` fails under MultiWorkerMirroredStrategy on every worker (it calls `strategy.reduce` on
PerReplica values; tensorflow issue 72388). This loop does what the TensorFlow multi-worker guide does: the
dataset distributed with `experimental_distribute_dataset` (sharded by data, every worker shuffling with the
same seed), each step run on every replica with `strategy.run`, the loss scaled with
`tf.nn.compute_average_loss` to the global batch (and by a dynamic loss scale under `mixed_float16`, as Keras'
compile does), and gradients all-reduced by the Keras optimizer. It drives the same Keras callbacks `fit` uses
(validation metrics, best checkpoint, CSV log, BackupAndRestore, TensorBoard, early stopping, progressive
resizing, the weights' EMA), so checkpoints, `train_log.csv` and `--resume` behave the same.

Only the chief (worker 0) writes the run directory; the other workers write their backups to a scratch
directory, as multi-worker checkpointing requires, and stop after training.
"""

from __future__ import annotations

import os
import time

import numpy as np


def cluster_size(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    return max(1, sum(len(v) for v in resolver.cluster_spec().as_dict().values()))


def is_chief(strategy) -> bool:
    """True on the worker that writes the run directory: `chief`, or worker 0 when the cluster has no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def make_multiworker_strategy():
    """MultiWorkerMirroredStrategy from TF_CONFIG (ring all-reduce on CPUs, NCCL where GPUs are)."""
    import tensorflow as tf

    from medkeras.errors import ConfigError

    if "TF_CONFIG" not in os.environ:
        raise ConfigError(
            "train.strategy multiworker needs TF_CONFIG on every worker (see README: 'Several machines')"
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def custom_fit(model, dataset, *, strategy, loss, optimizer, epochs, initial_epoch, steps, callbacks, verbose=1,
               size_var=None):
    """Train `model` on `dataset` (global batches of (x, y[, sample_weight])) for epochs initial..epochs-1.

    `size_var` (progressive resizing): each step resizes its batch to the variable's value, read inside the step,
    so every worker trains the same step at the same size with one traced step (the pipeline's batches stay at
    `data.image_size`). Returns the Keras History the callbacks filled. `model` must have been built under
    `strategy.scope()`.
    """
    import keras
    import tensorflow as tf

    from medkeras.data.resize import resize_to

    if keras.mixed_precision.global_policy().name == "mixed_float16" and not isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # as Keras' compile does under mixed_float16
    with strategy.scope():  # slots (and the loss scale, the EMA) mirrored like the weights, made before tracing
        optimizer.build(model.trainable_variables)
    model.optimizer = optimizer  # callbacks (BackupAndRestore, SwapEMAWeights, TensorBoard) look for it here
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist = strategy.experimental_distribute_dataset(dataset.repeat().with_options(options))
    iterator = iter(dist)

    def replica_step(batch):
        x, y = batch[0], batch[1]
        weight = batch[2] if len(batch) > 2 else None
        if size_var is not None:
            x = resize_to(x, size_var)
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            per_example = loss.call(y, logits)
            if weight is not None:
                per_example = per_example * tf.cast(weight, per_example.dtype)
            total = tf.nn.compute_average_loss(per_example)
            if model.losses:
                total += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(total)  # times the dynamic loss scale under mixed_float16, else total
        grads = tape.gradient(scaled, model.trainable_variables)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            grads = _skip_together(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))  # unscaled; a non-finite step is skipped
        labels = tf.argmax(y, axis=-1) if y.shape.rank == 2 else y
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1), tf.cast(labels, tf.int64)), tf.float32))
        count = tf.cast(tf.shape(logits)[0], tf.float32)
        return tf.reduce_sum(per_example), correct, count  # summed here, divided by the global count below

    @tf.function
    def train_step(it):
        loss_sum, correct, count = strategy.run(replica_step, args=(next(it),))
        reduce = tf.distribute.ReduceOp.SUM
        return (strategy.reduce(reduce, loss_sum, axis=None), strategy.reduce(reduce, correct, axis=None),
                strategy.reduce(reduce, count, axis=None))

    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList([*callbacks, history], model=model, epochs=epochs, steps=steps,
                                                 verbose=verbose, add_progbar=bool(verbose))
    model.stop_training = False
    model._initial_epoch = initial_epoch  # BackupAndRestore moves it forward in on_train_begin
    callback_list.on_train_begin()
    start = model._initial_epoch or initial_epoch
    for epoch in range(start, epochs):
        callback_list.on_epoch_begin(epoch)
        t0, loss_sum, correct, count = time.perf_counter(), 0.0, 0.0, 0.0
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            batch_loss, batch_correct, batch_count = (float(v) for v in train_step(iterator))
            loss_sum, correct, count = loss_sum + batch_loss, correct + batch_correct, count + batch_count
            callback_list.on_train_batch_end(step, {"loss": loss_sum / max(count, 1.0)})
        logs = {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0)}
        logs["epoch_s"] = time.perf_counter() - t0
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end()
    return history


def _skip_together(grads):
    """Gradients every replica skips together when any replica's are not finite.

    Keras' LossScaleOptimizer decides on each worker's own gradients (its comment assumes they were all-reduced
    already; in Keras 3 the all-reduce happens inside the finite branch), so a float16 overflow on one worker alone
    left the others waiting in an all-reduce it never joined: a hung step (seen at the second size of a schedule).
    One scalar all-reduce makes the decision global: where any replica overflowed, every replica's gradients are
    made non-finite, every replica skips the step and halves the loss scale.
    """
    import tensorflow as tf

    present = [g for g in grads if g is not None]
    bad = tf.cast(tf.logical_not(tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in present])), tf.float32)
    bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
    return [None if g is None else tf.where(bad > 0, tf.cast(float("nan"), g.dtype), g) for g in grads]


def local_predict(model, dataset) -> np.ndarray:
    """Logits of a batched dataset with plain calls of the model (no distribution; reads the mirrored weights)."""
    return np.concatenate([np.asarray(model(x, training=False), dtype=np.float32) for x in dataset])
