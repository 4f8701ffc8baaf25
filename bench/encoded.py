"""Serving A/B: two exports of the same run (e.g. before and after a change), timed in one process, interleaved.

Each export's `serving_default` (float32 pixels at the model's size) and `serve_encoded` (real CT slices as
512 x 512 JPEG quality 90 and PNG bytes: decoding + resize dominate) at batch 1, 8 and 32, in blocks of 10 calls
alternating between the exports (after one untimed call each), so drift hits both alike.

    PYTHONPATH=/tmp/before python -m medkeras export RUN --out /tmp/exports --name before
    python -m medkeras export RUN --out /tmp/exports --name after
    python -m bench.encoded /tmp/exports/before/1 /tmp/exports/after/1 --labels before after
    python -m bench.encoded --dct        # the JPEG decode alone: INTEGER_FAST (TF's default) vs INTEGER_ACCURATE
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

LUNG_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lung_pet_ct_dx_A0001"


def ct_bytes(fmt: str) -> list[bytes]:
    """The three real CT slices, lung window, as 512 x 512 JPEG (quality 90) or PNG bytes."""
    from PIL import Image

    from medkeras.data.readers import read_image

    out = []
    for name in ("1-01.dcm", "1-13.dcm", "1-14.dcm"):
        pixels = np.clip(np.round(read_image(LUNG_DIR / name, [[-600.0, 1500.0]])[..., 0]), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="*", type=Path)
    parser.add_argument("--dct", action="store_true", help="time tf.io.decode_jpeg's two integer DCTs alone")
    parser.add_argument("--labels", nargs=2, default=["a", "b"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--run", type=Path, help="the run both were exported from: also report each export's "
                        "serve_encoded distance from the Keras model on the same files read as `medkeras predict` reads")
    parser.add_argument("--name", default="serving-ab")
    args = parser.parse_args(argv)

    import tensorflow as tf

    if args.dct:
        return _dct(args)
    loaded = [tf.saved_model.load(str(p)) for p in args.exports]
    size = json.loads((args.exports[0] / "assets" / "preprocessing.json").read_text())["image_size"]
    jpeg, png = ct_bytes("JPEG"), ct_bytes("PNG")
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 8, 32):
        pixels = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
        inputs = {
            "serving_default": ("serving_default", {"image": pixels}),
            "serve_encoded jpeg": ("serve_encoded", {"image_bytes": tf.constant([jpeg[i % 3] for i in range(batch)])}),
            "serve_encoded png": ("serve_encoded", {"image_bytes": tf.constant([png[i % 3] for i in range(batch)])}),
        }
        for what, (signature, feed) in inputs.items():
            fns = [model.signatures[signature] for model in loaded]
            for fn in fns:  # tracing and first allocations out of the timing
                for _ in range(3):
                    fn(**feed)
            times = [[], []]
            for _ in range(max(1, args.repeats // 10)):
                for k, fn in enumerate(fns):
                    fn(**feed)
                    for _ in range(10):
                        t0 = time.perf_counter()
                        fn(**feed)["probabilities"].numpy()
                        times[k].append(time.perf_counter() - t0)
            rates = [batch / float(np.median(t)) for t in times]
            row = {"input": what, "batch": batch, **{f"{label}_images_per_s": round(r, 1) for label, r in
                                                     zip(args.labels, rates)},
                   f"{args.labels[1]}_over_{args.labels[0]}": round(rates[1] / rates[0], 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    agreement = _agreement(args, loaded, {"jpeg": jpeg, "png": png}) if args.run else None
    print(json.dumps(agreement))
    from bench.common import save

    print("wrote", save(args.name, {"exports": [str(p) for p in args.exports], "labels": args.labels, "rows": rows,
                                    "max_abs_diff_from_keras": agreement}))


def _dct(args):
    """tf.io.decode_jpeg with INTEGER_FAST and INTEGER_ACCURATE on the real CT JPEGs, interleaved in blocks."""
    import tensorflow as tf

    jpeg = [tf.constant(b) for b in ct_bytes("JPEG")]
    methods = ("INTEGER_FAST", "INTEGER_ACCURATE")
    times = {m: [] for m in methods}
    for _ in range(max(1, args.repeats // 10)):
        for method in methods:
            for _ in range(10):
                for data in jpeg:
                    t0 = time.perf_counter()
                    tf.io.decode_jpeg(data, channels=0, dct_method=method).numpy()
                    times[method].append(time.perf_counter() - t0)
    rates = {m: round(1.0 / float(np.median(t)), 1) for m, t in times.items()}
    result = {"images_per_s": rates, "accurate_over_fast": round(rates["INTEGER_ACCURATE"] / rates["INTEGER_FAST"], 3)}
    print(json.dumps(result))
    from bench.common import save

    print("wrote", save("jpeg-dct", result))


def _agreement(args, loaded, encoded: dict) -> dict:
    """Max |p(serve_encoded) - p(Keras on the Pillow-decoded file)| per export and format, on the real CT files."""
    import tempfile

    import tensorflow as tf

    from medkeras.data.readers import read_image
    from medkeras.data.resize import to_model_pixels
    from medkeras.models.io import open_model
    from medkeras.models.outputs import softmax

    run = open_model(args.run, keras_only=True)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, data in encoded.items():
            files = []
            for i, blob in enumerate(data):
                path = Path(tmp) / f"{i}.{fmt}"
                path.write_bytes(blob)
                files.append(path)
            pixels = to_model_pixels(np.stack([read_image(f) for f in files]), run.image_size)
            expected = softmax(run.model.predict(pixels, verbose=0), run.temperature)
            for label, model in zip(args.labels, loaded):
                served = model.signatures["serve_encoded"](image_bytes=tf.constant(data))["probabilities"].numpy()
                out[f"{label} {fmt}"] = float(np.abs(served - expected).max())
    return out


if __name__ == "__main__":
    main()
