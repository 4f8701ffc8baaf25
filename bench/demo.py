"""The demo as a user runs it (`medkeras fit`), timed: wall time, share before the first step, test AUROC.

Variants run one after another in fresh processes in the same invocation (graph-building costs are per
process), so their ratios are comparable; absolute times are this machine's.

    python -m bench.demo                      # default vs XLA (jit_compile)
    python -m bench.demo --variants default   # just the demo
    git worktree add /tmp/before <commit>; python -m bench.demo --before /tmp/before --variants before default \
        before default                        # another checkout's medkeras ("before") against this one
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import save

VARIANTS = {
    "default": [],
    "xla": ["--set", "train.jit_compile=true"],
    "spe8": ["--set", "train.steps_per_execution=8"],
    "eager": ["--set", "train.run_eagerly=true"],
    "parallel": ["--set", "train.deterministic=false"],  # augmentation in parallel: not reproducible
    "opdet": ["--set", "train.op_determinism=true"],
    "epochs30": ["--set", "train.epochs=30"],  # the demo before #24 (15 epochs since)
    "epochs20": ["--set", "train.epochs=20"],
    "epochs15": ["--set", "train.epochs=15"],
    "before": [],  # the demo run by the checkout given with --before
    "onednn_off": [],  # TensorFlow without oneDNN's CPU kernels (its default on CPUs without AVX-512)
}
ENV = {"onednn_off": {"TF_ENABLE_ONEDNN_OPTS": "0"}}
TREES: dict = {}


def run(variant: str, workdir: Path, index: int = 0) -> dict:
    out = workdir / f"{index}-{variant}"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "medkeras", "fit", "--out", str(out), "--set", "train.verbose=0", *VARIANTS[variant]],
        capture_output=True,
        text=True,
        cwd=TREES.get(variant),  # `python -m` puts the working directory first on the path
        env={**os.environ, **ENV.get(variant, {})},
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"variant": variant, "error": proc.stderr.strip().splitlines()[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    timing = metrics["timing_s"]
    return {
        "variant": variant,
        "wall_s": round(wall, 1),
        "before_first_step_s": timing["first_step_s"],
        "before_first_step_share": round(timing["first_step_s"] / wall, 3),
        "test_auroc": round(metrics["test"]["auroc"], 4),
        "val_auroc": round(metrics["val"]["auroc"], 4),
        "best_epoch": metrics["best_epoch"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="+", default=["default", "xla"], choices=sorted(VARIANTS),
                        help="run in this order; repeat names to interleave rounds (default spe8 default spe8)")
    parser.add_argument("--name", default="demo", help="bench/results/NAME.json")
    parser.add_argument("--before", help="a checkout whose medkeras runs the 'before' variant")
    args = parser.parse_args()
    if args.before:
        TREES["before"] = args.before
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(v, Path(tmp), i) for i, v in enumerate(args.variants)]
    for row in rows:
        print(json.dumps(row))
    base = [r["wall_s"] for r in rows if r["variant"] == "default" and "wall_s" in r]
    if base:
        for r in rows:
            if "wall_s" in r:
                r["wall_vs_default"] = round(r["wall_s"] / (sum(base) / len(base)), 2)  # vs the mean default run
    print("saved", save(args.name, {"rows": rows}))


if __name__ == "__main__":
    main()
