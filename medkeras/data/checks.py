"""The data section's checks: what `validate` asks of `data.*` before any file is read. Resolves `data.window`
once into the form every module, the saved model and the SavedModel's assets carry: [[level, width], ...] or null.
"""

from __future__ import annotations

from medkeras.config.values import one_of
from medkeras.data.windows import parse_windows
from medkeras.errors import ConfigError


def check_data(cfg) -> None:
    data = cfg.data
    one_of("data.on_bad_file", data.on_bad_file, ("fail", "skip"))
    one_of("data.cache", data.cache, ("auto", "memory", "none"))
    one_of("data.normalize", data.normalize, ("backbone", "dataset"))
    one_of("data.augment_on", data.augment_on, ("auto", "data", "model"))
    one_of("data.augment.fill_mode", data.augment.fill_mode, ("reflect", "constant", "nearest", "wrap"))
    one_of("data.augment.flip", data.augment.flip, ("horizontal", "vertical", "horizontal_and_vertical", "none"))
    for key, low, high in (("clahe", 0, 1), ("blur", 0, 1), ("blur_sigma", 0, 1), ("erasing", 0, 1), ("noise", 0, 255)):
        value = getattr(data.augment, key)
        if not low <= value <= high:  # Keras' layers take these in [0, 1]: refused here, before any file is read
            raise ConfigError(f"config key 'data.augment.{key}' must be in [{low}, {high}], got {value}")
    if data.image_size < 8:
        raise ConfigError(f"config key 'data.image_size' must be >= 8, got {data.image_size}")
    if len(data.split) != 3 or abs(sum(data.split) - 1.0) > 1e-6 or min(data.split) < 0:
        raise ConfigError(f"config key 'data.split' must be three fractions summing to 1, got {data.split}")
    folds, fold = data.folds, data.fold
    if folds and (folds < 2 or not 1 <= fold <= folds) or (not folds and fold):
        raise ConfigError(f"config keys 'data.folds' / 'data.fold' must be K >= 2 and 1..K (or 0 and 0), got {folds} / {fold}")
    try:
        data.window = parse_windows(data.window) or None  # resolved once: [[level, width], ...]
    except ConfigError as exc:
        raise ConfigError(f"config key 'data.window': {exc}") from None
    if data.window and len(data.window) not in (1, 3):  # each window a channel; the stems take 3
        raise ConfigError(f"config key 'data.window' gives {len(data.window)} windows, one channel each; the "
                          "backbones take 3 channels: give 1 window (repeated to 3) or 3")
