"""The demo as a user runs it (`medkeras fit`), timed: wall time, share before the first step, test AUROC.

Variants run one after another in fresh processes in the same invocation (graph-building costs are per
process), so their ratios are comparable; absolute times are this machine's.

    python -m bench.demo                      # default vs XLA (jit_compile)
    python -m bench.demo --variants default   # just the demo
"""

from __future__ import annotations

import argparse
import json
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
}


def run(variant: str, workdir: Path) -> dict:
    out = workdir / variant
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "medkeras", "fit", "--out", str(out), "--set", "train.verbose=0", *VARIANTS[variant]],
        capture_output=True,
        text=True,
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
    parser.add_argument("--variants", nargs="+", default=["default", "xla"], choices=sorted(VARIANTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(v, Path(tmp)) for v in args.variants]
    for row in rows:
        print(json.dumps(row))
    base = next((r for r in rows if r["variant"] == "default" and "wall_s" in r), None)
    if base:
        for r in rows:
            if "wall_s" in r:
                r["wall_vs_default"] = round(r["wall_s"] / base["wall_s"], 2)
    print("saved", save("demo", {"rows": rows}))


if __name__ == "__main__":
    main()
