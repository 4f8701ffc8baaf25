"""Grad-CAM (Selvaraju et al. 2017) for every registry backbone, also for members nested in an ensemble.

Nested Keras models are a known trap: a gradient model cannot reach inside a sub-model through the outer graph.
So each member is re-wired from its own parts: its preprocessing layer, a feature model built on the nested
backbone's own graph (last 4-D feature map + pooled output), and its head layers replayed on the pooled output.
The ensemble's map is the mean of its members' maps for the ensemble's class.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medkeras.models.ensemble import leaf_members
from medkeras.models.preprocessing import ImagePreprocessing


def _parts(member):
    """(preprocess layer, backbone model, head layers) of a medkeras member model."""
    import keras

    preprocess = next(layer for layer in member.layers if isinstance(layer, ImagePreprocessing))
    backbone = next(layer for layer in member.layers if isinstance(layer, keras.Model))
    after = member.layers[member.layers.index(backbone) + 1 :]
    return preprocess, backbone, after


def _feature_model(backbone, layer_name: str | None = None):
    """(a model giving the backbone's feature map at `layer_name` (its last 4-D one by default) and its pooled
    output, that layer's name)."""
    import keras

    name = layer_name or last_feature_layer(backbone)
    return keras.Model(backbone.inputs, [backbone.get_layer(name).output, backbone.output]), name


def _class_logit(logits, head, class_index):
    """The head layers replayed on `logits`, then each row's logit of its `class_index`."""
    import tensorflow as tf

    for layer in head:
        logits = layer(logits, training=False)
    index = tf.convert_to_tensor(class_index, tf.int32)
    return tf.gather(logits, index[:, None], axis=1, batch_dims=1)[:, 0]


def _weighted_map(grads, fmap, size):
    """Grad-CAM's map: the feature map weighted by its spatially averaged gradients, ReLU, resized to `size`."""
    import tensorflow as tf

    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))[..., None]
    return tf.image.resize(cam, size, method="bilinear")[..., 0]


def last_feature_layer(backbone) -> str:
    """Name of the backbone's last layer with a 4-D (B, h, w, c) output: where Grad-CAM looks."""
    for layer in reversed(backbone.layers):
        output = getattr(layer, "output", None)
        if output is not None and len(output.shape) == 4:
            return layer.name
    raise ValueError(f"backbone '{backbone.name}' has no 4-D feature map")


class MemberCAM:
    """Grad-CAM for one member: `__call__(pixels, class_index) -> (B, S, S)` maps in [0, 1]."""

    def __init__(self, member, layer_name: str | None = None):
        self.preprocess, backbone, self.head = _parts(member)
        self.features, self.layer_name = _feature_model(backbone, layer_name)

    def __call__(self, pixels, class_index):
        import tensorflow as tf

        pixels = tf.convert_to_tensor(pixels, tf.float32)
        with tf.GradientTape() as tape:
            fmap, pooled = self.features(self.preprocess(pixels), training=False)
            tape.watch(fmap)
            target = _class_logit(pooled, self.head, class_index)
        cam = _weighted_map(tape.gradient(target, fmap), fmap, tf.shape(pixels)[1:3])
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return (cam / tf.maximum(peak, 1e-12)).numpy()


class SeriesCAM:
    """Grad-CAM of a series member (`models.study.build_series_member`) on every slice of a study: the study logit's
    gradient through the attention pooling into each slice's last feature map. `__call__(studies (B, D, S, S, 3),
    class_index) -> (B, D, S, S)` maps in [0, 1], normalised per study (so slices compare within a study)."""

    def __init__(self, member):
        import keras

        from medkeras.models.study import ATTENTION_LAYER

        encoder = next(layer for layer in member.layers if isinstance(layer, keras.Model))
        self.preprocess, backbone, _ = _parts(encoder)
        self.features, _ = _feature_model(backbone)
        self.pool = member.get_layer(ATTENTION_LAYER)
        self.head = member.layers[member.layers.index(self.pool) + 1:]

    def __call__(self, studies, class_index):
        import tensorflow as tf

        studies = tf.convert_to_tensor(studies, tf.float32)
        b, d, s = studies.shape[0], studies.shape[1], studies.shape[2]
        with tf.GradientTape() as tape:
            fmap, pooled = self.features(self.preprocess(tf.reshape(studies, (-1, s, s, 3))), training=False)
            tape.watch(fmap)
            logits, _ = self.pool(tf.reshape(pooled, (b, d, -1)))
            target = _class_logit(logits, self.head, class_index)
        cam = tf.reshape(_weighted_map(tape.gradient(target, fmap), fmap, (s, s)), (b, d, s, s))
        peak = tf.reduce_max(cam, axis=(1, 2, 3), keepdims=True)
        return (cam / tf.maximum(peak, 1e-12)).numpy()


def study_gradcam(model, studies, class_index) -> np.ndarray | None:
    """Grad-CAM maps (B, D, S, S) of a study model's series members on every slice (their mean); None without any."""
    from medkeras.models.study import ATTENTION_LAYER

    series = [m for m in leaf_members(model) if any(layer.name == ATTENTION_LAYER for layer in m.layers)]
    if not series:
        return None
    class_index = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (len(studies),))
    maps = np.mean([SeriesCAM(m)(studies, class_index) for m in series], axis=0)
    peak = maps.reshape(len(maps), -1).max(axis=1)[:, None, None, None]
    return maps / np.maximum(peak, 1e-12)


def gradcam(model, pixels, class_index=None) -> np.ndarray:
    """Grad-CAM maps (B, S, S) in [0, 1] for `pixels` (B, S, S, 3); class default: the model's prediction.

    Works for a single member or a whole ensemble (mean of the members' maps, renormalized).
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if class_index is None:
        class_index = np.asarray(model(pixels, training=False)).argmax(axis=1)
    class_index = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (len(pixels),))
    maps = np.mean([MemberCAM(m)(pixels, class_index) for m in leaf_members(model)], axis=0)
    peak = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
    return maps / np.maximum(peak, 1e-12)


def overlay(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 overlay of a [0, 1] map (jet colormap) on one image of pixels [0, 255]."""
    import matplotlib

    base = np.clip(np.asarray(pixels, dtype=np.float32), 0, 255)
    if base.shape[-1] == 1:
        base = np.repeat(base, 3, axis=-1)
    heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * base + alpha * heat, 0, 255).astype(np.uint8)


def write_overlays(model, meta, inputs, out_dir, scale: int = 8) -> list[Path]:
    """`medkeras gradcam`: one PNG per input file (original | overlay), numbered and named after the file, and
    `gradcam.csv` saying which input each is (its name as `predict` gives it: two series' 1-01.dcm apart); returns
    the PNG paths."""
    from PIL import Image

    from medkeras.data.readers import named_inputs, read_image
    from medkeras.data.resize import to_model_pixels
    from medkeras.errors import MedkerasError
    from medkeras.utils import atomic_path

    if meta.get("model_input", "slice") != "slice":
        raise MedkerasError(f"a study model ({meta['model_input']}): Grad-CAM is for slice models (a series model's "
                            "report shows the slices its attention weighed most, attention.csv their weights)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = int(meta["image_size"])
    windows = meta.get("windows") or []
    named = named_inputs(inputs)
    written = []
    for i, (path, _, _) in enumerate(named):
        pixels = to_model_pixels(read_image(path, windows)[None], size)
        cam = gradcam(model, pixels)[0]
        picture = np.concatenate([np.clip(pixels[0], 0, 255).astype(np.uint8), overlay(pixels[0], cam)], axis=1)
        big = Image.fromarray(picture).resize((picture.shape[1] * max(1, scale * 28 // size), picture.shape[0] * max(1, scale * 28 // size)), Image.NEAREST)
        target = out_dir / f"{i:04d}_{Path(path).stem}_gradcam.png"
        with atomic_path(target, suffix=".png") as tmp:
            big.save(tmp, format="PNG")
        written.append(target)
    with atomic_path(out_dir / "gradcam.csv", suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows([["png", "path"], *[[p.name, name] for p, (_, name, _) in zip(written, named)]])
    return written
