"""Members that see a CT study rather than a slice: all take pixels in [0, 255] and give K float32 logits a study.

- `slab` (2.5D): K adjacent slices as the channels of one image (H, W, K) into any 2D backbone; K = 3 fits an
  ImageNet stem as it is, any other K goes through a learned 1x1 convolution to 3 channels first.
- `series` (multiple-instance learning): one shared 2D backbone encodes every slice of a study (D, H, W, 3), and
  gated-attention pooling (Ilse, Tomczak & Welling 2018, "Attention-based Deep Multiple Instance Learning") weighs
  the slices into one study feature; trained from study labels alone. `slice_attention` gives the weights.
- `volume` (3D): a `volume3d` backbone on the resampled volume (D, H, W, 3).
Each is a `keras.Model` with the backbone's own preprocessing inside, like a slice member (`ensemble.build_member`),
so members of different kinds that score the same study average in one ensemble.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from medkeras.models import conv3d  # noqa: F401 - registers TapConv3D, so a saved volume member loads
from medkeras.models.backbones import build_backbone, get_backbone_spec
from medkeras.models.ensemble import build_head
from medkeras.models.preprocessing import ImagePreprocessing

ATTENTION_LAYER = "slice_attention"


@keras.saving.register_keras_serializable(package="medkeras")
class GatedAttentionPooling(keras.layers.Layer):
    """(B, N, F) instance features -> (B, F) bag feature, sum_k a_k h_k with a = softmax_k(w . (tanh(V h_k) *
    sigmoid(U h_k))) (Ilse et al. 2018, eq. 9). With `return_attention`, also a (B, N)."""

    def __init__(self, units: int = 128, return_attention: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.return_attention = bool(return_attention)
        self.tanh_branch = layers.Dense(self.units, activation="tanh", name="V")
        self.gate_branch = layers.Dense(self.units, activation="sigmoid", name="U")
        self.score = layers.Dense(1, name="w")

    def build(self, input_shape):
        for branch in (self.tanh_branch, self.gate_branch):
            branch.build(input_shape)
        self.score.build((*input_shape[:-1], self.units))

    def call(self, features):
        scores = self.score(self.tanh_branch(features) * self.gate_branch(features))[..., 0]  # (B, N)
        attention = ops.softmax(ops.cast(scores, "float32"), axis=-1)
        pooled = ops.sum(ops.cast(features, "float32") * attention[..., None], axis=1)
        pooled = ops.cast(pooled, self.compute_dtype)
        return (pooled, attention) if self.return_attention else pooled

    def compute_output_shape(self, input_shape):
        pooled = (input_shape[0], input_shape[-1])
        return (pooled, tuple(input_shape[:2])) if self.return_attention else pooled

    def get_config(self):
        return {**super().get_config(), "units": self.units, "return_attention": self.return_attention}


@keras.saving.register_keras_serializable(package="medkeras")
class FoldSlices(keras.layers.Layer):
    """(B, D, ...) -> (B * D, ...): a study's slices as one batch for a 2D encoder (`slices=None`), or back,
    (B * D, ...) -> (B, D, ...) (`slices=D`). Keras' TimeDistributed instead calls its layer once per slice: D
    copies of the encoder in the graph (a 64 s first step for 32 slices) and BatchNorm statistics over the B
    studies' slice d alone, not over every slice of the batch."""

    def __init__(self, slices: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.slices = slices

    def call(self, x):
        shape = ops.shape(x)  # static where known, else the run's (a plane of any size: progressive resizing)
        if self.slices is None:
            return ops.reshape(x, (-1, *shape[2:]))
        return ops.reshape(x, (-1, self.slices, *shape[1:]))

    def compute_output_shape(self, input_shape):
        if self.slices is None:
            batch = None if input_shape[0] is None or input_shape[1] is None else input_shape[0] * input_shape[1]
            return (batch, *input_shape[2:])
        return (None if input_shape[0] is None else input_shape[0] // self.slices, self.slices, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "slices": self.slices}


def _preprocessing(name: str, normalization=None):
    spec = get_backbone_spec(name)
    if normalization is not None and spec.preprocessing != "none":
        return ImagePreprocessing("dataset", *normalization, name="preprocess")
    return ImagePreprocessing(spec.preprocessing, name="preprocess")


def build_slab_member(name: str, num_classes: int, image_size: int, slab: int = 3, weights: str = "none",
                      head: str = "linear", dropout: float = 0.0, member_name: str | None = None,
                      normalization=None, windows: int = 1):
    """A 2D backbone on slabs (B, S, S, `slab` x `windows`) of adjacent slices (`volumes.slabs`) -> logits (B, K)."""
    if slab < 1 or slab % 2 == 0:
        from medkeras.errors import ConfigError

        raise ConfigError(f"data.slab must be an odd number of slices, got {slab}")
    channels = slab * windows
    inputs = keras.Input((image_size, image_size, channels), name="slab")
    x = inputs
    if channels != 3:  # to the 3 channels an ImageNet stem takes; starts as each channel the slab's mean
        x = layers.Conv2D(3, 1, kernel_initializer=keras.initializers.Constant(1.0 / channels), use_bias=False,
                          name="slab_to_rgb")(x)
    x = _preprocessing(name, normalization)(x)
    logits = build_head(build_backbone(name, image_size, weights)(x), num_classes, head, dropout)
    return keras.Model(inputs, logits, name=member_name or f"{name}_slab")


def build_series_member(name: str, num_classes: int, image_size: int, slices: int, weights: str = "none",
                        head: str = "linear", dropout: float = 0.0, member_name: str | None = None,
                        normalization=None, attention_units: int = 128, dynamic: bool = False):
    """One 2D backbone shared by every slice of a study (B, D, S, S, 3), gated attention over the slices -> (B, K).

    The attention weights (B, D) are the output of the layer named `ATTENTION_LAYER` (`slice_attention`).
    `dynamic`: slices of any size (progressive resizing; predict, eval and export feed `image_size`)."""
    plane = (None, None) if dynamic else (image_size, image_size)
    encoder_in = keras.Input((*plane, 3), name="slice")
    encoder = keras.Model(encoder_in, build_backbone(name, image_size, weights, dynamic)(
        _preprocessing(name, normalization)(encoder_in)), name=f"{name}_encoder")
    inputs = keras.Input((slices, *plane, 3), name="series")
    flat = FoldSlices(name="fold_slices")(inputs)  # (B * D, S, S, 3): every slice of the batch at once
    features = FoldSlices(slices, name="slice_features")(encoder(flat))  # (B, D, F)
    pooled, _ = GatedAttentionPooling(attention_units, return_attention=True, name=ATTENTION_LAYER)(features)
    logits = build_head(pooled, num_classes, head, dropout)
    return keras.Model(inputs, logits, name=member_name or f"{name}_series")


@keras.saving.register_keras_serializable(package="medkeras")
class StudySlabs(keras.layers.Layer):
    """(B, D, H, W, C) -> (B * D, H, W, `slab` x `channels`): at every slice the `slab` slices centred on it (the
    first and last repeated past the ends), each with its first `channels` channels (1 where a single window was
    repeated to 3), slice-major as `volumes.slabs` stacks them; the study's slabs folded into the batch."""

    def __init__(self, slab: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.slab, self.channels = int(slab), int(channels)

    def call(self, x):
        import numpy as np

        depth, height, width = x.shape[1], ops.shape(x)[2], ops.shape(x)[3]  # a plane of any size: progressive resizing
        index = np.clip(np.arange(depth)[:, None] + np.arange(self.slab)[None, :] - self.slab // 2, 0, depth - 1)
        stacked = ops.take(x[..., : self.channels], index.reshape(-1), axis=1)  # (B, D * slab, H, W, c)
        stacked = ops.reshape(stacked, (-1, depth, self.slab, height, width, self.channels))
        stacked = ops.transpose(stacked, (0, 1, 3, 4, 2, 5))  # (B, D, H, W, slab, c)
        return ops.reshape(stacked, (-1, height, width, self.slab * self.channels))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * input_shape[1]
        return (batch, input_shape[2], input_shape[3], self.slab * self.channels)

    def get_config(self):
        return {**super().get_config(), "slab": self.slab, "channels": self.channels}


def build_study_slab_member(name: str, num_classes: int, volume_shape, slab: int = 3, windows: int = 1,
                            weights: str = "none", head: str = "linear", dropout: float = 0.0,
                            member_name: str | None = None, normalization=None, dynamic: bool = False):
    """A 2D backbone over every slab of a study (B, D, S, S, 3) -> (B, K): the mean of its D slabs' logits, so it
    trains from study labels and averages with other study members. The backbone is the member's direct child (the
    recipe's phases freeze it as a slice member's). `dynamic`: a plane of any size (progressive resizing)."""
    depth, size = int(volume_shape[0]), int(volume_shape[1])
    if slab < 1 or slab % 2 == 0:
        from medkeras.errors import ConfigError

        raise ConfigError(f"data.slab must be an odd number of slices, got {slab}")
    inputs = keras.Input((depth, *((None, None) if dynamic else (size, size)), 3), name="volume")
    x = StudySlabs(slab, windows, name="study_slabs")(inputs)  # (B * D, S, S, slab * windows)
    if slab * windows != 3:  # to the 3 channels an ImageNet stem takes; starts as each channel the slab's mean
        x = layers.Conv2D(3, 1, kernel_initializer=keras.initializers.Constant(1.0 / (slab * windows)),
                          use_bias=False, name="slab_to_rgb")(x)
    x = _preprocessing(name, normalization)(x)
    slab_logits = build_head(build_backbone(name, size, weights, dynamic)(x), num_classes, head, dropout)
    per_slab = FoldSlices(depth, dtype="float32", name="slab_logits")(slab_logits)  # (B, D, K)
    logits = layers.GlobalAveragePooling1D(dtype="float32", name="study_logits")(per_slab)
    return keras.Model(inputs, logits, name=member_name or f"{name}_slab")


def build_study_member(model_cfg, data_cfg, name: str, num_classes: int, member_name: str | None = None,
                       normalization=None, dynamic: bool = False):
    """One member of a study model (`model.input` slab, series or volume) from the config: a 3D backbone name is a
    volume member whatever the input; a 2D one a slab or series member. Input (B, D, H, W, 3) pixels; `dynamic`:
    (B, D, any, any, 3), for progressive resizing in plane (`train.size_schedule`)."""
    from medkeras.models.ensemble import weights_for
    from medkeras.models.volume3d import VOLUME_BACKBONES

    depth, height, width = (int(v) for v in data_cfg.volume_size)
    weights = weights_for(model_cfg.weights, name)
    if name in VOLUME_BACKBONES:
        return build_volume_member(name, num_classes, (depth, height, width), weights, model_cfg.head,
                                   model_cfg.dropout, member_name, dynamic=dynamic)
    if model_cfg.input == "slab":
        return build_study_slab_member(name, num_classes, (depth, height, width), data_cfg.slab,
                                       len(data_cfg.window or [None]), weights, model_cfg.head, model_cfg.dropout,
                                       member_name, normalization, dynamic)
    return build_series_member(name, num_classes, height, depth, weights, model_cfg.head, model_cfg.dropout,
                               member_name, normalization, dynamic=dynamic)


def build_study_model(model_cfg, data_cfg, num_classes: int, normalization=None, dynamic: bool = False):
    """`model` and `data` config sections -> the study model to train (a member, or the ensemble of them);
    `dynamic`: planes of any size (progressive resizing)."""
    from medkeras.models.ensemble import build_ensemble, member_names

    names = list(model_cfg.backbones)
    members = [build_study_member(model_cfg, data_cfg, name, num_classes, tag, normalization, dynamic)
               for name, tag in zip(names, member_names(names))]
    return build_ensemble(members, data_cfg.image_size, model_cfg.ensemble_weights)


def slice_attention(model):
    """A model from a series member's input to its slice attention (B, D), sharing its weights."""
    layer = model.get_layer(ATTENTION_LAYER)
    return keras.Model(model.input, layer.output[1], name=f"{model.name}_attention")


def attention_models(model) -> dict:
    """{member name: `slice_attention` of it} for each series member of `model` (a member or an ensemble)."""
    from medkeras.models.ensemble import leaf_members

    return {m.name: slice_attention(m) for m in leaf_members(model)
            if any(layer.name == ATTENTION_LAYER for layer in m.layers)}


def with_attention(model):
    """`model` -> one functional model giving (logits, slice attention (B, D)) in one pass, sharing its weights (the
    attention averaged over its series members, however deeply they nest in ensembles or test-time flips); None
    where it has no series member. Scoring and attention apart ran every series encoder twice (Grappler does not
    merge the two: 1.6-2x the time of the logits alone)."""
    if not isinstance(model, keras.Model):
        return None
    if any(layer.name == ATTENTION_LAYER for layer in model.layers):
        return keras.Model(model.input, [model.output, model.get_layer(ATTENTION_LAYER).output[1]],
                           name=f"{model.name}_with_attention")
    if not hasattr(model, "_operations") or not any(isinstance(layer, keras.Model) for layer in model.layers):
        return None
    found, made = [], {}  # one rebuilt model a layer, however often it is called (test-time flips call it twice)

    def call(layer, *args, **kwargs):
        if id(layer) not in made:
            made[id(layer)] = with_attention(layer)
        inner = made[id(layer)]
        if inner is None:
            return layer(*args, **kwargs)
        logits, weights = inner(*args, **kwargs)
        found.append(weights)
        return logits

    rebuilt = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    if not found:
        return None
    weights = found[0] if len(found) == 1 else layers.Average(dtype="float32", name="mean_attention")(found)
    return keras.Model(rebuilt.input, [rebuilt.output, weights], name=f"{model.name}_with_attention")


def build_volume_member(name: str, num_classes: int, volume_shape, weights: str = "none", head: str = "linear",
                        dropout: float = 0.0, member_name: str | None = None, stem_depth: int = 7,
                        stem_depth_stride: int | None = None, dynamic: bool = False):
    """A 3D backbone on volumes (B, D, H, W, 3) -> logits (B, K), its 2D source's preprocessing inside; `dynamic`:
    (B, D, any, any, 3), for progressive resizing in plane."""
    from medkeras.models.volume3d import build_volume_backbone, preprocessing_of

    shape = (volume_shape[0], None, None) if dynamic else tuple(volume_shape)
    inputs = keras.Input((*shape, 3), name="volume")
    x = ImagePreprocessing(preprocessing_of(name), name="preprocess")(inputs)
    backbone = build_volume_backbone(name, volume_shape, weights, stem_depth, stem_depth_stride, dynamic)
    logits = build_head(backbone(x), num_classes, head, dropout)
    return keras.Model(inputs, logits, name=member_name or name)
