"""Cross-validation as a user runs it: `medkeras cv demo --folds K --bag` against one `medkeras fit demo`, in
fresh processes in the same invocation (the fit first, then the cross-validation, then the fit again), so the
time ratio is comparable; absolute times are this machine's. Records the fold table, the out-of-fold AUROC and
the bagged ensemble's test AUROC next to the single demo model's (config seed: train.seed, 42 by default).

    python -m bench.cv --folds 5
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


def _medkeras(*args) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "medkeras", *map(str, args)], capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def _fit(workdir: Path, tag: str, extra) -> dict:
    out = workdir / f"fit-{tag}"
    wall, proc = _medkeras("fit", "demo", "--out", out, "--set", "train.verbose=0", *extra)
    if proc.returncode != 0:
        raise SystemExit(f"fit failed: {proc.stderr.strip().splitlines()[-1]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"wall_s": round(wall, 1), "val_auroc": round(m["val"]["auroc"], 4), "test_auroc": round(m["test"]["auroc"], 4),
            "test_auroc_ci": [round(m["test"]["intervals"]["auroc"][k], 4) for k in ("lower", "upper")]}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", default="cv")
    args = parser.parse_args()
    extra = [x for o in args.overrides for x in ("--set", o)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        fit_a = _fit(workdir, "a", extra)
        print("fit", fit_a, flush=True)
        out = workdir / "cv"
        wall, proc = _medkeras("cv", "demo", "--folds", args.folds, "--bag", "--out", out, "--set", "train.verbose=0",
                               *extra)
        if proc.returncode != 0:
            raise SystemExit(f"cv failed: {proc.stderr.strip().splitlines()[-1]}")
        cv = json.loads((out / "cv.json").read_text())
        print("cv", round(wall, 1), "s", flush=True)
        fit_b = _fit(workdir, "b", extra)
        print("fit", fit_b, flush=True)
    fit_wall = (fit_a["wall_s"] + fit_b["wall_s"]) / 2
    keys = ("val_auroc", "test_auroc", "val_accuracy", "test_accuracy", "val_ece")
    bag = cv.get("bag", {}).get("test", {})
    result = {
        "command": f"python -m bench.cv --folds {args.folds}" + "".join(f" --set {o}" for o in args.overrides),
        "seed": "train.seed 42 (the demo config's); folds from the same seed",
        "fit_wall_s": [fit_a["wall_s"], fit_b["wall_s"]],
        "cv_wall_s": round(wall, 1),
        "cv_over_fit": round(wall / fit_wall, 2),
        "goal": f"<= {args.folds}x one demo fit",
        "fold_table": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                        if k in ("fold", "best_epoch", *keys)} for row in cv["fold_table"]],
        "over_folds": {k: {s: round(v, 4) for s, v in cv["summary"][k].items()} for k in keys if k in cv["summary"]},
        "oof_auroc": round(cv["oof"]["auroc"], 4),
        "bag_test_auroc": round(bag["auroc"], 4) if bag.get("auroc") is not None else None,
        "bag_test_auroc_ci": [round(bag["intervals"]["auroc"][k], 4) for k in ("lower", "upper")] if bag else None,
        "single_test_auroc": [fit_a["test_auroc"], fit_b["test_auroc"]],
        "single_test_auroc_ci": fit_a["test_auroc_ci"],
        "timing_s": cv.get("timing_s"),
    }
    save(args.name, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
