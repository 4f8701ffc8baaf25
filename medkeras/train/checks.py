"""The train section's checks, and the combinations with the other sections that training alone makes clash
(progressive resizing against fixed-size backbones, balanced sampling against class weights)."""

from __future__ import annotations

from medkeras.config.values import is_study, one_of, plane_size
from medkeras.errors import ConfigError
from medkeras.models.backbones import check_backbone_name
from medkeras.models.volume3d import VOLUME_BACKBONES
from medkeras.train.monitors import LOGGED


def _check_size_schedule(cfg) -> None:
    schedule = cfg.train.size_schedule
    if schedule is None:
        if cfg.train.size_schedule_members:
            raise ConfigError("config key 'train.size_schedule_members' needs 'train.size_schedule'")
        return
    pairs = schedule if isinstance(schedule, list) else None
    if not pairs or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise ConfigError("config key 'train.size_schedule' must be a list of [first epoch, size] pairs")
    epochs = [int(p[0]) for p in pairs]
    sizes = [int(p[1]) for p in pairs]
    if epochs[0] != 1 or epochs != sorted(set(epochs)) or epochs[-1] > cfg.train.epochs:
        raise ConfigError(
            f"config key 'train.size_schedule' must start at epoch 1 with increasing epochs <= train.epochs, got {epochs}"
        )
    study = is_study(cfg)
    full = plane_size(cfg)
    if study and cfg.data.volume_size[1] != cfg.data.volume_size[2]:
        raise ConfigError(f"config key 'train.size_schedule' resizes a study's square plane; data.volume_size "
                          f"{cfg.data.volume_size} is not square in plane")
    least = max([8] + [VOLUME_BACKBONES[n].min_size for n in cfg.model.backbones if n in VOLUME_BACKBONES])
    if min(sizes) < least or max(sizes) > full:
        where = "the plane of data.volume_size, slices kept" if study else "data.image_size"
        raise ConfigError(f"config key 'train.size_schedule' sizes must be {least}..{full} ({where})")
    if cfg.train.size_schedule_members and cfg.train.ensemble != "separate":
        raise ConfigError("config key 'train.size_schedule_members' needs train.ensemble: separate (joint trains all)")
    for name in cfg.train.size_schedule_members or []:
        if name not in cfg.model.backbones:
            raise ConfigError(f"config key 'train.size_schedule_members' names '{name}', not among model.backbones")
    for name in cfg.train.size_schedule_members or cfg.model.backbones:
        if name not in VOLUME_BACKBONES and check_backbone_name(name).fixed_size:
            raise ConfigError(f"config key 'train.size_schedule': backbone '{name}' takes one input size only; leave it "
                              "out with train.size_schedule_members (train.ensemble: separate)")


def check_train(cfg) -> None:
    train = cfg.train
    one_of("train.optimizer", train.optimizer, ("adam", "adamw", "sgd"))
    one_of("train.schedule", train.schedule, ("cosine", "step", "plateau", "constant"))
    one_of("train.loss", train.loss, ("cross_entropy", "focal", "bce"))
    one_of("train.precision", train.precision, ("float32", "mixed_float16", "mixed_bfloat16"))
    one_of("train.ensemble", train.ensemble, ("joint", "separate"))
    one_of("train.strategy", train.strategy, ("auto", "one_device", "mirrored", "multiworker"))
    one_of("train.monitor", train.monitor, LOGGED)
    one_of("train.sampling", train.sampling, ("shuffle", "balanced"))
    one_of("train.finetune_batchnorm", train.finetune_batchnorm, ("auto", "frozen", "trainable"))
    if train.epochs < 1 or train.batch_size < 1:
        raise ConfigError("config keys 'train.epochs' and 'train.batch_size' must be >= 1")
    _check_size_schedule(cfg)
    if train.strategy == "multiworker" and train.ensemble == "separate":
        raise ConfigError("train.strategy multiworker trains the ensemble jointly (set train.ensemble: joint)")
    if train.sampling == "balanced" and (train.class_weight is not None or train.pos_weight is not None):
        raise ConfigError("train.sampling: balanced already balances the classes; set train.class_weight and "
                          "train.pos_weight to null (they would count the imbalance twice)")
    if train.class_weight not in (None, "balanced") and not isinstance(train.class_weight, dict):
        raise ConfigError("config key 'train.class_weight' must be null, balanced or a mapping {class: weight}")
    if train.freeze_epochs >= train.epochs and train.freeze_epochs:
        raise ConfigError("config key 'train.freeze_epochs' must be smaller than 'train.epochs' (phase 2 needs epochs)")
    if not 0.0 <= float(train.ema) < 1.0:
        raise ConfigError(f"config key 'train.ema' must be in [0, 1) (e.g. 0.99; 0 turns it off), got {train.ema}")
    if train.gradient_accumulation_steps < 1:
        raise ConfigError("config key 'train.gradient_accumulation_steps' must be >= 1")
    if train.steps_per_execution < 1:
        raise ConfigError("config key 'train.steps_per_execution' must be >= 1")
