"""Where a 3D network's train step goes: each layer kind of DenseNet-121 3D at the shapes it runs at (2 studies of
32 x 64 x 64), forward + backward (input and weight gradients), TensorFlow (Keras layers, `TapConv3D` for the strided
stem) against PyTorch eager on the same CPU, in one invocation; the PyTorch side in a side venv
(`--torch-python`, as bench/study_training.py). Milliseconds a call, median of `--rounds` rounds of `--calls`.

    python -m bench.layers3d --torch-python /tmp/tv/bin/python --rounds 3 --name layers3d
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# name: (kind, arguments, input (N, D, H, W, C))
LAYERS = {
    "stem conv 7x7x7 / 2, 3 -> 64": ("conv", (64, 7, 2), (2, 38, 70, 70, 3)),
    "max pool 3 / 2": ("maxpool", (3, 2), (2, 18, 34, 34, 64)),
    "batchnorm + relu, block 1 (8 x 16 x 16 x 256)": ("bnrelu", (), (2, 8, 16, 16, 256)),
    "batchnorm + relu, block 3 (2 x 4 x 4 x 1024)": ("bnrelu", (), (2, 2, 4, 4, 1024)),
    "conv 1x1x1 256 -> 128, block 1": ("conv", (128, 1, 1), (2, 8, 16, 16, 256)),
    "conv 3x3x3 128 -> 32, block 1": ("conv", (32, 3, 1), (2, 8, 16, 16, 128)),
    "conv 3x3x3 128 -> 32, block 3": ("conv", (32, 3, 1), (2, 2, 4, 4, 128)),
    "avg pool 2 / 2, transition 1": ("avgpool", (2, 2), (2, 8, 16, 16, 128)),
}


def keras_layer(kind, args):
    import keras

    from medkeras.models.conv3d import TapConv3D

    if kind == "conv":
        filters, size, stride = args
        cls = TapConv3D if stride > 1 else keras.layers.Conv3D
        return cls(filters, size, strides=stride, padding="valid" if stride > 1 else "same", use_bias=False)
    if kind == "maxpool":
        return keras.layers.MaxPooling3D(*args)
    if kind == "avgpool":
        return keras.layers.AveragePooling3D(*args)
    bn = keras.layers.BatchNormalization(epsilon=1.001e-5)
    return lambda x, training=True: keras.ops.relu(bn(x, training=training)), bn


def keras_times(calls: int) -> dict:
    import tensorflow as tf

    out = {}
    for name, (kind, args, shape) in LAYERS.items():
        made = keras_layer(kind, args)
        layer, owner = made if isinstance(made, tuple) else (made, made)
        x = tf.constant(np.random.default_rng(0).uniform(0, 1, shape).astype("float32"))
        layer(x)

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True) if kind == "bnrelu" else layer(x)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, [x, *owner.trainable_weights])

        step(x)
        t = time.perf_counter()
        for _ in range(calls):
            [g.numpy() for g in step(x)]
        out[name] = (time.perf_counter() - t) / calls * 1000
    return out


def torch_times(calls: int) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    nn = torch.nn
    out = {}
    for name, (kind, args, shape) in LAYERS.items():
        channels = shape[-1]
        if kind == "conv":
            filters, size, stride = args
            layer = nn.Conv3d(channels, filters, size, stride, padding=0 if stride > 1 else size // 2, bias=False)
        elif kind == "maxpool":
            layer = nn.MaxPool3d(*args)
        elif kind == "avgpool":
            layer = nn.AvgPool3d(*args)
        else:
            layer = nn.Sequential(nn.BatchNorm3d(channels, eps=1.001e-5), nn.ReLU())
        x = torch.rand(shape[0], channels, *shape[1:4], requires_grad=True)

        def step():
            y = layer(x)
            (y * y).sum().backward()

        step()
        t = time.perf_counter()
        for _ in range(calls):
            step()
        out[name] = (time.perf_counter() - t) / calls * 1000
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default="/tmp/tv/bin/python")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--name", default="layers3d")
    parser.add_argument("--worker", choices=["torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(torch_times(args.calls)))
        return
    from medkeras._quiet import quiet_tensorflow

    quiet_tensorflow()
    from bench.common import save

    load_before = os.getloadavg()
    rounds = {"tensorflow": [], "pytorch": []}
    for _ in range(args.rounds):  # interleaved
        rounds["tensorflow"].append(keras_times(args.calls))
        env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        done = subprocess.run([args.torch_python, "-m", "bench.layers3d", "--worker", "torch", "--calls",
                               str(args.calls)], capture_output=True, text=True, check=True, env=env)
        rounds["pytorch"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for name in LAYERS:
        tf_ms = float(np.median([r[name] for r in rounds["tensorflow"]]))
        torch_ms = float(np.median([r[name] for r in rounds["pytorch"]]))
        rows.append({"layer": name, "tensorflow_ms": round(tf_ms, 2), "pytorch_ms": round(torch_ms, 2),
                     "tf_over_torch": round(tf_ms / torch_ms, 2)})
        print(json.dumps(rows[-1]))
    print("saved", save(args.name, {"rows": rows, "rounds": args.rounds, "calls": args.calls,
                                    "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
                                    "load_before": load_before, "load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
