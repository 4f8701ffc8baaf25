"""Where the first training step goes on CPU, and what TensorFlow graph options do to it.

Each variant runs in a fresh process (graph-building costs are per process), interleaved over rounds. A process:
imports TF/Keras, builds the model (Python: Keras layers), traces one train step into a graph (`get_concrete_function`:
Python tracing of the Keras graph and autograph; the optimizer's slots built before it, as `fit` does), runs it once (graph optimisation by grappler, kernel
instantiation, then the step itself), then times `--steps` steady steps. Random pixels: the data start-up is the
pipeline benchmark's, not this one's.

    python -m bench.startup --backbones vgg19_bn efficientnetb0 resnet101 --size 224 --batch 8 --rounds 2
    python -m bench.startup --backbones resnet18_small cnn8_small --size 28 --batch 32   # the demo's model

`--fit`: the first step inside `model.fit` as `medkeras fit` runs it (the lung config's AdamW + cosine schedule,
phase 2: everything trainable; one batch held in memory, as bench/training.py), seconds from `fit` to the end of
its first step, then the median of `--steps` steps after it. Variants: `fit_before` is Keras' own path (optimizer
slots made inside the first trace, the learning rate evaluated per variable in weight decay, Adam op by op),
`fit_prebuilt` builds the slots first, `fit_one_rate` also computes the rate once per step, `fit` is medkeras'
path (all that and TF's fused Adam kernel), `fit_no_grappler` adds grappler's meta-optimizer off.

    python -m bench.startup --fit --size 224 --batch 4 --steps 3 --rounds 2 --variants fit_before fit_prebuilt \
        fit_one_rate fit fit_no_grappler --name startup-fit
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
# --fit variants: (build the optimizer first, one learning rate per step, fused Adam kernel, grappler options)
FIT_VARIANTS = {
    "fit_before": (False, False, False, {}),
    "fit_prebuilt": (True, False, False, {}),
    "fit_one_rate": (True, True, False, {}),
    "fit": (True, True, True, {}),
    "fit_no_grappler": (True, True, True, {"disable_meta_optimizer": True}),
}


def fit_worker(variant: str, backbones, size: int, batch: int, steps: int) -> dict:
    t0 = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    prebuild, one_rate, fused, options = FIT_VARIANTS[variant]
    if options:
        tf.config.optimizer.set_experimental_options(options)
    from medkeras.config import load_config
    from medkeras.models.ensemble import build_model
    from medkeras.train.losses import make_loss, make_optimizer
    from medkeras.train.phases import build_optimizer, set_backbones_trainable

    marks = {"import_s": time.perf_counter() - t0}
    cfg = load_config("lung-ct-ensemble", [f"data.image_size={size}", f"train.batch_size={batch}"])
    cfg.model.weights = "none"
    cfg.model.backbones = list(backbones)
    keras.utils.set_random_seed(0)
    t = time.perf_counter()
    model = build_model(cfg.model, 2, size)
    set_backbones_trainable(model, True)
    loss, one_hot = make_loss(cfg.train, 2)
    optimizer = make_optimizer(cfg.train, steps + 1, 1, cfg.train.finetune_learning_rate)
    if not one_rate:
        del optimizer._apply_weight_decay  # back to Keras' own method
    if not fused:
        del optimizer._distributed_tf_update_step
    model.compile(optimizer=optimizer, loss=loss, metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    if prebuild:
        build_optimizer(model)
    marks["build_s"] = time.perf_counter() - t
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 2, batch)
    ds = tf.data.Dataset.from_tensors((x, keras.utils.to_categorical(y, 2) if one_hot else y)).repeat()
    ends = []

    class Marks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            ends.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[Marks()])
    marks["first_step_s"] = ends[0] - start
    marks["step_s"] = float(np.median(np.diff(ends)))
    marks["to_first_step_s"] = marks["build_s"] + marks["first_step_s"]
    return {"variant": variant, **{k: round(v, 2) for k, v in marks.items()}}


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
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS) + list(FIT_VARIANTS))
    parser.add_argument("--fit", action="store_true", help="time the first step inside model.fit (FIT_VARIANTS)")
    parser.add_argument("--name", default="startup")
    parser.add_argument("--split-trace", action="store_true", help="also trace the forward pass alone, then forward and "
                        "backward (trace_backward_s includes the forward again)")
    parser.add_argument("--worker", choices=list(VARIANTS) + list(FIT_VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker in FIT_VARIANTS:
        print(json.dumps(fit_worker(args.worker, args.backbones, args.size, args.batch, args.steps)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.backbones, args.size, args.batch, args.steps, args.split_trace)))
        return
    args.variants = args.variants or list(FIT_VARIANTS if args.fit else VARIANTS)
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
