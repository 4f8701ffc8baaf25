"""Kill -9 at random moments of `medkeras fit`, `prepare`, `export` and `cv`: no half-written output is ever left in
place, and the command run again (`fit`/`cv --resume`, or the same command) finishes with valid outputs.

Each command's duration is measured once uninterrupted; then each kill lands at a seeded uniform moment of it.
After a kill: every file in place must be whole (`.keras` archives open, JSON parses, CSV rows complete, a store
loads, an export version loads and answers); then the command is run again and must end with exit 0 and whole
outputs. Temporary files are allowed only as hidden names (`.name.xxx`), which are never read as outputs.

    python -m bench.kills --kills 10 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

TINY = ["--set", "train.epochs=3", "--set", "train.steps_per_epoch=3", "--set", "train.run_eagerly=true",
        "--set", "train.verbose=0", "--set", "model.backbones=[cnn8_small]", "--set", "eval.bootstrap=20"]

CV = ["cv", "demo", "--folds", "2", "--bag", "--set", "train.epochs=2", *TINY[2:]]  # two 2-epoch folds, their bag


def _cli(args, **kwargs):
    return [sys.executable, "-m", "medkeras", *map(str, args)]


def whole_outputs(folder: Path) -> list[str]:
    """Problems with the files in place under `folder` (hidden temporaries skipped): [] when everything is whole."""
    problems = []
    for path in folder.rglob("*"):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            if path.suffix == ".keras":
                with zipfile.ZipFile(path) as archive:
                    if archive.testzip() is not None:
                        problems.append(f"{path}: corrupt archive member")
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".csv":
                with open(path, newline="") as fh:
                    rows = list(csv.reader(fh))
                if rows and any(len(r) != len(rows[0]) for r in rows[1:]):
                    problems.append(f"{path}: a row cut short")
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
    return problems


def _store_loads(store: Path) -> list[str]:
    if not store.exists():
        return []
    from medkeras.config import DataConfig
    from medkeras.data.sources import load_dataset

    try:
        load_dataset(DataConfig(source=str(store)))
    except Exception as exc:  # noqa: BLE001 - a half-written store is the finding
        return [f"{store}: {exc}"]
    return []


def _versions_load(base: Path) -> list[str]:
    problems = []
    for version in (p for p in base.rglob("*") if p.is_dir() and p.name.isdigit()):
        code = ("import sys, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
                "assert {'serving_default', 'serve_encoded', 'serve_hu'} <= set(m.signatures)")
        proc = subprocess.run([sys.executable, "-c", code, str(version)], capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if proc.returncode != 0:
            problems.append(f"{version}: does not load ({(proc.stderr.strip().splitlines() or ['?'])[-1]})")
    return problems


def kill_at(args, seconds: float, cwd) -> bool:
    """Start `args`, kill -9 it after `seconds`; True if it was still running (the kill landed)."""
    proc = subprocess.Popen(_cli(args), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def one_case(command: str, moment: float, work: Path, run: Path | None) -> dict:
    """Kill `command` at `moment` s, check what is in place, run it again, check again."""
    work.mkdir(parents=True, exist_ok=True)
    if command == "fit":
        args = ["fit", "--out", work / "run", *TINY]
        again = ["fit", "--out", work / "run", "--resume"]
        target = work / "run"
    elif command == "prepare":
        args = again = ["prepare", "breastmnist", "--out", work / "store"]
        target = work / "store"
    elif command == "cv":
        args = CV + ["--out", work / "cv"]
        again = ["cv", "--out", work / "cv", "--resume"]
        target = work / "cv"
    else:
        args = again = ["export", run, "--out", work / "serving", "--name", "m"]
        target = work / "serving"
    landed = kill_at(args, moment, work)
    after_kill = whole_outputs(target) if target.exists() else []
    after_kill += _store_loads(target) if command == "prepare" else []
    after_kill += _versions_load(target) if command == "export" and target.exists() else []
    rerun = subprocess.run(_cli(again), cwd=work, capture_output=True, text=True, timeout=900)
    if command in ("fit", "cv") and rerun.returncode != 0 and "nothing to resume" in rerun.stderr:
        rerun = subprocess.run(_cli([*args, "--overwrite"]), cwd=work, capture_output=True, text=True, timeout=900)
    if command == "prepare" and rerun.returncode != 0 and "exists and is not empty" in rerun.stderr:
        rerun = subprocess.run(_cli([*args, "--overwrite"]), cwd=work, capture_output=True, text=True, timeout=900)
    after_rerun = whole_outputs(target) + (_store_loads(target) if command == "prepare" else [])
    finished = rerun.returncode == 0 and (command != "fit" or (target / "model.keras").is_file()) and (
        command != "cv" or ((target / "cv.json").is_file() and (target / "bag" / "model.keras").is_file()))
    return {"command": command, "moment_s": round(moment, 2), "killed": landed, "problems_after_kill": after_kill,
            "rerun_exit": rerun.returncode, "rerun_error": rerun.stderr.strip().splitlines()[-1:] if rerun.returncode
            else [], "problems_after_rerun": after_rerun, "ok": not after_kill and not after_rerun and finished}


def duration(args, cwd) -> float:
    t0 = time.perf_counter()
    subprocess.run(_cli(args), cwd=cwd, check=True, capture_output=True, timeout=900)
    return time.perf_counter() - t0


def run(kills: int, seed: int, commands=("fit", "prepare", "export", "cv"), save_as="kills") -> dict:
    rng = np.random.default_rng(seed)
    root = Path(tempfile.mkdtemp(prefix="medkeras-kills-"))
    base_run = root / "base-run"
    durations = {"fit": duration(["fit", "--out", base_run, *TINY], root)}
    if "prepare" in commands:
        durations["prepare"] = duration(["prepare", "breastmnist", "--out", root / "base-store"], root)
    if "export" in commands:
        durations["export"] = duration(["export", base_run, "--out", root / "base-serving"], root)
    if "cv" in commands:
        durations["cv"] = duration(CV + ["--out", root / "base-cv"], root)
    cases = []
    for command in commands:
        for k in range(kills):
            moment = float(rng.uniform(0.5, durations[command]))
            cases.append(one_case(command, moment, root / f"{command}-{k}", base_run))
            print(json.dumps(cases[-1]), flush=True)
    result = {"kills": kills, "seed": seed, "durations_s": {k: round(v, 1) for k, v in durations.items()},
              "cases": cases, "all_ok": all(c["ok"] for c in cases),
              "landed": sum(c["killed"] for c in cases)}
    if save_as:
        from bench.common import save

        print("wrote", save(save_as, result))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commands", nargs="+", default=["fit", "prepare", "export", "cv"])
    parser.add_argument("--name", default="kills", help="bench/results/NAME.json")
    args = parser.parse_args(argv)
    result = run(args.kills, args.seed, args.commands, save_as=args.name)
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=1))


if __name__ == "__main__":
    main()
