"""The training augmentation's kernels on this CPU: TF's ops (what the Keras layers run) against OpenCV's.

Each row pushes the same batches of real images (a CT series' slices in the lung window, resized to --size, grey)
through a tf.data map of one kernel, in the same process, rounds interleaved, and reports images/s and the ratio to
the TF kernel of the same round:

- affine: `RandomAffine` (flip + rotation + zoom + translation, one resampling) on TF's ImageProjectiveTransformV3
  vs the same drawn transforms on `cv2.warpAffine` (float32; and uint8, converted both ways in the timing);
- the pipeline's whole augmentation as `build_augmenter` builds it, on either kernel (`kernel=`);
- CLAHE: Keras' layer vs `cpu_kernels.clahe`; the blur: Keras' layer vs the same draws on `cv2.sepFilter2D` (both the
  same values); grey to 3 channels: `tf.repeat` vs OpenCV's merge.

    python -m bench.augment --series ../shared/data/lung_pet_ct_dx_A0001/Lung_Dx-A0001/04-04-2007-NA-Chest-07990/2.000000-5mm-40805 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def slices(series: Path, size: int, count: int) -> np.ndarray:
    """(count, size, size, 1) float32 lung-window pixels of the real series (cycled to `count`)."""
    from medkeras.data.readers import read_image
    from medkeras.data.resize import resize_images
    from medkeras.data.windows import parse_windows

    files = sorted(p for p in series.iterdir() if p.suffix == ".dcm")
    images = [resize_images(read_image(str(p), parse_windows("lung")), size).numpy() for p in files]
    return np.stack([images[i % len(images)] for i in range(count)]).astype(np.float32)


def rate(ds, images: int) -> tuple[float, float]:
    """(images/s, ms of core time an image: every thread of this process, which is what training competes with)."""
    for _ in ds.take(2):  # warm-up: traces, thread pools
        pass
    start, core = time.perf_counter(), time.process_time()
    for _ in ds:
        pass
    return images / (time.perf_counter() - start), (time.process_time() - core) / images * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="augment")
    args = parser.parse_args(argv)

    import tensorflow as tf
    from keras import ops

    from bench.common import save
    from medkeras.config.schema import AugmentConfig
    from medkeras.data import cpu_kernels
    from medkeras.data.affine import RandomAffine
    from medkeras.data.augment import augment_pixels, build_augmenter

    x = slices(args.series, args.size, args.batch * 4)
    n = args.batch * args.batches
    base = tf.data.Dataset.from_tensors(x[: args.batch]).repeat(args.batches)
    affine = RandomAffine("horizontal", 0.05, 0.1, 0.05, fill_mode="reflect", seed=1)

    def tf_affine(b):
        return affine(b, training=True)

    def cv_affine(b, dtype="float32"):
        shape = tf.shape(b)
        t = affine.transforms(shape[0], shape[1], shape[2])

        def warp(images, transforms):
            if dtype == "uint8":
                q = np.clip(np.rint(images), 0, 255).astype(np.uint8)
                return cpu_kernels.warp_affine(q, transforms).astype(np.float32)
            return cpu_kernels.warp_affine(images, transforms)

        return tf.ensure_shape(tf.numpy_function(warp, [b, t], tf.float32), b.shape)

    recipe = AugmentConfig(flip="horizontal", rotation=0.05, zoom=0.1, translation=0.05, brightness=0.1, contrast=0.1)
    whole = {k: build_augmenter(recipe, 1, kernel=k) for k in ("tf", "opencv")}
    clahe = AugmentConfig(flip="none", rotation=0, brightness=0, contrast=0, clahe=1.0)
    equalize = {k: build_augmenter(clahe, 1, kernel=k) for k in ("tf", "opencv")}
    blur = AugmentConfig(flip="none", rotation=0, brightness=0, contrast=0, blur=1.0)
    blurred = {k: build_augmenter(blur, 1, kernel=k) for k in ("tf", "opencv")}

    def merged(b):
        return tf.ensure_shape(tf.numpy_function(cpu_kernels.repeat_grey, [b], tf.float32), (*b.shape[:-1], 3))

    affine_tf, recipe_tf, clahe_tf = ("affine, TF (ImageProjectiveTransformV3)", "lung recipe's augmentation, TF",
                                      "CLAHE, Keras' layer")
    repeat_tf, blur_tf = "grey to 3 channels, tf.repeat", "blur, Keras' layer"
    modes = {  # name: (the batch's work, the row it is compared with)
        affine_tf: (tf_affine, affine_tf),
        "affine, OpenCV warpAffine float32": (cv_affine, affine_tf),
        "affine, OpenCV warpAffine uint8": (lambda b: cv_affine(b, "uint8"), affine_tf),
        recipe_tf: (lambda b: augment_pixels(whole["tf"], recipe, b), recipe_tf),
        "lung recipe's augmentation, OpenCV": (lambda b: augment_pixels(whole["opencv"], recipe, b), recipe_tf),
        clahe_tf: (lambda b: equalize["tf"](b, training=True), clahe_tf),
        "CLAHE, numpy (cpu_kernels.clahe)": (lambda b: equalize["opencv"](b, training=True), clahe_tf),
        blur_tf: (lambda b: blurred["tf"](b, training=True), blur_tf),
        "blur, OpenCV sepFilter2D": (lambda b: blurred["opencv"](b, training=True), blur_tf),
        repeat_tf: (lambda b: tf.repeat(b, 3, axis=-1), repeat_tf),
        "grey to 3 channels, OpenCV merge": (merged, repeat_tf),
    }
    table = {k: [] for k in modes}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name, (fn, _) in modes.items():
            for parallel in (None, -1):
                ds = base.map(fn, num_parallel_calls=parallel)
                table[name].append((parallel, rate(ds, n)))
        print(f"round {r + 1}: " + "; ".join(f"{k}: {v[-2][1][0]:.0f} / {v[-1][1][0]:.0f}" for k, v in table.items()),
              flush=True)
    load.append(os.getloadavg()[0])
    rows = {}
    for name, runs in table.items():
        for parallel, label in ((None, "one batch at a time"), (-1, "AUTOTUNE")):
            rates = [v[0] for p, v in runs if p == parallel]
            ref = [v[0] for p, v in table[modes[name][1]] if p == parallel]
            rows[f"{name} [{label}]"] = {"images_per_s": float(np.median(rates)),
                                         "vs_tf": float(np.median(np.array(rates) / np.array(ref))),
                                         "core_ms_per_image": float(np.median([v[1] for p, v in runs if p == parallel]))}
    for k, v in rows.items():
        print(f"{k}: {v['images_per_s']:.0f} images/s, {v['vs_tf']:.2f}x TF, {v['core_ms_per_image']:.3f} core ms")
    print(f"load average {load[0]:.2f} before, {load[1]:.2f} after")
    save(args.name, {"size": args.size, "batch": args.batch, "rounds": args.rounds, "load": load, "rows": rows})
    ops.convert_to_numpy  # noqa: B018 (keras imported for the layers)


if __name__ == "__main__":
    main()
