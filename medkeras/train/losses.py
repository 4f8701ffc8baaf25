"""Loss, optimizer and learning-rate schedule from the `train` config, using Keras' own classes."""

from __future__ import annotations

import math

import keras


def make_loss(train_cfg, num_classes: int):
    """-> (loss, one_hot): sparse cross-entropy from logits, or categorical with label smoothing (one-hot labels)."""
    if train_cfg.label_smoothing > 0:
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=train_cfg.label_smoothing), True
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True), False


def make_schedule(train_cfg, steps_per_epoch: int):
    """Constant, or cosine decay to 0 over all steps with a linear warm-up (Keras' CosineDecay(warmup_steps=...))."""
    lr = train_cfg.learning_rate
    if train_cfg.schedule == "constant":
        return lr
    total = max(1, train_cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(math.ceil(train_cfg.warmup_epochs * steps_per_epoch)))
    if warmup > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=total - warmup, warmup_target=lr, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)


def make_optimizer(train_cfg, steps_per_epoch: int):
    schedule = make_schedule(train_cfg, steps_per_epoch)
    name = train_cfg.optimizer
    if name == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=train_cfg.weight_decay)
    if name == "adam":
        return keras.optimizers.Adam(schedule)
    return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=train_cfg.weight_decay or None)
