"""The model section's checks: backbone names from the registry, heads, fusion, weights and ensemble weights."""

from __future__ import annotations

from medkeras.config.values import one_of
from medkeras.errors import ConfigError
from medkeras.models.backbones import check_backbone_name


def check_model(cfg) -> None:
    model = cfg.model
    if not model.backbones:
        raise ConfigError("config key 'model.backbones' must name at least one backbone")
    for name in model.backbones:
        try:
            check_backbone_name(name)
        except ConfigError as exc:
            raise ConfigError(f"config key 'model.backbones': {exc}") from None
    one_of("model.head", model.head, ("linear", "mlp"))
    one_of("model.fusion", model.fusion, ("mean", "fitted"))
    if isinstance(model.weights, dict):
        unknown = set(map(str, model.weights)) - set(model.backbones) - {"default"}
        if unknown:
            raise ConfigError(f"config key 'model.weights' names {sorted(unknown)}, not among model.backbones")
    elif not isinstance(model.weights, str):
        raise ConfigError("config key 'model.weights' must be imagenet, none, a file, or {backbone: ...}")
    weights = model.ensemble_weights
    if weights is not None and len(weights) != len(model.backbones):
        raise ConfigError(
            f"config key 'model.ensemble_weights' has {len(weights)} values for {len(model.backbones)} backbones"
        )
