"""Where the first training step goes on CPU, and what TensorFlow graph options do to it.

Each variant runs in a fresh process (graph-building costs are per process), interleaved over rounds. A process:
imports TF/Keras, builds the model (Python: Keras layers), traces one train step into a graph (`get_concrete_function`:
Python tracing of the Keras graph and autograph; the optimizer's slots built before it, as `fit` does), runs it once (graph optimisation by grappler, kernel
instantiation, then the step itself), then times `--steps` steady steps. Random pixels: the data start-up is the
pipeline benchmark's, not this one's.

    python -m bench.startup --backbones vgg19_bn efficientnetb0 resnet101 --size 224 --batch 8 --rounds 2
    python -m bench.startup --backbones resnet18_small cnn8_small --size 28 --batch 32   # the demo's model
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

VARIANTS = {
    "default": {},
    # grappler's whole meta-optimizer off: no constant folding, remapping, layout, arithmetic passes
    "no_grappler": {"disable_meta_optimizer": True},
    # the passes that rewrite big graphs most, off; the rest kept
    "light_grappler": {"constant_folding": False, "arithmetic_optimization": False, "layout_optimizer": False,
                       "dependency_optimization": False, "loop_optimization": False},
}


def worker(variant: str, backbones, size: int, batch: int, steps: int, split_trace: bool = False) -> dict:
    t0 = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    marks = {"import_s": time.perf_counter() - t0}
    if VARIANTS[variant]:
        tf.config.optimizer.set_experimental_options(VARIANTS[variant])
    from medkeras.config import ModelConfig
    from medkeras.models.ensemble import build_model

    t = time.perf_counter()
    model = build_model(ModelConfig(backbones=list(backbones), weights="none"), 2, size)
    model.compile(keras.optimizers.AdamW(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    marks["build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model.optimizer.build(model.trainable_variables)  # as `fit` does before it traces (slots made eagerly)
    marks["optimizer_build_s"] = time.perf_counter() - t
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 2, batch))

    if split_trace:  # what tracing the forward pass, and the forward and backward passes, cost on their own
        def grads(x, y):
            with tf.GradientTape() as tape:
                loss = model.compute_loss(x, y, model(x, training=True))
            return tape.gradient(loss, model.trainable_variables)

        for label, fn in (("trace_forward_s", lambda x, y: model(x, training=True)), ("trace_backward_s", grads)):
            t = time.perf_counter()
            tf.function(fn).get_concrete_function(x, y)
            marks[label] = time.perf_counter() - t

    @tf.function
    def step(x, y):
        return model.train_step((x, y))

    t = time.perf_counter()
    concrete = step.get_concrete_function(x, y)
    marks["trace_s"] = time.perf_counter() - t
    t = time.perf_counter()
    concrete(x, y)
    marks["first_call_s"] = time.perf_counter() - t  # grappler + kernel instantiation + one step
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        concrete(x, y)
        times.append(time.perf_counter() - t)
    marks["step_s"] = float(np.median(times))
    marks["optimise_s"] = marks["first_call_s"] - marks["step_s"]  # what the first call costs beyond a step
    marks["to_first_step_s"] = marks["build_s"] + marks["optimizer_build_s"] + marks["trace_s"] + marks["first_call_s"]
    return {"variant": variant, **{k: round(v, 2) for k, v in marks.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["vgg19_bn", "efficientnetb0", "resnet101"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--name", default="startup")
    parser.add_argument("--split-trace", action="store_true", help="also trace the forward pass alone, then forward and "
                        "backward (trace_backward_s includes the forward again)")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.backbones, args.size, args.batch, args.steps, args.split_trace)))
        return
    rows = []
    for r in range(args.rounds):
        for variant in args.variants:
            proc = subprocess.run([sys.executable, "-m", "bench.startup", "--worker", variant, "--backbones",
                                   *args.backbones, "--size", str(args.size), "--batch", str(args.batch), "--steps",
                                   str(args.steps), *(["--split-trace"] if args.split_trace else [])],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"variant": variant, "round": r, "error": proc.stderr.strip().splitlines()[-1]})
            else:
                rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "round": r})
            print(json.dumps(rows[-1]), flush=True)
    from bench.common import save

    save(args.name, {"backbones": args.backbones, "size": args.size, "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
