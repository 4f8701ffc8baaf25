"""The SavedModel of a study model (`model.input` slab, series or volume): its signatures and their verification.

Two signatures, each returning `probabilities`, `logits` and `label` per study, and for a model with series members
`attention` (N, D: the slice weights, averaged over those members) and `top_slice` (the slice weighed most), from
the same pass as the logits:
- `serving_default`: float32 pixels [N, D, H, W, C] in [0, 255] (C 1 or 3), resized trilinearly in the graph to the
  model's `volume_size` (the identity at that size);
- `serve_volume`: a study as a scanner gives it, Hounsfield units [N, D, H, W] with its spacing [N, 3] (z, y, x mm),
  resampled (`data.spacing` and/or `data.volume_size`, `volumes.resample_volume`) and windowed in the graph: what
  `study_volume` does to a series folder or a NIfTI file, so a client sends the volume it read and nothing else.
The verification reloads the export in a fresh process with plain TensorFlow and compares both signatures with the
Keras model on the model's own validation studies, read by the readers as `fit` and `predict` read them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from medkeras.errors import MedkerasError

STUDY_SIGNATURES = ("serving_default", "serve_volume")

_SERVE = r"""
import os, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
inputs = np.load(sys.argv[2])
for name in ("serving_default", "serve_volume"):
    if name not in loaded.signatures:
        print(json.dumps({"error": "missing signature " + name})); sys.exit(0)
got = loaded.signatures["serving_default"](image=tf.constant(inputs["pixels"]))
out = {"serving_default": got["probabilities"].numpy().tolist(), "serve_volume": []}
if "attention" in got:
    out["serving_default attention"] = got["attention"].numpy().tolist()
for i in range(int(inputs["count"])):
    hu, spacing = inputs[f"hu{i}"], inputs[f"spacing{i}"]
    got = loaded.signatures["serve_volume"](hu=tf.constant(hu[None]), spacing=tf.constant(spacing[None]))
    out["serve_volume"] += got["probabilities"].numpy().tolist()
print(json.dumps(out))
"""


def add_study_endpoints(archive, meta: dict, outputs) -> None:
    """`serving_default` and `serve_volume` on `archive`; `outputs(pixels (N, D, H, W, 3))` -> the outputs dict."""
    import tensorflow as tf

    from medkeras.data.readers import hu_to_pixels
    from medkeras.data.resize import to_model_channels
    from medkeras.data.volumes import resample_volume, resize_volumes

    size = [int(v) for v in meta["volume_size"]]
    spacing = meta.get("spacing")
    windows = list(meta.get("windows") or [])

    def serving_default(image):
        resized = resize_volumes(image, size)
        three = tf.cond(tf.shape(resized)[-1] == 1, lambda: tf.repeat(resized, 3, axis=-1), lambda: resized)
        return outputs(tf.ensure_shape(three, [None, *size, 3]))

    def one_study(args):
        hu, study_spacing = args
        resampled, _ = resample_volume(hu, study_spacing, spacing, size)
        return to_model_channels(hu_to_pixels(tf.ensure_shape(resampled, size), windows))

    def serve_volume(hu, spacing_mm):
        pixels = tf.map_fn(one_study, (tf.cast(hu, tf.float32), tf.cast(spacing_mm, tf.float32)),
                           fn_output_signature=tf.TensorSpec([*size, 3], tf.float32))
        return outputs(pixels)

    archive.add_endpoint("serving_default", serving_default,
                         input_signature=[tf.TensorSpec([None, None, None, None, None], tf.float32, name="image")])
    archive.add_endpoint("serve_volume", serve_volume,
                         input_signature=[tf.TensorSpec([None, None, None, None], tf.float32, name="hu"),
                                          tf.TensorSpec([None, 3], tf.float32, name="spacing")])


def study_facts(meta: dict) -> dict:
    """What `assets/preprocessing.json` says of a study model's inputs."""
    return {
        "model_input": meta.get("model_input"),
        "volume_size": meta.get("volume_size"),
        "spacing": meta.get("spacing"),
        "slab": meta.get("slab"),
        "input": "serving_default: float32 pixels [N,D,H,W,C] in [0, 255] (C 1 or 3; resized trilinearly in the "
                 "graph to volume_size); serve_volume: float32 Hounsfield units [N,D,H,W] in z order with spacing "
                 "[N,3] (z, y, x mm), resampled and windowed in the graph",
        "resize": "trilinear, half-pixel, no antialiasing (CT resampling samples)",
    }


def _validation_studies(loaded, limit: int = 4):
    """(pixels (N, D, H, W, C), up to two (HU (D, H, W), spacing, expected pixels) to serve as volumes) of the
    model's own validation (or test) studies, read from their files (a store of studies: its resampled HU records);
    (None, []) where its data is not here."""
    from medkeras.data.readers import hu_to_pixels, read_volume
    from medkeras.data.store import store_volumes
    from medkeras.data.studies import load_studies, study_split_arrays

    cfg = loaded.config
    if cfg is None:
        return None, []
    try:
        dataset = load_studies(cfg.data, seed=cfg.train.seed)
        split = dataset.splits["val"] if len(dataset.splits["val"]) else dataset.splits["test"]
        if split.store is not None:  # records: HU already at volume_size (spacing data.spacing, or any: resized)
            hu = store_volumes(split, limit)
            spacing = cfg.data.spacing or [1.0, 1.0, 1.0]
            pixels = np.stack([hu_to_pixels(v, loaded.windows) for v in hu]) if hu else np.zeros((0,))
            return (pixels, [(v, spacing, p) for v, p in zip(hu[:2], pixels)]) if hu else (None, [])
        split = split.take(range(min(limit, len(split))))
        pixels, _, _, bad = study_split_arrays(split, cfg.data, on_bad_file="skip")
    except MedkerasError:
        return None, []
    bad_names = {name for name, _ in bad}
    paths = [p for p, n in zip(split.paths, split.names()) if n not in bad_names][:2]  # in the order of `pixels`
    served = [(volume.hu, volume.spacing, pixels[k]) for k, volume in enumerate(map(read_volume, paths))]
    return (pixels, served) if len(pixels) else (None, [])


def verify_study_export(path: Path, loaded, target=None) -> dict:
    """Both signatures of a study export, in a fresh process, against the Keras model on the same studies."""
    from medkeras.data.resize import to_model_channels
    from medkeras.export.verify import compared, served_in_fresh_process
    from medkeras.models.outputs import softmax

    model = loaded.scoring_model()
    size = loaded.volume_size
    pixels, volumes = _validation_studies(loaded)
    source = "validation studies"
    if pixels is None:
        channels = max(1, len(loaded.windows))
        pixels = np.random.default_rng(0).uniform(0, 255, (2, *size, channels)).astype(np.float32)
        source = "synthetic studies (the model's data source is not available here)"

    def keras_probs(batch):
        return softmax(np.asarray(model.predict(to_model_channels(batch).numpy(), verbose=0)), loaded.temperature)

    from medkeras.models.study import with_attention

    both = with_attention(model)
    if both is None:
        expected = {"serving_default": keras_probs(pixels)}
    else:  # the logits and the slice attention of one pass, as the signatures give them
        logits, weights = both.predict(to_model_channels(pixels).numpy(), verbose=0)
        expected = {"serving_default": softmax(np.asarray(logits), loaded.temperature),
                    "serving_default attention": np.asarray(weights)}
    expected = {
        **expected,
        "serve_volume": (keras_probs(np.stack([p for _, _, p in volumes])) if volumes
                         else np.zeros((0, len(loaded.class_names)))),
    }
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {f"hu{i}": np.asarray(hu, np.float32) for i, (hu, _, _) in enumerate(volumes)}
        arrays.update({f"spacing{i}": np.asarray(sp, np.float32) for i, (_, sp, _) in enumerate(volumes)})
        np.savez(Path(tmp) / "inputs.npz", pixels=pixels, count=len(volumes), **arrays)
        served = served_in_fresh_process(_SERVE, [path, Path(tmp) / "inputs.npz"], target or path)
    what = {"serving_default": f"pixels of {len(pixels)} {source}",
            "serve_volume": f"HU and spacing of {len(volumes)} studies read from their files or store",
            "serving_default attention": f"the slice attention of {len(pixels)} {source}"}
    diffs = compared(expected, served, what)
    return {"images": int(len(pixels)), "source": source, "max_abs_diff": max(diffs.values()), "signatures": diffs,
            "checked": what}
