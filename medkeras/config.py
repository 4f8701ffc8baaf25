"""One typed config for a run: dataclasses with defaults, loaded from YAML, overridden by `--set key=value`.

Unknown keys are errors that name the closest valid key, so a typo never silently trains the wrong model.
The fully resolved config is what a run saves as `config.yaml`, and it loads back to the same object.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from medkeras.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class AugmentConfig:
    """Training-split augmentation, applied with Keras' own preprocessing layers (factors as Keras takes them)."""

    flip: str = "horizontal"  # "horizontal", "vertical", "horizontal_and_vertical" or "none"
    rotation: float = 0.05  # fraction of a full turn (0.05 = +-18 degrees)
    zoom: float = 0.0  # fraction of the side
    translation: float = 0.0  # fraction of the side
    fill_mode: str = "reflect"  # what rotation/zoom/translation fill with: reflect, constant (black: CT air), nearest
    brightness: float = 0.1  # fraction of the value range
    contrast: float = 0.1
    noise: float = 0.0  # Gaussian noise standard deviation, in pixel units (0-255)
    blur: float = 0.0  # probability-like factor of RandomGaussianBlur (0: off)
    blur_sigma: float = 1.0
    clahe: float = 0.0  # probability of applying CLAHE (Keras' ContrastLimitedAdaptiveHistogramEqualization)
    clahe_clip_limit: float = 2.0
    randaugment: int = 0  # RandAugment operations per image (0: off)
    randaugment_factor: float = 0.3
    erasing: float = 0.0  # RandomErasing factor (a GridMask-like occlusion from Keras core; 0: off)


@dataclass
class DataConfig:
    """Where the images come from and how they become model inputs."""

    source: str = "breastmnist"  # bundled name, .npz, class-folder or CSV manifest
    image_size: int = 224
    window: Any = None  # CT only: preset name, [level, width], or a list of them (one per channel)
    split: list = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train/val/test when no split is given
    class_names: Optional[list] = None  # default: from the dataset
    positive_class: Optional[str] = None  # binary tasks: the class whose probability is scored
    on_bad_file: str = "fail"  # "fail" or "skip"
    cache: str = "auto"  # "auto" (in memory when it fits), "memory" or "none"
    normalize: str = "backbone"  # "backbone" (its ImageNet statistics) or "dataset" (train mean/std, see below)
    mean: Optional[list] = None  # filled in by fit with normalize: dataset (per channel, pixels / 255)
    std: Optional[list] = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    """What to build: one backbone or an ensemble of several, each with a replaced class head."""

    backbones: list = field(default_factory=lambda: ["resnet50"])
    weights: Any = "none"  # "imagenet", "none", a .weights.h5 path, or {backbone: one of those, default: ...}
    head: str = "linear"  # "linear" (Dense K) or "mlp" (Dropout .5, Dense 128 ReLU, Dropout .3, Dense K)
    dropout: float = 0.0  # before the linear head
    ensemble_weights: Optional[list] = None  # fixed weights for averaging the members' logits
    fusion: str = "mean"  # "mean" (or ensemble_weights), or "fitted": weights of minimum validation log-loss


@dataclass
class TrainConfig:
    """How to fit."""

    epochs: int = 10
    batch_size: int = 32
    seed: int = 42
    optimizer: str = "adamw"  # "adam", "adamw" or "sgd"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" (with warmup), "step", "plateau" (reduce on plateau) or "constant"
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # "step": multiply the rate by step_gamma every step_epochs
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    loss: str = "cross_entropy"  # "cross_entropy", "focal" (Keras' CategoricalFocalCrossentropy) or "bce"
    focal_gamma: float = 2.0
    pos_weight: Optional[float] = None  # binary: weight of positive-class images (BCE pos_weight)
    class_weight: Any = None  # None, "balanced", or {class name: weight}; applied as sample weights
    freeze_backbone: bool = False  # train the head only, every epoch (backbones frozen, BatchNorm in inference)
    freeze_epochs: int = 0  # two-phase transfer learning: phase 1 (frozen) epochs; phase 2 fine-tunes the rest
    finetune_learning_rate: Optional[float] = None  # phase 2 rate (default learning_rate / 10)
    early_stopping_patience: int = 0  # 0: off
    gradient_accumulation_steps: int = 1
    # Exponential moving average of the weights (e.g. 0.99; 0: off): validated, checkpointed and saved with the
    # averaged weights (Keras' optimizer EMA + SwapEMAWeights at every epoch's end). Helps small datasets.
    ema: float = 0.0
    precision: str = "float32"  # "float32", "mixed_float16" or "mixed_bfloat16" (measure first on CPU)
    deterministic: bool = False  # TF op determinism (slower)
    ensemble: str = "joint"  # "joint" (one fit of the whole graph) or "separate" (each member, then assembled)
    strategy: str = "auto"  # tf.distribute: "auto" (mirrored over >1 GPU), "one_device", "mirrored", "multiworker"
    # Progressive resizing (EfficientNetV2): [[first epoch, size], ...], e.g. [[1, 128], [4, 256], [7, 384]];
    # validation, evaluation and export stay at data.image_size. Members: only these (default: all).
    size_schedule: Optional[list] = None
    size_schedule_members: Optional[list] = None
    steps_per_epoch: Optional[int] = None  # default: the whole training split
    monitor: str = "val_auroc"  # best checkpoint by this validation metric (higher is better)
    jit_compile: Any = False  # XLA: true, false or "auto" (measure first: it slows EfficientNet on CPU)
    run_eagerly: bool = False
    # Train steps per compiled call (Keras' compile(steps_per_execution)): fewer Python round trips for small
    # models; batch-level callbacks then run every N steps. Lowered to a divisor of the epoch's steps (Keras runs
    # whole executions). Ignored by the multi-worker loop.
    steps_per_execution: int = 1
    verbose: int = 1  # Keras' progress bar: 0 silent, 1 bar, 2 one line per epoch


@dataclass
class EvalConfig:
    """How to evaluate."""

    split: str = "test"
    batch_size: int = 64
    threshold: str = "0.5"  # binary operating point: a number, youden, f1, sensitivity@0.95, specificity@0.9
    calibrate: str = "temperature"  # "temperature" (fitted on validation logits) or "none"
    bootstrap: int = 1000  # resamples for the 95% intervals (0: none)
    ci_level: float = 0.95
    ece_bins: int = 15
    tta: bool = False  # average logits over the flips below
    tta_flips: list = field(default_factory=lambda: ["horizontal"])  # "horizontal", "vertical", "both"
    gradcam_examples: int = 4  # true positives and worst false negatives shown in the report


@dataclass
class TrackConfig:
    """Experiment tracking beyond the run directory and TensorBoard (which are always on)."""

    mlflow: bool = False  # log params, per-epoch metrics, test metrics and the report to MLflow (pip install mlflow)
    experiment: Optional[str] = None  # MLflow experiment (default: the config's name)
    tracking_uri: Optional[str] = None  # default: MLflow's own (MLFLOW_TRACKING_URI, or its local store)


@dataclass
class ExportConfig:
    """How to export for TF Serving."""

    name: str = "medkeras"


@dataclass
class Config:
    """The whole run. `Config()` is a valid config; YAML files and `--set` only change what they name."""

    name: str = "run"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path) -> None:
        from medkeras.utils import atomic_write_text

        atomic_write_text(path, self.to_yaml())


def _all_keys(cls, prefix="") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        sub = _nested_class(cls, f.name)
        if sub is not None:
            keys.extend(_all_keys(sub, key + "."))
    return keys


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _nested_class(cls, name):
    hint = _hints(cls)[name]
    return hint if dataclasses.is_dataclass(hint) else None


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, hint, value):
    """Check `value` against the field's type hint; ints widen to floats, everything else must match."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, args[0], value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    expected = origin or hint
    if expected is list and isinstance(value, (str, int, float)):
        return [value]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' must be {getattr(expected, '__name__', expected)}, got {value!r}")
    return value


def _apply(obj, values: dict, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {values!r}")
    hints = _hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = prefix + str(name)
        if name not in names:
            raise _unknown_key(key)
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(key, hints[name], value))


def set_key(cfg: Config, key: str, value) -> None:
    """Set one dotted key (`train.epochs`) to an already-parsed value, with the same checks as YAML."""
    parts = key.split(".")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    _apply(cfg, nested)


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ("train.epochs", 3); the value is read as YAML (`[a, b]`, `true`, `null`, `1e-3`)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {raw!r}") from exc
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "1e-3" as a string; users mean a number
    return key.strip(), value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def bundled_configs() -> dict[str, Path]:
    """Name -> path of every YAML in `configs/`."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def resolve_config_path(name_or_path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    bundled = bundled_configs()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    close = difflib.get_close_matches(str(name_or_path), list(bundled), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (bundled: {', '.join(bundled)})"
    raise ConfigError(f"unknown config '{name_or_path}'{hint}")


def load_config(name_or_path="demo", overrides=()) -> Config:
    """Load a bundled config by name or a YAML file, then apply `overrides` ("key=value" strings or pairs).

    >>> cfg = load_config("demo", ["train.epochs=1"])
    >>> cfg.train.epochs
    1
    """
    cfg = Config()
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {str(exc).splitlines()[0]}") from exc
        _apply(cfg, values)
        if "name" not in values:
            cfg.name = path.stem
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_key(cfg, key, value)
    validate(cfg)
    return cfg


def from_dict(values: dict) -> Config:
    cfg = Config()
    _apply(cfg, values)
    validate(cfg)
    return cfg


def _one_of(key, value, allowed):
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (one of: {', '.join(map(str, allowed))})"
        raise ConfigError(f"config key '{key}': unknown value '{value}'{hint}")


def size_schedule(schedule, epochs: int, image_size: int) -> list[int]:
    """The training image size of each epoch 1..epochs under `train.size_schedule` (data.image_size without one)."""
    sizes = [image_size] * epochs
    for first, size in sorted(schedule or []):
        for epoch in range(int(first), epochs + 1):
            sizes[epoch - 1] = int(size)
    return sizes


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


def validate(cfg: Config) -> None:
    """Checks that need more than a type: names that must exist, numbers that must be in range."""
    from medkeras.models.backbones import check_backbone_name

    if not cfg.model.backbones:
        raise ConfigError("config key 'model.backbones' must name at least one backbone")
    for name in cfg.model.backbones:
        check_backbone_name(name)
    _one_of("model.head", cfg.model.head, ("linear", "mlp"))
    _one_of("train.optimizer", cfg.train.optimizer, ("adam", "adamw", "sgd"))
    _one_of("train.schedule", cfg.train.schedule, ("cosine", "step", "plateau", "constant"))
    _one_of("train.loss", cfg.train.loss, ("cross_entropy", "focal", "bce"))
    _one_of("train.precision", cfg.train.precision, ("float32", "mixed_float16", "mixed_bfloat16"))
    _one_of("train.ensemble", cfg.train.ensemble, ("joint", "separate"))
    _one_of("train.strategy", cfg.train.strategy, ("auto", "one_device", "mirrored", "multiworker"))
    _validate_size_schedule(cfg)
    if cfg.train.strategy == "multiworker" and cfg.train.ensemble == "separate":
        raise ConfigError("train.strategy multiworker trains the ensemble jointly (set train.ensemble: joint)")
    _one_of("model.fusion", cfg.model.fusion, ("mean", "fitted"))
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
    _one_of("eval.calibrate", cfg.eval.calibrate, ("temperature", "none"))
    for flip in cfg.eval.tta_flips:
        _one_of("eval.tta_flips", flip, ("horizontal", "vertical", "both"))
    from medkeras.evaluate.thresholds import parse_rule

    parse_rule(cfg.eval.threshold)
    _one_of("data.augment.fill_mode", cfg.data.augment.fill_mode, ("reflect", "constant", "nearest", "wrap"))
    _one_of("data.augment.flip", cfg.data.augment.flip, ("horizontal", "vertical", "horizontal_and_vertical", "none"))
    if cfg.data.image_size < 8:
        raise ConfigError(f"config key 'data.image_size' must be >= 8, got {cfg.data.image_size}")
    if len(cfg.data.split) != 3 or abs(sum(cfg.data.split) - 1.0) > 1e-6 or min(cfg.data.split) < 0:
        raise ConfigError(f"config key 'data.split' must be three fractions summing to 1, got {cfg.data.split}")
    if cfg.train.epochs < 1 or cfg.train.batch_size < 1:
        raise ConfigError("config keys 'train.epochs' and 'train.batch_size' must be >= 1")
    weights = cfg.model.ensemble_weights
    if weights is not None and len(weights) != len(cfg.model.backbones):
        raise ConfigError(
            f"config key 'model.ensemble_weights' has {len(weights)} values for {len(cfg.model.backbones)} backbones"
        )
    if cfg.data.window is not None:
        from medkeras.data.windows import parse_windows

        parse_windows(cfg.data.window)
