"""The one backbone registry: name -> constructor, default input size, its own preprocessing, minimum size.

Everything that needs to know about a backbone asks here. A backbone is a Keras model from an image
(preprocessed as its entry says) to pooled features; `medkeras.models.build_member` adds the class head.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from medkeras.errors import ConfigError, MedkerasError


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry. `build(input_shape, weights)` returns a feature model (pooled, 1-D output)."""

    name: str
    build: Callable
    default_size: int
    preprocessing: str  # an ImagePreprocessing mode
    min_size: int = 32
    imagenet: bool = True  # Keras can load ImageNet weights for it
    slow: bool = False  # too large to build in the quick test suite
    description: str = ""
    fixed_size: bool = False  # its graph needs one input size (no progressive resizing)


def _keras_app(attr, input_shape, weights, **extra):
    import keras

    constructor = getattr(keras.applications, attr)
    return constructor(include_top=False, weights=weights, input_shape=tuple(input_shape), pooling="avg", **extra)


def _own(builder, input_shape, weights, **kwargs):
    """An architecture written in this project: `builder` is "module:function" under medkeras.models."""
    import importlib

    if weights is not None:
        raise AssertionError("own architectures get weights from files only")  # guarded in build_backbone
    module, function = builder.split(":")
    return getattr(importlib.import_module(f"medkeras.models.{module}"), function)(tuple(input_shape), **kwargs)


REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"backbone '{spec.name}' registered twice")
    REGISTRY[spec.name] = spec
    return spec


# keras.applications: (registry name, attribute, default size, preprocessing, min size, slow). NASNet's cell
# additions fail on inputs of unknown size (measured): it takes one size only.
_FIXED_SIZE = {"nasnetmobile", "nasnetlarge"}
_KERAS_APPS = [
    ("vgg16", "VGG16", 224, "caffe", 32, False),
    ("vgg19", "VGG19", 224, "caffe", 32, False),
    ("resnet50", "ResNet50", 224, "caffe", 32, False),
    ("resnet101", "ResNet101", 224, "caffe", 32, True),
    ("resnet152", "ResNet152", 224, "caffe", 32, True),
    ("resnet50v2", "ResNet50V2", 224, "tf", 32, False),
    ("resnet101v2", "ResNet101V2", 224, "tf", 32, True),
    ("resnet152v2", "ResNet152V2", 224, "tf", 32, True),
    ("densenet121", "DenseNet121", 224, "torch", 32, False),
    ("densenet169", "DenseNet169", 224, "torch", 32, True),
    ("densenet201", "DenseNet201", 224, "torch", 32, True),
    ("mobilenet", "MobileNet", 224, "tf", 32, False),
    ("mobilenetv2", "MobileNetV2", 224, "tf", 32, False),
    ("mobilenetv3small", "MobileNetV3Small", 224, "none", 32, False),
    ("mobilenetv3large", "MobileNetV3Large", 224, "none", 32, False),
    ("efficientnetb0", "EfficientNetB0", 224, "none", 32, False),
    ("efficientnetb1", "EfficientNetB1", 240, "none", 32, True),
    ("efficientnetb2", "EfficientNetB2", 260, "none", 32, True),
    ("efficientnetb3", "EfficientNetB3", 300, "none", 32, True),
    ("efficientnetb4", "EfficientNetB4", 380, "none", 32, True),
    ("efficientnetb5", "EfficientNetB5", 456, "none", 32, True),
    ("efficientnetb6", "EfficientNetB6", 528, "none", 32, True),
    ("efficientnetb7", "EfficientNetB7", 600, "none", 32, True),
    ("efficientnetv2b0", "EfficientNetV2B0", 224, "none", 32, False),
    ("efficientnetv2b1", "EfficientNetV2B1", 240, "none", 32, True),
    ("efficientnetv2b2", "EfficientNetV2B2", 260, "none", 32, True),
    ("efficientnetv2b3", "EfficientNetV2B3", 300, "none", 32, True),
    ("efficientnetv2s", "EfficientNetV2S", 384, "none", 32, True),
    ("efficientnetv2m", "EfficientNetV2M", 480, "none", 32, True),
    ("efficientnetv2l", "EfficientNetV2L", 480, "none", 32, True),
    ("convnext_tiny", "ConvNeXtTiny", 224, "none", 32, False),
    ("convnext_small", "ConvNeXtSmall", 224, "none", 32, True),
    ("convnext_base", "ConvNeXtBase", 224, "none", 32, True),
    ("convnext_large", "ConvNeXtLarge", 224, "none", 32, True),
    ("convnext_xlarge", "ConvNeXtXLarge", 224, "none", 32, True),
    ("xception", "Xception", 299, "tf", 71, False),
    ("inceptionv3", "InceptionV3", 299, "tf", 75, False),
    ("inceptionresnetv2", "InceptionResNetV2", 299, "tf", 75, True),
    ("nasnetmobile", "NASNetMobile", 224, "tf", 32, True),
    ("nasnetlarge", "NASNetLarge", 331, "tf", 32, True),
]
for _name, _attr, _size, _prep, _min, _slow in _KERAS_APPS:
    register(
        BackboneSpec(
            _name, partial(_keras_app, _attr), _size, _prep, _min, slow=_slow, description=f"keras.applications.{_attr}",
            fixed_size=_name in _FIXED_SIZE,
        )
    )

register(
    BackboneSpec(
        "resnet18",
        partial(_own, "resnet:basic_resnet", blocks=(2, 2, 2, 2), name="resnet18"),
        224,
        "torch",
        imagenet=False,
        description="ResNet-18 (basic blocks, torchvision layout)",
    )
)
register(
    BackboneSpec(
        "resnet34",
        partial(_own, "resnet:basic_resnet", blocks=(3, 4, 6, 3), name="resnet34"),
        224,
        "torch",
        imagenet=False,
        description="ResNet-34 (basic blocks, torchvision layout)",
    )
)
register(
    BackboneSpec(
        "resnet18_small",
        partial(
            _own, "resnet:basic_resnet", blocks=(2, 2, 2, 2), widths=(32, 64, 128, 256), stem="small", name="resnet18_small"
        ),
        32,
        "tf",
        min_size=8,
        imagenet=False,
        description="ResNet-18 for 28-64 px images: 3x3 stride-1 stem, no max-pool, half width (MedMNIST style)",
    )
)
register(
    BackboneSpec(
        "cnn8_small",
        partial(_own, "resnet:plain_cnn", widths=(32, 64, 128, 256), name="cnn8_small"),
        32,
        "tf",
        min_size=8,
        imagenet=False,
        description="Plain 8-conv BatchNorm CNN for 28-64 px images",
    )
)

register(
    BackboneSpec(
        "vgg19_bn",
        partial(_own, "vgg:vgg_bn"),
        224,
        "torch",
        imagenet=False,
        slow=True,
        description="VGG19 with BatchNorm and its fc 4096-4096 body (torchvision vgg19_bn)",
        fixed_size=True,  # torchvision's adaptive pool to 7x7 has bins only for a known size
    )
)
for _variant, _gf in (("regnety_4gf", "4GF"), ("regnety_8gf", "8GF")):
    register(
        BackboneSpec(
            _variant,
            partial(_own, "regnet:regnety", variant=_variant),
            224,
            "torch",
            imagenet=False,
            slow=_variant == "regnety_8gf",
            description=f"RegNetY-{_gf} (pycls / timm widths; Keras 3 dropped RegNet)",
        )
    )
for _variant, _slow in (("convnextv2_atto", False), ("convnextv2_tiny", False), ("convnextv2_base", True)):
    register(
        BackboneSpec(
            _variant,
            partial(_own, "convnextv2:convnextv2", variant=_variant),
            224,
            "torch",
            imagenet=False,
            slow=_slow,
            description=f"ConvNeXt V2 {_variant.split('_')[1].title()} (GRN blocks)",
        )
    )


def check_backbone_name(name: str) -> BackboneSpec:
    if name not in REGISTRY:
        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else " (see `medkeras backbones`)"
        raise ConfigError(f"unknown backbone '{name}'{hint}")
    return REGISTRY[name]


def get_backbone_spec(name: str) -> BackboneSpec:
    return check_backbone_name(name)


def build_backbone(name: str, image_size: int, weights: str = "none", dynamic: bool = False):
    """Build a registry backbone for square `image_size` inputs; returns the (pooled-feature) Keras model.

    `dynamic`: accept any input size (progressive resizing trains at several); `image_size` is then the largest.

    `weights`: "none" (random init), "imagenet" (Keras' own loader and its cache in ~/.keras/models), or a path
    to a `.weights.h5` file saved from the same backbone.
    """
    spec = check_backbone_name(name)
    if image_size < spec.min_size:
        raise ConfigError(f"backbone '{name}' needs images of at least {spec.min_size} px, got {image_size}")
    shape = (None, None, 3) if dynamic else (image_size, image_size, 3)
    weights = "none" if weights in (None, "none", "None") else str(weights)
    if weights == "imagenet":
        if not spec.imagenet:
            raise ConfigError(
                f"no ImageNet weights for '{name}' in Keras: set model.weights to none or a .weights.h5 file"
            )
        try:
            return spec.build(shape, "imagenet")
        except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception on a failed download
            if "fetch" in str(exc).lower() or "url" in str(exc).lower():
                raise MedkerasError(offline_message(name, str(exc))) from exc
            raise
    model = spec.build(shape, None)
    if weights != "none":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: weights file not found (model.weights: imagenet, none or a .weights.h5 path)")
        try:
            model.load_weights(str(path))
        except Exception as exc:  # noqa: BLE001
            raise MedkerasError(f"{path}: cannot load weights into '{name}': {str(exc).splitlines()[0]}") from exc
    return model


def offline_message(name: str, error: str) -> str:
    """What to do when Keras cannot download a backbone's ImageNet weights: the file to place, and where."""
    import re

    url = re.search(r"https?://\S+?\.h5", error)
    if url is None:
        return (f"cannot download ImageNet weights for '{name}' (offline?): put the file Keras asks for in "
                "~/.keras/models/, or set model.weights to none or a local .weights.h5 file")
    file = url.group(0).rsplit("/", 1)[-1]
    return (f"cannot download ImageNet weights for '{name}' (offline?): put {file} (from {url.group(0)}) in "
            "~/.keras/models/, or set model.weights to none or a local .weights.h5 file")


def published_params(name: str) -> int:
    """Parameters of the backbone with a 1000-class Dense head (the figure papers and model zoos quote)."""
    import keras

    spec = check_backbone_name(name)
    backbone = build_backbone(spec.name, max(spec.min_size, 32))
    count = backbone.count_params() + (backbone.output.shape[-1] + 1) * 1000
    keras.backend.clear_session()
    return count
