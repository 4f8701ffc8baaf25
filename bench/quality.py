"""Quality on real data trained from scratch here, against the MedMNIST v2 table (Yang et al. 2023, Table 3).

    python -m bench.quality breastmnist-quality
    python -m bench.quality pneumoniamnist-quality --source ../shared/data/pneumoniamnist_subset/pneumoniamnist.npz

Runs `medkeras fit CONFIG` in a fresh process and records the test metrics with their 95% intervals, ECE after
temperature scaling, what the ensemble adds over its best member, and the wall time.
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

REFERENCE = {  # MedMNIST v2 test AUROC
    "breastmnist": {"ResNet-18 (28)": 0.901, "ResNet-50 (224)": 0.866, "AutoML Vision": 0.919},
    "pneumoniamnist": {"ResNet-18 (28)": 0.944, "ResNet-50 (224)": 0.962, "AutoML Vision": 0.991},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--source", help="data.source override (e.g. the PneumoniaMNIST npz in ../shared/data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    extra = [f"data.source={args.source}"] if args.source else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "medkeras", "fit", args.config, "--out", str(out), "--set", "train.verbose=0"]
        for item in extra + args.overrides:
            cmd += ["--set", item]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    ci = test["intervals"]
    members = [r for r in metrics.get("ensemble", []) if r["model"].endswith(" alone")]
    best_member = max(members, key=lambda r: r["auroc"] or 0) if members else None
    row = {
        "config": args.config,
        "source": args.source or "bundled",
        "wall_s": round(wall, 1),
        "test_auroc": ci["auroc"],
        "test_accuracy": ci["accuracy"],
        "test_sensitivity": ci.get("sensitivity"),
        "test_specificity": ci.get("specificity"),
        "threshold": metrics["threshold"],
        "temperature": metrics["temperature"],
        "ece_before": test["calibration"]["before"]["ece"],
        "ece_after": test["calibration"]["after"]["ece"],
        "ece_floor_after": test["calibration"]["after"].get("ece_floor"),  # perfectly calibrated, same n
        "best_member": best_member,
        "ensemble_rows": metrics.get("ensemble", []),
        "reference": REFERENCE.get(args.config.split("-")[0], {}),
    }
    print(json.dumps(row, indent=2))
    print("saved", save(f"quality-{args.config}", row))


if __name__ == "__main__":
    main()
