"""Training speed of the lung-CT ensemble: the fused graph against its members trained apart, XLA, mixed precision,
graph-build time per backbone, and the same architecture trained in PyTorch eager on the same CPU.

Every variant runs in a fresh process (graph-build time, the precision policy and XLA are per process) one after
the other in one invocation, on the same synthetic batch held in memory (the input pipeline is measured by
bench/pipeline.py; here only the train step counts). The Keras side is medkeras itself: `build_model` of
configs/lung-ct-ensemble.yaml with `model.weights: none` (ImageNet weights cannot be downloaded here; they do not
change the speed), compiled as `medkeras fit` compiles phase 2 (every layer trainable, AdamW with cosine decay,
the config's loss), stepped with `model.fit`. The first step (tracing + graph build + one step) is reported apart;
images/s come from the steps after it. PyTorch: the same three architectures written by hand in
bench/torch_models.py (parameter counts equal the Keras ones), AdamW + cross-entropy, eager, `torch.set_num_threads`
left at its default (the cores).

    python -m bench.training --size 224 --batch 8 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MEMBERS = ("vgg19_bn", "efficientnetb0", "resnet101")
KERAS_VARIANTS = {
    # name: (members, precision, jit_compile)
    "fused": (MEMBERS, "float32", False),
    "fused_xla": (MEMBERS, "float32", True),
    "fused_bf16": (MEMBERS, "mixed_bfloat16", False),
    "fused_fp16": (MEMBERS, "mixed_float16", False),
    **{f"apart_{m}": ((m,), "float32", False) for m in MEMBERS},
    **{f"apart_{m}_xla": ((m,), "float32", True) for m in MEMBERS},
    "fused_intra1": (MEMBERS, "float32", False),  # with THREADS below
}
# Variants run with TensorFlow's thread pools set through its environment variables: one thread per op, several
# ops (here the three members' branches) at once.
THREADS = {"fused_intra1": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "3"}}
DEFAULT = ["fused", *(f"apart_{m}" for m in MEMBERS), "torch_fused", "fused_xla", "fused_bf16", "fused_fp16"]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def keras_worker(members, precision, jit, size, batch, steps) -> dict:
    """One Keras variant: build, compile as `medkeras fit` phase 2, time the first step and the steps after it."""
    t0 = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    from medkeras.config import load_config
    from medkeras.models.ensemble import build_model
    from medkeras.train.losses import make_loss, make_optimizer
    from medkeras.train.phases import set_backbones_trainable

    cfg = load_config("lung-ct-ensemble", [f"data.image_size={size}", f"train.batch_size={batch}",
                                          f"train.precision={precision}"])
    cfg.model.weights = "none"
    cfg.model.backbones = list(members)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, 2, size)
    set_backbones_trainable(model, True)
    loss, one_hot = make_loss(cfg.train, 2)
    model.compile(optimizer=make_optimizer(cfg.train, steps + 1, 1, cfg.train.finetune_learning_rate), loss=loss,
                  jit_compile=jit)
    built = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 2, batch)
    y = keras.utils.to_categorical(y, 2) if one_hot else y
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    marks = []

    class Marks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step's result
            marks.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[Marks()])
    first = marks[0] - start
    step = (marks[-1] - marks[0]) / steps
    return {
        "framework": "keras", "members": list(members), "precision": precision, "jit_compile": jit,
        "parameters": int(model.count_params()), "build_s": round(built - t0, 2), "first_step_s": round(first, 2),
        "step_s": round(step, 3), "img_s": round(batch / step, 3), "peak_mib": round(_peak_mib()),
    }


def torch_worker(members, size, batch, steps) -> dict:
    """The same architecture in PyTorch eager: AdamW + cross-entropy, train mode (dropout, BN statistics)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.torch_models import count_parameters, lung_ct_ensemble

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = lung_ct_ensemble(members)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    built = time.perf_counter()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    y = torch.from_numpy(rng.integers(0, 2, batch))
    marks = []
    start = time.perf_counter()
    for _ in range(steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        float(loss)
        marks.append(time.perf_counter())
    step = (marks[-1] - marks[0]) / steps
    return {
        "framework": f"torch {torch.__version__}", "members": list(members), "precision": "float32",
        "threads": torch.get_num_threads(), "parameters": count_parameters(model), "build_s": round(built - t0, 2),
        "first_step_s": round(marks[0] - start, 2), "step_s": round(step, 3), "img_s": round(batch / step, 3),
        "peak_mib": round(_peak_mib()),
    }


def run_variant(name, args) -> dict:
    """Run one variant in a fresh process; returns its JSON (or the error it ended with)."""
    cmd = [sys.executable, "-m", "bench.training", "--worker", name, "--size", str(args.size), "--batch",
           str(args.batch), "--steps", str(args.steps)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **THREADS.get(name, {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"variant": name, "error": tail[:300], "wall_s": round(time.perf_counter() - t0, 1)}
    return {"variant": name, **json.loads(lines[-1]), "wall_s": round(time.perf_counter() - t0, 1)}


def summary(rows: list[dict]) -> dict:
    by = {r["variant"]: r for r in rows if "error" not in r}
    out = {}
    apart = [by.get(f"apart_{m}") for m in MEMBERS]
    if "fused" in by and all(apart):
        out["fused_over_sum_apart"] = round(by["fused"]["step_s"] / sum(a["step_s"] for a in apart), 3)
    for other in ("fused_xla", "fused_bf16", "fused_fp16"):
        if "fused" in by and other in by:
            out[f"{other}_speedup"] = round(by["fused"]["step_s"] / by[other]["step_s"], 3)
    if "fused" in by and "torch_fused" in by:
        out["keras_over_torch"] = round(by["torch_fused"]["step_s"] / by["fused"]["step_s"], 3)
    best = min((r for r in by.values() if r["framework"] == "keras" and len(r["members"]) == 3),
               key=lambda r: r["step_s"], default=None)
    if best is not None and "torch_fused" in by:
        out["best_keras_over_torch"] = round(by["torch_fused"]["step_s"] / best["step_s"], 3)
        out["best_keras"] = best["variant"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--variants", nargs="+", default=DEFAULT,
                        help=f"any of {sorted(KERAS_VARIANTS) + ['torch_fused'] + [f'torch_{m}' for m in MEMBERS]}")
    parser.add_argument("--name", help="results file name (default training-SIZE)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.worker.startswith("torch_"):
            members = MEMBERS if args.worker == "torch_fused" else (args.worker[len("torch_"):],)
            result = torch_worker(members, args.size, args.batch, args.steps)
        else:
            members, precision, jit = KERAS_VARIANTS[args.worker]
            result = keras_worker(members, precision, jit, args.size, args.batch, args.steps)
        print(json.dumps(result), flush=True)
        return
    from bench.common import save

    rows = []
    for name in args.variants:
        rows.append(run_variant(name, args))
        print(json.dumps(rows[-1]), flush=True)
        payload = {"size": args.size, "batch": args.batch, "steps": args.steps, "rows": rows, "summary": summary(rows)}
        path = save(args.name or f"training-{args.size}", payload)  # after every variant: a long run keeps what it measured
    print(json.dumps(payload["summary"], indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
