"""Train-step speed of the study models (3D volume backbones, the series MIL model) against the same networks in
PyTorch eager on the same CPU, in one invocation, rounds interleaved, each variant in a fresh process.

Keras side: medkeras' `build_volume_member` and `build_series_member` (`cnn8_small` over every slice, gated
attention; PyTorch: the same network by hand in bench/torch_models.py, `GatedAttentionMIL`), Adam, sparse cross-entropy, `model.fit` on one
batch held in memory (the input is measured by bench/volumes.py). PyTorch side, in a side venv (`--torch-python`;
torch is not a medkeras dependency): MONAI's `ResNet` (resnet18, `conv1_t_size=7, conv1_t_stride=1`, 3 input
channels: the layout `resnet18_3d` copies) and `DenseNet121` (spatial_dims=3), torchvision's `r3d_18` (the video
ResNet-18 a PyTorch user reaches for: a 3x7x7 stem and no max-pool, so a different network; listed for reference),
Adam + cross-entropy, train mode. The first step is reported apart; studies/s come from the steps after it.

    python -m bench.study_training --torch-python /tmp/tv/bin/python --volume 32 64 64 --batch 2 --steps 3 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    # name: (framework, network)
    "keras_resnet18_3d": ("keras", "resnet18_3d"),
    "torch_monai_resnet18": ("torch", "monai_resnet18"),
    "torch_r3d_18": ("torch", "r3d_18"),
    "keras_densenet121_3d": ("keras", "densenet121_3d"),
    "torch_monai_densenet121": ("torch", "monai_densenet121"),
    "keras_series_cnn8": ("keras", "series_cnn8"),
    "torch_series_cnn8": ("torch", "series_cnn8"),
    # TensorFlow with oneDNN's kernels (TF_ENABLE_ONEDNN_OPTS=1; off by default on CPUs without AVX-512 such as
    # this one, and then TF's own Conv3D gradient has the cliff `models/conv3d.py` works around)
    "keras_resnet18_3d_onednn": ("keras", "resnet18_3d"),
    "keras_densenet121_3d_onednn": ("keras", "densenet121_3d"),
    "keras_series_cnn8_onednn": ("keras", "series_cnn8"),
}


def keras_worker(network, volume, batch, steps) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from medkeras.models.study import build_series_member, build_volume_member

    keras.utils.set_random_seed(0)
    if network == "series_cnn8":  # every slice through cnn8_small, gated attention over the slices
        model = build_series_member("cnn8_small", 2, volume[1], slices=volume[0])
    else:
        model = build_volume_member(network, 2, volume)
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, *volume, 3)).astype("float32")
    y = rng.integers(0, 2, batch)
    marks = []

    class Marks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            marks.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=steps + 1, epochs=1, verbose=0,
              callbacks=[Marks()])
    step = (marks[-1] - marks[0]) / steps
    return {"parameters": int(model.count_params()), "first_step_s": round(marks[0] - start, 2),
            "step_s": round(step, 3), "studies_s": round(batch / step, 3)}


def torch_worker(network, volume, batch, steps) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.torch_models import count_parameters  # BatchNorm statistics counted, as Keras counts them

    torch.manual_seed(0)
    if network == "monai_resnet18":
        from monai.networks.nets import resnet18

        model = resnet18(spatial_dims=3, n_input_channels=3, num_classes=2, conv1_t_size=7, conv1_t_stride=1)
    elif network == "monai_densenet121":
        from monai.networks.nets import DenseNet121

        model = DenseNet121(spatial_dims=3, in_channels=3, out_channels=2)
    elif network == "series_cnn8":
        from bench.torch_models import GatedAttentionMIL

        model = GatedAttentionMIL()
    else:
        from torchvision.models.video import r3d_18

        model = r3d_18(num_classes=2)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    shape = (batch, volume[0], 3, *volume[1:]) if network == "series_cnn8" else (batch, 3, *volume)
    x = torch.from_numpy(rng.uniform(0, 1, shape).astype("float32"))
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
    return {"parameters": int(count_parameters(model)), "first_step_s": round(marks[0] - start, 2),
            "step_s": round(step, 3), "studies_s": round(batch / step, 3), "threads": torch.get_num_threads()}


def run_variant(name, args) -> dict:
    framework, network = VARIANTS[name]
    python = args.torch_python if framework == "torch" else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--volume", *map(str, args.volume),
           "--batch", str(args.batch), "--steps", str(args.steps)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TF_CPP_MIN_LOG_LEVEL": "3",
           "TF_ENABLE_ONEDNN_OPTS": "1" if name.endswith("_onednn") else "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        return {"variant": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return {"variant": name, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--volume", nargs=3, type=int, default=[32, 64, 64], metavar=("D", "H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-python", default="/tmp/tv/bin/python")
    parser.add_argument("--name", default="study-training")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        framework, network = VARIANTS[args.worker]
        work = keras_worker if framework == "keras" else torch_worker
        print(json.dumps(work(network, tuple(args.volume), args.batch, args.steps)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import save

    load_before = os.getloadavg()
    rows = []
    for r in range(args.rounds):
        for name in args.variants:
            row = {"round": r + 1, **run_variant(name, args)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for name in args.variants:
        rates = [row["studies_s"] for row in rows if row["variant"] == name and "studies_s" in row]
        summary[name] = {"studies_s": rates, "median": sorted(rates)[len(rates) // 2] if rates else None}
    pairs = [("keras_resnet18_3d", "torch_monai_resnet18"), ("keras_resnet18_3d", "torch_r3d_18"),
             ("keras_densenet121_3d", "torch_monai_densenet121"), ("keras_series_cnn8", "torch_series_cnn8")]
    pairs += [(f"{a}_onednn", b) for a, b in pairs]
    ratios = {f"{a} / {b}": round(summary[a]["median"] / summary[b]["median"], 2)
              for a, b in pairs if a in summary and b in summary and summary[a]["median"] and summary[b]["median"]}
    path = save(args.name, {"rows": rows, "summary": summary, "ratios": ratios,
                            "load_before": load_before, "load_after": os.getloadavg()})
    print(json.dumps({"summary": summary, "ratios": ratios, "load_before": load_before,
                      "load_after": os.getloadavg(), "saved": str(path)}, indent=1))


if __name__ == "__main__":
    main()
