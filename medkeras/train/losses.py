"""Loss, class weights, optimizer and learning-rate schedule from the `train` config, with Keras' own classes.

BCE with `pos_weight` on a two-logit head is cross-entropy with the positive images weighted by `pos_weight`
(softmax over two logits is the sigmoid of their difference), so it is applied as a class weight.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from medkeras.errors import ConfigError


def make_loss(train_cfg, num_classes: int):
    """-> (loss, one_hot). Sparse labels for plain cross-entropy; one-hot for focal loss or label smoothing."""
    if train_cfg.loss == "focal":
        return (
            keras.losses.CategoricalFocalCrossentropy(
                gamma=train_cfg.focal_gamma, from_logits=True, label_smoothing=train_cfg.label_smoothing
            ),
            True,
        )
    if train_cfg.loss == "bce" and num_classes != 2:
        raise ConfigError(f"train.loss 'bce' is for two classes; this task has {num_classes} (use cross_entropy)")
    if train_cfg.label_smoothing > 0:
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=train_cfg.label_smoothing), True
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True), False


def class_weights(train_cfg, labels, class_names, positive_index=None) -> np.ndarray | None:
    """Per-class weights (K,) from `train.class_weight` and `train.pos_weight`, or None for unweighted."""
    from sklearn.utils.class_weight import compute_class_weight

    k = len(class_names)
    weights = np.ones(k, dtype=np.float32)
    spec = train_cfg.class_weight
    if spec == "balanced":
        present = np.unique(labels)
        weights[present] = compute_class_weight("balanced", classes=present, y=labels).astype(np.float32)
    elif isinstance(spec, dict):
        for name, value in spec.items():
            if str(name) not in class_names:
                raise ConfigError(f"train.class_weight names '{name}', not one of {class_names}")
            weights[class_names.index(str(name))] = float(value)
    if train_cfg.pos_weight is not None:
        if k != 2 or positive_index is None:
            raise ConfigError("train.pos_weight is for binary tasks")
        weights[positive_index] *= float(train_cfg.pos_weight)
    return None if np.allclose(weights, 1.0) else weights


def make_schedule(train_cfg, steps_per_epoch: int, epochs: int, learning_rate: float):
    """Constant, step, or cosine decay to 0 with a linear warm-up (Keras' CosineDecay(warmup_steps=...))."""
    if train_cfg.schedule in ("constant", "plateau"):
        return learning_rate  # "plateau" lowers it from a callback (ReduceLROnPlateau)
    total = max(1, epochs * steps_per_epoch)
    if train_cfg.schedule == "step":
        every = max(1, train_cfg.step_epochs * steps_per_epoch)
        return keras.optimizers.schedules.ExponentialDecay(learning_rate, every, train_cfg.step_gamma, staircase=True)
    warmup = min(total - 1, int(math.ceil(train_cfg.warmup_epochs * steps_per_epoch)))
    if warmup > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=total - warmup, warmup_target=learning_rate, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total)


def make_optimizer(train_cfg, steps_per_epoch: int, epochs: int | None = None, learning_rate: float | None = None):
    epochs = train_cfg.epochs if epochs is None else epochs
    rate = train_cfg.learning_rate if learning_rate is None else learning_rate
    schedule = make_schedule(train_cfg, steps_per_epoch, epochs, rate)
    extra = {}
    if train_cfg.gradient_accumulation_steps > 1:
        extra["gradient_accumulation_steps"] = train_cfg.gradient_accumulation_steps
    if train_cfg.ema:
        extra.update(use_ema=True, ema_momentum=float(train_cfg.ema))
    name = train_cfg.optimizer
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=train_cfg.weight_decay, **extra)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(schedule, **extra)
    else:
        optimizer = keras.optimizers.SGD(
            schedule, momentum=0.9, nesterov=True, weight_decay=train_cfg.weight_decay or None, **extra
        )
    return fused_adam(one_rate_per_step(optimizer))


def fused_adam(optimizer):
    """Adam / AdamW updates with TensorFlow's fused `ResourceApplyAdam` kernel: one op per variable instead of
    ~20 Keras ops, with the step's scalars (bias corrections, rate) computed once, not per variable.

    Keras 3.15 traces its Adam update op by op for each variable: 15 s of the lung ensemble's first step (701
    variables) and ten elementwise passes over 186M parameters at every step. The kernel computes Keras' own
    formulas (alpha = lr * sqrt(1 - b2^t) / (1 - b1^t); m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    var -= m alpha / (sqrt(v) + eps)), as tf.keras 2 did, with 1 - beta in float32 (1 - 0.999 = 1.0000467e-3,
    where Keras 3 takes 1e-3 from Python floats): weights agree with Keras' update to ~1e-5 of their change
    (tested). Only without a distribution strategy and without amsgrad; otherwise Keras' own update runs.
    Patched on this instance (the saved config is Keras').
    """
    if keras.backend.backend() != "tensorflow" or not isinstance(optimizer, keras.optimizers.Adam):
        return optimizer
    if optimizer.amsgrad:
        return optimizer
    import tensorflow as tf

    keras_update = optimizer._distributed_tf_update_step

    def update(distribution, grads_and_vars, learning_rate):
        if tf.distribute.has_strategy():
            return keras_update(distribution, grads_and_vars, learning_rate)
        step = tf.cast(optimizer.iterations + 1, "float32")
        scalars = {}

        def constants(dtype):
            if dtype not in scalars:
                beta_1, beta_2 = tf.cast(optimizer.beta_1, dtype), tf.cast(optimizer.beta_2, dtype)
                scalars[dtype] = dict(
                    beta1_power=tf.pow(beta_1, tf.cast(step, dtype)), beta2_power=tf.pow(beta_2, tf.cast(step, dtype)),
                    lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                    epsilon=tf.cast(optimizer.epsilon, dtype),
                )
            return scalars[dtype]

        for grad, var in grads_and_vars:
            index = optimizer._get_variable_index(var)
            m, v = optimizer._momentums[index].value, optimizer._velocities[index].value
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle, m=m.handle, v=v.handle, grad=tf.cast(grad, var.dtype), use_locking=False,
                **constants(var.dtype),
            )

    optimizer._distributed_tf_update_step = update
    return optimizer


def one_rate_per_step(optimizer):
    """Weight decay with the learning rate computed once per step, not once per variable.

    Keras 3.15's TensorFlow optimizer evaluates `learning_rate` (a schedule: for cosine, a cond with two branch
    graphs) inside its per-variable weight-decay function: 701 times in the lung ensemble's train step, 26 s of
    Python tracing before the first step (bench/startup.py --fit). The same rate for every variable, and without a
    distribution strategy the decay is one fused kernel a variable (var -= (wd * lr) var, equal to Keras' var * wd
    * lr to rounding). Patched on this instance, so a saved model's optimizer config is Keras' own.
    """
    if keras.backend.backend() != "tensorflow" or optimizer.weight_decay is None:
        return optimizer
    import tensorflow as tf

    def apply_weight_decay(variables):
        def apply(distribution, variables, **kwargs):
            rate = optimizer.learning_rate  # once, in the same (cross-replica) context Keras evaluates it in
            fused, alphas = not tf.distribute.has_strategy(), {}

            def decay(variable):
                if not optimizer._use_weight_decay(variable):
                    return
                if not fused:
                    lr, wd = tf.cast(rate, variable.dtype), tf.cast(optimizer.weight_decay, variable.dtype)
                    variable.assign_sub(variable * wd * lr)  # Keras' own expression
                    return
                dtype = variable.dtype
                if dtype not in alphas:
                    alphas[dtype] = tf.cast(optimizer.weight_decay, dtype) * tf.cast(rate, dtype)
                # var -= (wd * lr) * var in one kernel: two graph nodes a variable instead of six
                tf.raw_ops.ResourceApplyGradientDescent(
                    var=variable.handle, alpha=alphas[dtype], delta=variable.read_value(), use_locking=False
                )

            for variable in variables:
                if isinstance(variable, keras.Variable):
                    variable = variable.value
                distribution.extended.update(variable, decay, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(apply, optimizer._distribution_strategy, variables)

    optimizer._apply_weight_decay = apply_weight_decay
    return optimizer
