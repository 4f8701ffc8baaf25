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
        return keras.optimizers.AdamW(schedule, weight_decay=train_cfg.weight_decay, **extra)
    if name == "adam":
        return keras.optimizers.Adam(schedule, **extra)
    return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=train_cfg.weight_decay or None, **extra)
