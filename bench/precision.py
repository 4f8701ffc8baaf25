"""What a model trained under a mixed policy serves, and how fast: the export medkeras writes (the model saved
computing in float32, BatchNorm folded) against the mixed-policy graph served as trained (unfolded: folding into a
16-bit kernel serves another function), on the same images, interleaved in one process. Also each one's largest
probability gap to `eval` (the Keras model on the same batch) and, under each policy, how far one image's
probabilities move between a batch of 1 and a batch of 64 (what makes TF Serving's answer depend on its batch).

    python -m bench.precision --precisions mixed_float16 mixed_bfloat16 --rounds 3 --name precision
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import save

ROOT = Path(__file__).resolve().parents[1]


def _fit(precision: str, out: Path) -> Path:
    args = [sys.executable, "-m", "medkeras", "fit", "--out", str(out), "--set", f"train.precision={precision}",
            "--set", "train.epochs=2", "--set", "train.verbose=0", "--set", "eval.bootstrap=0"]
    subprocess.run(args, check=True, capture_output=True, cwd=out.parent)
    return out


def _serve(model, fold: bool, folder: Path, meta: dict):
    import tensorflow as tf

    from medkeras.export.savedmodel import build_archive

    archive = build_archive(model, meta, fold=fold)
    archive.write_out(str(folder), verbose=False)
    return tf.saved_model.load(str(folder)).signatures["serving_default"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", default=["mixed_float16", "mixed_bfloat16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="precision")
    args = parser.parse_args()

    import tensorflow as tf

    from medkeras.config import DataConfig
    from medkeras.data.sources import load_dataset
    from medkeras.models.io import load_model
    from medkeras.models.outputs import softmax

    images = load_dataset(DataConfig()).splits["test"].images[:64]
    x = np.repeat(images[..., None].astype(np.float32), 3, axis=-1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            run = _fit(precision, Path(tmp) / precision)
            saved, meta = load_model(run)  # float32 compute, as fit saves it
            trained, _ = load_model(run / "checkpoints" / "best.keras")  # the graph as trained, mixed
            served = {"float32 folded (medkeras)": _serve(saved, True, Path(tmp) / f"{precision}-f32", meta),
                      "mixed unfolded (as trained)": _serve(trained, False, Path(tmp) / f"{precision}-mixed", meta)}
            reference = {"float32 folded (medkeras)": saved, "mixed unfolded (as trained)": trained}
            times = {name: [] for name in served}
            xt = tf.constant(x)
            for fn in served.values():
                fn(image=xt)
            for _ in range(args.rounds):  # interleaved rounds: drift hits both alike
                for name, fn in served.items():
                    t0 = time.perf_counter()
                    for _ in range(5):
                        fn(image=xt)
                    times[name].append((time.perf_counter() - t0) / 5)
            for name, fn in served.items():
                model = reference[name]
                keras_probs = softmax(model.predict(x, batch_size=64, verbose=0), meta["temperature"])
                one_by_one = softmax(np.concatenate([model.predict(x[i:i + 1], verbose=0) for i in range(len(x))]),
                                     meta["temperature"])
                gap = float(np.abs(fn(image=xt)["probabilities"].numpy() - keras_probs).max())
                rows.append({"precision": precision, "served": name,
                             "images_per_s": round(len(x) / float(np.median(times[name])), 1),
                             "gap_to_eval": gap, "batch_1_vs_64": float(np.abs(one_by_one - keras_probs).max())})
                print(json.dumps(rows[-1]), flush=True)
    print("saved", save(args.name, {"rows": rows, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
