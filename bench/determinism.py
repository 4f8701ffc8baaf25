"""What reproducibility costs: augmented training batches in order (`train.deterministic`, the default) against in
parallel, at the lung-CT recipe's 224 px, interleaved in one process; the demo's whole fit is `bench.demo --variants
default parallel`.

    python -m bench.determinism --source ../shared/data/lung_pet_ct_dx_A0001 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/lung_pet_ct_dx_A0001"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)

    from bench.pipeline import data_cfg, manifest
    from medkeras.config import load_config
    from medkeras.data.pipeline import make_tf_dataset, split_arrays
    from medkeras.data.sources import load_dataset

    recipe = load_config("lung-ct-ensemble", [f"data.source={args.source}"]).data.augment  # the recipe's augmentation
    work = Path(tempfile.mkdtemp(prefix="medkeras-det-"))
    cfg = data_cfg(manifest(args.source.resolve(), work / "x.csv", args.repeat), args.size)
    cfg.augment = recipe
    images, labels, _, _ = split_arrays(load_dataset(cfg).splits["train"], cfg, verbose=False)
    datasets = {mode: make_tf_dataset(images, labels, cfg, args.batch, training=True, deterministic=mode == "in order")
                for mode in ("in order", "in parallel")}
    for ds in datasets.values():  # tracing and the first epoch's start-up out of the timing
        sum(len(x) for x, _ in ds)
    rates = {mode: [] for mode in datasets}
    for _ in range(args.rounds):
        for mode, ds in datasets.items():
            t0 = time.perf_counter()
            n = sum(len(x) for x, _ in ds)
            rates[mode].append(n / (time.perf_counter() - t0))
    table = {mode: round(float(np.median(r)), 1) for mode, r in rates.items()}
    result = {"images": int(len(labels)), "size": args.size, "batch": args.batch, "augment": str(recipe),
              "images_per_s": table, "runs": {m: [round(v, 1) for v in r] for m, r in rates.items()},
              "in_order_over_parallel": round(table["in order"] / table["in parallel"], 3)}
    print(json.dumps(result, indent=1))
    from bench.common import save

    print("wrote", save("determinism", result))


if __name__ == "__main__":
    main()
