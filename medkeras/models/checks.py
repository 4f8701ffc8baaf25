"""The model section's checks: backbone names from the registry, heads, fusion, weights and ensemble weights."""

from __future__ import annotations

from medkeras.config.values import STUDY_INPUTS, one_of
from medkeras.errors import ConfigError
from medkeras.models.backbones import check_backbone_name
from medkeras.models.volume3d import VOLUME_BACKBONES


def check_model(cfg) -> None:
    model = cfg.model
    if not model.backbones:
        raise ConfigError("config key 'model.backbones' must name at least one backbone")
    one_of("model.input", model.input, ("slice", *STUDY_INPUTS))
    for name in model.backbones:
        if name in VOLUME_BACKBONES and model.input in STUDY_INPUTS:
            continue
        if name in VOLUME_BACKBONES:
            raise ConfigError(f"config key 'model.backbones': {name} is a 3D backbone; it sees studies "
                              "(set model.input: volume, or slab / series with it as a volume member)")
        if model.input == "volume":
            raise ConfigError(f"config key 'model.backbones': {name} is a 2D backbone; model.input volume takes 3D "
                              f"ones ({', '.join(VOLUME_BACKBONES)}); 2D backbones see studies as slab or series")
        try:
            check_backbone_name(name)
        except ConfigError as exc:
            raise ConfigError(f"config key 'model.backbones': {exc}") from None
    if model.input in STUDY_INPUTS:
        check_study(cfg)
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


def check_study(cfg) -> None:
    """What study inputs need: windows, a volume size (in-plane the 2D backbones' image size), an odd slab, and none
    of the slice-only switches."""
    from medkeras.data.augment3d import check_volume_augment
    from medkeras.data.studies import geometry

    data, kind = cfg.data, cfg.model.input
    if data.volume_size is None:
        raise ConfigError(f"model.input {kind} needs data.volume_size [D, H, W]: every study is resampled to it "
                          "(a batch holds one shape)")
    if not data.window:
        raise ConfigError(f"model.input {kind} needs data.window (lung, [-600, 1500], ...): CT studies are windowed "
                          "from HU")
    size = data.volume_size = geometry(data.volume_size, "data.volume_size", whole=True)
    data.spacing = geometry(data.spacing, "data.spacing")
    two_d = [n for n in cfg.model.backbones if n not in VOLUME_BACKBONES]
    if two_d and size[1:] != [data.image_size, data.image_size]:
        raise ConfigError(f"data.volume_size {size} and data.image_size {data.image_size} disagree: the 2D "
                          f"backbones ({', '.join(two_d)}) see {data.image_size} px slices; give [D, "
                          f"{data.image_size}, {data.image_size}] or change data.image_size")
    if data.slab < 1 or data.slab % 2 == 0 or (kind == "slab" and data.slab > size[0]):
        raise ConfigError(f"config key 'data.slab' must be an odd number of slices, at most the study's "
                          f"{size[0]}, got {data.slab}")
    for name in cfg.model.backbones:
        if name in VOLUME_BACKBONES:
            spec = VOLUME_BACKBONES[name]
            if min(size) < spec.min_size:
                raise ConfigError(f"{name} needs data.volume_size of at least {spec.min_size} on every axis, "
                                  f"got {size}")
    try:
        check_volume_augment(data.augment)
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None
