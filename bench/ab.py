"""A/B of input-pipeline modes between two checkouts of medkeras, interleaved, each run in a fresh process.

Each checkout runs its own `bench/pipeline.py` mode functions with its own `medkeras` (the child process starts in
the checkout, so `.` comes first on its path), on the same manifest and the same prepared store (written once by
the checkout running this script). Rounds alternate A, B, A, B, ... per mode, so drift on this noisy machine hits both alike.

    git worktree add /tmp/before <commit>
    python -m bench.ab --a /tmp/before --b . --rounds 4 [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODES = ("dicom_single_pass", "cached_epoch", "store_epoch")


def child(tree: Path, mode: str, path: Path, size: int, batch: int, epochs: int = 1) -> tuple[float, float]:
    """(images/s, ms of core time an image) over `epochs` epochs of `mode` after a first one, run by `tree`'s own
    code in a fresh process (the one-pass mode decodes again each epoch)."""
    code = (
        "import sys, time; sys.path.insert(0, '.');"
        "from bench import pipeline as p;"
        f"e = p.{mode}({str(path)!r}, {size}, {batch}); p.timed(e);"
        "w, c = time.perf_counter(), time.process_time();"
        f"n = sum(e() for _ in range({epochs}));"
        "print(n / (time.perf_counter() - w), (time.process_time() - c) / n * 1000)"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, env=env, check=True)
    rate, core = out.stdout.split()[-2:]
    return float(rate), float(core)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (e.g. the commit before the change)")
    parser.add_argument("--b", type=Path, default=Path("."), help="checkout B (default: this one)")
    parser.add_argument("--source", type=Path, default=Path("../shared/data/lung_pet_ct_dx_A0001"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--epochs", type=int, default=1, help="epochs timed in each process (after a first one)")
    parser.add_argument("--name", default="ab-pipeline")
    args = parser.parse_args(argv)
    a, b = args.a.resolve(), args.b.resolve()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout writes the shared inputs
    from bench.pipeline import LUNG, manifest

    from medkeras.config import DataConfig
    from medkeras.data.prepare import prepare

    work = Path(tempfile.mkdtemp(prefix="medkeras-ab-"))
    m1 = manifest(args.source.resolve(), work / "x1.csv", args.repeat)
    if "store_epoch" in args.modes:
        prepare(DataConfig(source=str(m1), window=LUNG), work / "sized", size=args.size, verbose=False)
    paths = {mode: (work / "sized" if mode == "store_epoch" else m1) for mode in args.modes}
    rates = {mode: {"a": [], "b": []} for mode in args.modes}
    cores = {mode: {"a": [], "b": []} for mode in args.modes}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = (("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))
        for mode in args.modes:
            for label, tree in order:
                rate, core = child(tree, mode, paths[mode], args.size, args.batch, args.epochs)
                rates[mode][label].append(rate)
                cores[mode][label].append(core)
                print(mode, label, round(rate, 1), f"{core:.3f} core ms", flush=True)
    load.append(os.getloadavg()[0])
    table = {}
    for mode, runs in rates.items():
        ratios = [rb / ra for ra, rb in zip(runs["a"], runs["b"])]
        table[mode] = {"a_images_per_s": runs["a"], "b_images_per_s": runs["b"],
                       "b_over_a_median": float(np.median(ratios)), "b_over_a_per_round": ratios,
                       "core_ms_per_image_median": {k: float(np.median(v)) for k, v in cores[mode].items()}}
    print(f"load average {load[0]:.2f} before, {load[1]:.2f} after")
    print(json.dumps(table, indent=1))
    from bench.common import save

    print("wrote", save(args.name, {"a": str(a), "b": str(b), "size": args.size, "batch": args.batch, "epochs": args.epochs,
                                    "load": load, "table": table}))


if __name__ == "__main__":
    main()
