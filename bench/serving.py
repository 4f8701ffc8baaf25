"""SavedModel inference against Keras on the same model, same images, interleaved in one process.

    python -m bench.serving RUN_DIR            # a run directory from `medkeras fit` (e.g. of the demo)

Calls are interleaved in blocks of 10 per runtime, each block after one untimed call: interleaving call by call
put every runtime's first call right after another framework's (Keras predict's iterator threads, torch's
OpenMP pool) and measured SavedModel at batch 1 at 8 ms where it takes 3 ms alone.

Images/s at batch 1, 8 and 32 and p50/p99 latency at batch 1 for: the exported `serving_default` signature
(plain tf.saved_model.load), Keras `model.predict`, a direct Keras call `model(x)`, the ONNX export in ONNX Runtime
(with the onnx extra; logits only, its softmax is the client's), and, when torch is installed
and the run is the demo's `resnet18_small` + `cnn8_small` ensemble, the same architecture in PyTorch eager
(`bench/torch_models.py`, inference mode, parameter count checked equal).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import save


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def _torch_twin(meta, model):
    """The PyTorch twin of the demo ensemble (None without torch or for other architectures)."""
    if list(meta.get("backbones", [])) != ["resnet18_small", "cnn8_small"]:
        return None
    try:
        import torch
    except ImportError:
        return None
    import os

    from bench.torch_models import demo_ensemble

    torch.set_num_threads(os.cpu_count())
    twin = demo_ensemble().eval()
    count = sum(p.numel() for p in twin.parameters()) + sum(b.numel() for n, b in twin.named_buffers() if "running" in n)
    if count != model.count_params():
        raise SystemExit(f"torch twin has {count} parameters, the Keras model {model.count_params()}")
    return twin


def _onnx_session(run, folder):
    """An onnxruntime session of `medkeras export --format onnx` of the run (None without the onnx extra)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    from medkeras.export.onnx import export_onnx

    exported = export_onnx(run, folder, name="bench-onnx")
    return onnxruntime.InferenceSession(str(Path(exported["path"]) / "model.onnx"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    import tensorflow as tf

    from medkeras.export.savedmodel import export_savedmodel
    from medkeras.models.io import load_model

    model, meta = load_model(args.run)
    size = int(meta["image_size"])
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_savedmodel(args.run, tmp, name="bench", verify=False)
        served = tf.saved_model.load(exported["path"]).signatures["serving_default"]
        onnx_session = _onnx_session(args.run, tmp)
        rng = np.random.default_rng(0)
        torch_model = _torch_twin(meta, model)
        rows = []
        for batch in (1, 8, 32):
            x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
            xt = tf.constant(x)
            candidates = {
                "savedmodel": lambda: served(image=xt)["probabilities"].numpy(),
                "keras_predict": lambda: model.predict(x, verbose=0),
                "keras_call": lambda: model(xt, training=False).numpy(),
            }
            if onnx_session is not None:  # what a CPU-serving user would pick instead (logits, then softmax)
                feed = {onnx_session.get_inputs()[0].name: x}
                candidates["onnxruntime"] = lambda feed=feed: onnx_session.run(None, feed)[0]
            if torch_model is not None:
                import torch

                xp = torch.from_numpy(x)

                def run_torch(xp=xp):
                    with torch.inference_mode():
                        return torch.softmax(torch_model(xp), dim=1).numpy()

                candidates["torch_eager"] = run_torch
            for fn in candidates.values():  # warm-up: tracing and first allocations
                for _ in range(3):
                    fn()
            results = {name: [] for name in candidates}
            block = 10
            for _ in range(max(1, args.repeats // block)):  # interleaved in blocks, so drift hits all alike
                for name, fn in candidates.items():
                    fn()  # untimed: the previous runtime's threads and caches out of this one's first call
                    results[name] += list(_time(fn, block))
            for name, times in results.items():
                times = np.asarray(times)
                rows.append({
                    "runtime": name,
                    "batch": batch,
                    "images_per_s": round(batch / float(np.median(times)), 1),
                    "p50_ms": round(1000 * float(np.median(times)), 2),
                    "p99_ms": round(1000 * float(np.quantile(times, 0.99)), 2),
                })
    for row in rows:
        print(json.dumps(row))
    by = {(r["runtime"], r["batch"]): r for r in rows}
    ratios = {}
    for other in ("keras_predict", "torch_eager", "onnxruntime"):
        for b in (1, 8, 32):
            if (other, b) in by:
                ratios[f"savedmodel_vs_{other}_b{b}"] = round(
                    by[("savedmodel", b)]["images_per_s"] / by[(other, b)]["images_per_s"], 2
                )
    print(json.dumps(ratios))
    print("saved", save("serving", {"run": str(Path(args.run)), "rows": rows, "ratios": ratios,
                                    "backbones": meta.get("backbones"), "image_size": size}))


if __name__ == "__main__":
    main()
