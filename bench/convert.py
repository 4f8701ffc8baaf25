"""Weight conversion on full-size checkpoints: seconds to convert, parity with PyTorch at 224 px.

    /tmp/tv/bin/python tests/fixtures/convert/generate.py --full /tmp/convfull   # PyTorch, once
    python -m bench.convert --checkpoints /tmp/convfull --rounds 2

For each architecture (torchvision resnet34 .pth, torchvision vgg19_bn legacy .pth, timm regnety_040 and
convnextv2_tiny .safetensors, random weights, written by generate.py with PyTorch's own outputs on two real
images at 224 px), interleaved over rounds in one process: `convert_weights` (read, build, fill, save), and as
the baseline what every fit pays anyway, building the Keras backbone and loading the resulting .weights.h5.
Parity: the largest |Keras - PyTorch| of the penultimate features and of the logits, over their largest |value|.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import save

ARCHS = {"resnet34": "resnet34.pth", "vgg19_bn": "vgg19_bn.pth", "regnety_4gf": "regnety_4gf.safetensors",
         "convnextv2_tiny": "convnextv2_tiny.safetensors"}
CLASSIFIER = {"resnet34": "fc", "vgg19_bn": "classifier.6", "regnety_4gf": "head.fc", "convnextv2_tiny": "head.fc"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    args = parser.parse_args()

    import keras

    from medkeras._quiet import quiet_tensorflow
    from medkeras.models.backbones import build_backbone
    from medkeras.models.checkpoints import read_state_dict
    from medkeras.models.convert import convert_weights

    quiet_tensorflow()
    rows = {a: {"convert_s": [], "build_and_load_s": []} for a in args.archs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for arch in args.archs:
                out = Path(tmp) / f"{arch}.weights.h5"
                report = convert_weights(arch, args.checkpoints / ARCHS[arch], out)
                rows[arch]["convert_s"].append(report.seconds)
                rows[arch]["megaparameters"] = round(report.parameters / 1e6, 2)
                keras.backend.clear_session()
                start = time.perf_counter()
                model = build_backbone(arch, 224, weights=str(out))
                rows[arch]["build_and_load_s"].append(time.perf_counter() - start)
                if r == 0:
                    ref = np.load(args.checkpoints / f"{arch}.npz")
                    state = read_state_dict(args.checkpoints / ARCHS[arch])
                    feats = np.asarray(model.predict(ref["x"], verbose=0))
                    head = CLASSIFIER[arch]
                    logits = feats @ state[f"{head}.weight"].T + state[f"{head}.bias"]
                    rows[arch]["features_gap_rel"] = float(np.abs(feats - ref["features"]).max()
                                                           / np.abs(ref["features"]).max())
                    rows[arch]["logits_gap_rel"] = float(np.abs(logits - ref["logits"]).max()
                                                         / np.abs(ref["logits"]).max())
                    rows[arch]["logits_gap_abs"] = float(np.abs(logits - ref["logits"]).max())
                keras.backend.clear_session()
                print(arch, r, {k: v for k, v in rows[arch].items()}, flush=True)
    for arch, row in rows.items():
        row["convert_over_build_and_load"] = round(float(np.median(row["convert_s"]) / np.median(row["build_and_load_s"])), 2)
    path = save("convert", {"rounds": args.rounds, "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
