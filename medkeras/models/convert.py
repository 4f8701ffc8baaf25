"""PyTorch checkpoints -> `.weights.h5` for the architectures written here (torchvision / timm key layouts).

Each Keras layer with weights is named so that one rule per family gives its PyTorch module: ResNet-18/34 as
torchvision and timm name them, VGG19-BN as torchvision, RegNetY and ConvNeXt V2 as timm. Tensors are laid out
for Keras (conv kernels OIHW -> HWIO, depthwise OIHW -> HWOI, dense transposed, VGG's first fc re-ordered from
PyTorch's channel-first flatten), BatchNorm keeps its running statistics, and the ImageNet classifier is dropped.
Every other tensor must be used and every Keras weight filled, so a checkpoint of another architecture or size
is refused with the key that does not fit.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from medkeras.errors import ConfigError, MedkerasError

FAMILIES = {
    "resnet18": "resnet",
    "resnet34": "resnet",
    "vgg19_bn": "vgg",
    "regnety_4gf": "regnet",
    "regnety_8gf": "regnet",
    "convnextv2_atto": "convnext",
    "convnextv2_nano": "convnext",
    "convnextv2_tiny": "convnext",
    "convnextv2_base": "convnext",
}
# where users find each checkpoint (for messages, the seed configs and the README)
SOURCES = {
    "resnet": "torchvision resnet18/resnet34 (.pth) or timm resnet18/resnet34 (.safetensors)",
    "vgg": "torchvision vgg19_bn (.pth)",
    "regnet": "timm regnety_040 / regnety_080 (.safetensors)",
    "convnext": "timm convnextv2_atto/nano/tiny/base (.safetensors)",
}
CLASSIFIERS = {"resnet": ("fc.",), "vgg": ("classifier.6.",), "regnet": ("head.fc.",), "convnext": ("head.fc.",)}
_IGNORED = ("num_batches_tracked",)


def _resnet(name):
    if name in ("stem_conv", "stem_bn"):
        return {"stem_conv": "conv1", "stem_bn": "bn1"}[name]
    m = re.fullmatch(r"stage(\d+)_block(\d+)_(conv1|bn1|conv2|bn2|down_conv|down_bn)", name)
    if m:
        part = {"down_conv": "downsample.0", "down_bn": "downsample.1"}.get(m[3], m[3])
        return f"layer{m[1]}.{int(m[2]) - 1}.{part}"
    return None


def _regnet(name):
    if name in ("stem_conv", "stem_bn"):
        return f"stem.{name[5:]}"
    m = re.fullmatch(r"stage(\d+)_block(\d+)_(a|a_bn|b|b_bn|c|c_bn|se_reduce|se_expand|proj|proj_bn)", name)
    if m:
        part = {"a": "conv1.conv", "a_bn": "conv1.bn", "b": "conv2.conv", "b_bn": "conv2.bn", "c": "conv3.conv",
                "c_bn": "conv3.bn", "se_reduce": "se.fc1", "se_expand": "se.fc2", "proj": "downsample.conv",
                "proj_bn": "downsample.bn"}[m[3]]
        return f"s{m[1]}.b{m[2]}.{part}"
    return None


def _convnext(name):
    fixed = {"stem_conv": "stem.0", "stem_norm": "stem.1", "head_norm": "head.norm"}
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"stage(\d+)_down_(norm|conv)", name)
    if m:
        return f"stages.{int(m[1]) - 1}.downsample.{0 if m[2] == 'norm' else 1}"
    m = re.fullmatch(r"stage(\d+)_block(\d+)_(dwconv|norm|pwconv1|grn|pwconv2)", name)
    if m:
        part = {"dwconv": "conv_dw", "norm": "norm", "pwconv1": "mlp.fc1", "grn": "mlp.grn", "pwconv2": "mlp.fc2"}
        return f"stages.{int(m[1]) - 1}.blocks.{int(m[2]) - 1}.{part[m[3]]}"
    return None


def _vgg_names(model) -> dict:
    """torchvision's `features` is one Sequential: conv, bn, relu per conv and one max-pool per block, numbered
    in order; the classifier is fc (0), relu, dropout, fc (3), relu, dropout, fc (6)."""
    names, index = {"fc1": "classifier.0", "fc2": "classifier.3"}, 0
    for layer in model.layers:
        kind = type(layer).__name__
        if re.fullmatch(r"block\d+_(conv|bn|relu)\d+|block\d+_pool", layer.name):
            if kind in ("Conv2D", "BatchNormalization"):
                names[layer.name] = f"features.{index}"
            index += 1
    return names


def _layout(weight: np.ndarray, kind: str, want: tuple, chw=None) -> np.ndarray:
    """One PyTorch tensor in Keras' layout (`want`: the Keras variable's shape)."""
    if kind == "Dense" and weight.ndim == 4 and weight.shape[2:] == (1, 1):
        weight = weight[:, :, 0, 0]  # timm's small ConvNeXt V2 (atto..nano) run their MLP as 1x1 convs
    if weight.ndim == 4 and kind == "DepthwiseConv2D":
        return weight.transpose(2, 3, 0, 1)
    if weight.ndim == 4:
        return weight.transpose(2, 3, 1, 0)
    if weight.ndim == 2 and kind == "Dense":
        if chw is not None:  # PyTorch flattened (C, H, W); Keras flattens (H, W, C)
            channels, height, width = chw
            return weight.reshape(-1, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])
        return weight.T
    if kind == "GlobalResponseNorm" and weight.size == int(np.prod(want)):
        return weight.reshape(want)  # timm (dim,) -> (1, 1, 1, dim)
    return weight


def _tensors_for(layer, prefix: str) -> list[str]:
    kind = type(layer).__name__
    if kind == "BatchNormalization":
        return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
    if kind in ("LayerNormalization", "GlobalResponseNorm"):
        return [f"{prefix}.weight", f"{prefix}.bias"]
    return [f"{prefix}.weight"] + ([f"{prefix}.bias"] if getattr(layer, "use_bias", False) else [])


@dataclass
class Conversion:
    """What a conversion did: tensors and parameters taken, tensors left out (the classifier), seconds."""

    arch: str
    tensors: int = 0
    parameters: int = 0
    dropped: list = field(default_factory=list)
    seconds: float = 0.0


def family_of(arch: str) -> str:
    from medkeras.models.backbones import check_backbone_name

    check_backbone_name(arch)
    if arch not in FAMILIES:
        known = ", ".join(FAMILIES)
        raise ConfigError(f"no PyTorch checkpoint layout for '{arch}': convert-weights knows {known} "
                          f"(keras.applications backbones load their own ImageNet weights)")
    return FAMILIES[arch]


def load_state_dict(model, state: dict, family: str, source: str = "checkpoint") -> Conversion:
    """Fill `model` (a backbone of `family`, any width or depth) from a PyTorch state dict, in place."""
    chw = {}
    if family == "vgg":
        flat = model.get_layer("flatten").input.shape  # (None, H, W, C) before fc1
        chw["fc1"] = (flat[3], flat[1], flat[2])
        rule = _vgg_names(model).get
    else:
        rule = {"resnet": _resnet, "regnet": _regnet, "convnext": _convnext}[family]
    report = Conversion(model.name)
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = rule(layer.name)
        if prefix is None:
            raise MedkerasError(f"internal: no PyTorch name for layer '{layer.name}' of {model.name}")
        names = _tensors_for(layer, prefix)
        values = []
        for name, variable in zip(names, layer.weights):
            if name not in state:
                raise MedkerasError(f"{source}: no tensor '{name}' (for layer {layer.name}): is it a "
                                    f"{SOURCES[family].split(' (')[0]}-style checkpoint of this architecture?")
            want = tuple(variable.shape)
            value = _layout(np.asarray(state[name], dtype="float32"), type(layer).__name__, want, chw.get(layer.name))
            if value.shape != want:
                raise MedkerasError(f"{source}: '{name}' has shape {tuple(state[name].shape)}, layer {layer.name} "
                                    f"needs {want} (another width or variant?)")
            values.append(value)
            used.add(name)
        if len(names) != len(layer.weights):
            raise MedkerasError(f"internal: {layer.name} has {len(layer.weights)} weights, mapped {len(names)}")
        layer.set_weights(values)
        report.tensors += len(values)
        report.parameters += int(sum(v.size for v in values))
    left = sorted(k for k in state if k not in used and not k.endswith(_IGNORED))
    report.dropped = [k for k in left if k.startswith(CLASSIFIERS[family])]
    extra = [k for k in left if k not in report.dropped]
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise MedkerasError(f"{source}: tensors this architecture does not have: {', '.join(extra[:3])}{more} "
                            f"(a deeper or different model?)")
    return report


def convert_weights(arch: str, checkpoint, out) -> Conversion:
    """Read a PyTorch checkpoint for registry backbone `arch` and write its Keras weights to `out` (atomically)."""
    from pathlib import Path

    from medkeras.models.backbones import build_backbone
    from medkeras.models.checkpoints import read_state_dict
    from medkeras.utils import atomic_path

    family = family_of(arch)
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise ConfigError(f"{out}: the output must end in .weights.h5 (what model.weights loads)")
    start = time.perf_counter()
    state = read_state_dict(checkpoint)
    model = build_backbone(arch, 224)
    report = load_state_dict(model, state, family, source=str(checkpoint))
    with atomic_path(out, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    report.seconds = time.perf_counter() - start
    return report
