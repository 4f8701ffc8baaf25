"""Config checks that need more than a type: names that must exist, numbers in range, combinations that clash.

`validate` also resolves `data.window` once into its one typed form, [[level, width], ...] in HU (or null).
It reads the registries the names come from (backbones, window presets, threshold rules), which import nothing
of medkeras but its errors.
"""

from __future__ import annotations

import difflib

from medkeras.config.schema import Config
from medkeras.data.windows import parse_windows
from medkeras.errors import ConfigError
from medkeras.evaluation.thresholds import parse_rule
from medkeras.models.backbones import check_backbone_name
from medkeras.train.monitors import LOGGED


def _one_of(key, value, allowed):
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (one of: {', '.join(map(str, allowed))})"
        raise ConfigError(f"config key '{key}': unknown value '{value}'{hint}")


def _validate_size_schedule(cfg: Config) -> None:
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
    if min(sizes) < 8 or max(sizes) > cfg.data.image_size:
        raise ConfigError(f"config key 'train.size_schedule' sizes must be 8..data.image_size ({cfg.data.image_size})")
    if cfg.train.size_schedule_members and cfg.train.ensemble != "separate":
        raise ConfigError("config key 'train.size_schedule_members' needs train.ensemble: separate (joint trains all)")
    for name in cfg.train.size_schedule_members or []:
        if name not in cfg.model.backbones:
            raise ConfigError(f"config key 'train.size_schedule_members' names '{name}', not among model.backbones")
    for name in cfg.train.size_schedule_members or cfg.model.backbones:
        if check_backbone_name(name).fixed_size:
            raise ConfigError(f"config key 'train.size_schedule': backbone '{name}' takes one input size only; leave it "
                              "out with train.size_schedule_members (train.ensemble: separate)")


def validate(cfg: Config) -> None:
    """Checks that need more than a type: names that must exist, numbers that must be in range."""
    if not cfg.model.backbones:
        raise ConfigError("config key 'model.backbones' must name at least one backbone")
    for name in cfg.model.backbones:
        try:
            check_backbone_name(name)
        except ConfigError as exc:
            raise ConfigError(f"config key 'model.backbones': {exc}") from None
    _one_of("model.head", cfg.model.head, ("linear", "mlp"))
    _one_of("train.optimizer", cfg.train.optimizer, ("adam", "adamw", "sgd"))
    _one_of("train.schedule", cfg.train.schedule, ("cosine", "step", "plateau", "constant"))
    _one_of("train.loss", cfg.train.loss, ("cross_entropy", "focal", "bce"))
    _one_of("train.precision", cfg.train.precision, ("float32", "mixed_float16", "mixed_bfloat16"))
    _one_of("train.ensemble", cfg.train.ensemble, ("joint", "separate"))
    _one_of("train.strategy", cfg.train.strategy, ("auto", "one_device", "mirrored", "multiworker"))
    _one_of("train.monitor", cfg.train.monitor, LOGGED)
    _validate_size_schedule(cfg)
    if cfg.train.strategy == "multiworker" and cfg.train.ensemble == "separate":
        raise ConfigError("train.strategy multiworker trains the ensemble jointly (set train.ensemble: joint)")
    _one_of("model.fusion", cfg.model.fusion, ("mean", "fitted"))
    _one_of("train.sampling", cfg.train.sampling, ("shuffle", "balanced"))
    if cfg.train.sampling == "balanced" and (cfg.train.class_weight is not None or cfg.train.pos_weight is not None):
        raise ConfigError("train.sampling: balanced already balances the classes; set train.class_weight and "
                          "train.pos_weight to null (they would count the imbalance twice)")
    if cfg.train.class_weight not in (None, "balanced") and not isinstance(cfg.train.class_weight, dict):
        raise ConfigError("config key 'train.class_weight' must be null, balanced or a mapping {class: weight}")
    if cfg.train.freeze_epochs >= cfg.train.epochs and cfg.train.freeze_epochs:
        raise ConfigError("config key 'train.freeze_epochs' must be smaller than 'train.epochs' (phase 2 needs epochs)")
    if not 0.0 <= float(cfg.train.ema) < 1.0:
        raise ConfigError(f"config key 'train.ema' must be in [0, 1) (e.g. 0.99; 0 turns it off), got {cfg.train.ema}")
    if cfg.train.gradient_accumulation_steps < 1:
        raise ConfigError("config key 'train.gradient_accumulation_steps' must be >= 1")
    if cfg.train.steps_per_execution < 1:
        raise ConfigError("config key 'train.steps_per_execution' must be >= 1")
    _one_of("data.on_bad_file", cfg.data.on_bad_file, ("fail", "skip"))
    _one_of("data.cache", cfg.data.cache, ("auto", "memory", "none"))
    _one_of("data.normalize", cfg.data.normalize, ("backbone", "dataset"))
    if isinstance(cfg.model.weights, dict):
        unknown = set(map(str, cfg.model.weights)) - set(cfg.model.backbones) - {"default"}
        if unknown:
            raise ConfigError(f"config key 'model.weights' names {sorted(unknown)}, not among model.backbones")
    elif not isinstance(cfg.model.weights, str):
        raise ConfigError("config key 'model.weights' must be imagenet, none, a file, or {backbone: ...}")
    _one_of("train.finetune_batchnorm", cfg.train.finetune_batchnorm, ("auto", "frozen", "trainable"))
    _one_of("eval.calibrate", cfg.eval.calibrate, ("temperature", "none"))
    for flip in cfg.eval.tta_flips:
        _one_of("eval.tta_flips", flip, ("horizontal", "vertical", "both"))
    parse_rule(cfg.eval.threshold)
    _one_of("data.augment.fill_mode", cfg.data.augment.fill_mode, ("reflect", "constant", "nearest", "wrap"))
    _one_of("data.augment.flip", cfg.data.augment.flip, ("horizontal", "vertical", "horizontal_and_vertical", "none"))
    if cfg.data.image_size < 8:
        raise ConfigError(f"config key 'data.image_size' must be >= 8, got {cfg.data.image_size}")
    if len(cfg.data.split) != 3 or abs(sum(cfg.data.split) - 1.0) > 1e-6 or min(cfg.data.split) < 0:
        raise ConfigError(f"config key 'data.split' must be three fractions summing to 1, got {cfg.data.split}")
    folds, fold = cfg.data.folds, cfg.data.fold
    if folds and (folds < 2 or not 1 <= fold <= folds) or (not folds and fold):
        raise ConfigError(f"config keys 'data.folds' / 'data.fold' must be K >= 2 and 1..K (or 0 and 0), got {folds} / {fold}")
    for level in cfg.eval.aggregate:
        _one_of("eval.aggregate", level, ("series", "patient"))
    _one_of("eval.aggregate_rule", cfg.eval.aggregate_rule, ("mean", "max", "topk"))
    if cfg.eval.aggregate_topk < 1:
        raise ConfigError(f"config key 'eval.aggregate_topk' must be >= 1, got {cfg.eval.aggregate_topk}")
    if cfg.train.epochs < 1 or cfg.train.batch_size < 1:
        raise ConfigError("config keys 'train.epochs' and 'train.batch_size' must be >= 1")
    weights = cfg.model.ensemble_weights
    if weights is not None and len(weights) != len(cfg.model.backbones):
        raise ConfigError(
            f"config key 'model.ensemble_weights' has {len(weights)} values for {len(cfg.model.backbones)} backbones"
        )
    cfg.data.window = parse_windows(cfg.data.window) or None  # resolved once: [[level, width], ...]
    if cfg.data.window and len(cfg.data.window) not in (1, 3):  # each window a channel; the stems take 3
        raise ConfigError(f"config key 'data.window' gives {len(cfg.data.window)} windows, one channel each; the "
                          "backbones take 3 channels: give 1 window (repeated to 3) or 3")
