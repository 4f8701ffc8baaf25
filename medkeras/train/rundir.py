"""The run directory: where a run is written, what makes it resumable, and the small files every step writes.

A run directory holds `config.yaml` (fully resolved), `train_log.csv`, `tensorboard/`, `checkpoints/` (best model
+ its epoch and metrics; per-phase resume backups), `model.keras`, `metrics.json` and the test report.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from medkeras.config import Config, from_dict
from medkeras.errors import MedkerasError
from medkeras.utils import atomic_path, atomic_write_text


class Timer:
    """Wall-clock marks: set-up (data + model build), first training step (graph building), whole fit."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.marks = {}

    def mark(self, name, once=False):
        if not (once and name in self.marks):
            self.marks[name] = round(time.perf_counter() - self.t0, 2)


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass
class RunState:
    """The run directory a `fit` writes, and what it found there."""

    path: Path
    created: bool  # this command made the directory: a failure before any training leaves nothing behind
    replaced: Path | None = None  # --overwrite: the previous run, kept aside until the new one is finished
    parents: tuple = ()  # folders this command made to hold it (`runs/`), removed with it when left empty


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "model.keras").is_file() and (run_dir / "metrics.json").is_file()


def epochs_done(run_dir: Path) -> int:
    """Epochs the run's `train_log.csv` records (counted from 1)."""
    log = run_dir / "train_log.csv"
    if not log.is_file():
        return 0
    with open(log, newline="") as fh:
        return max((int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("epoch")), default=0)


def open_run_dir(run_dir: Path, resume: bool, overwrite: bool = False, marker: str = "config.yaml", kind: str = "run",
                 finished=is_finished) -> RunState:
    """Check `run_dir` for what the command asks: a new run (an existing run is replaced only with `overwrite`,
    and kept aside until the new one finishes), or `resume` of one that is there. `marker`, `kind` and
    `finished`: what marks, names and finishes the directory (a cross-validation's differ from a fit's)."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / marker).is_file():
            raise MedkerasError(f"{run_dir}: nothing to resume (no {marker} in this {kind} directory)")
        return RunState(run_dir, created=False)
    replaced = None
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            what = (f"a finished {kind}" if finished(run_dir) else f"an unfinished {kind} (--resume continues it)"
                    if (run_dir / marker).is_file() else "a directory that is not empty")
            raise MedkerasError(f"{run_dir}: holds {what}: use --overwrite to replace it, or another --out")
        replaced = run_dir.with_name(f".{run_dir.name}.replaced-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(replaced)
    created = not run_dir.exists()
    parents = tuple(p for p in run_dir.parents if not p.exists())  # nearest first
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunState(run_dir, created=created, replaced=replaced, parents=parents)


def discard_new(state: RunState) -> bool:
    """A command that failed before it made anything worth keeping: the directory it made is removed and the one it
    was replacing put back. -> whether it was (a directory that was there before is left alone)."""
    if not (state.created or state.replaced is not None):
        return False
    shutil.rmtree(state.path, ignore_errors=True)
    if state.replaced is not None:
        state.replaced.rename(state.path)
    for parent in state.parents:  # a failed first fit leaves no empty runs/ behind
        try:
            parent.rmdir()
        except OSError:  # not empty (another run), or gone
            break
    return True


def run_failed(state: RunState, error: BaseException) -> None:
    """A fit that stopped on an error: nothing trained yet -> its new directory is removed (an overwritten run is
    put back); otherwise it is kept for --resume, with a FAILED file saying why."""
    run_dir = state.path
    trained = epochs_done(run_dir) > 0 or (run_dir / "checkpoints").is_dir()
    if not trained and discard_new(state):
        return
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    atomic_write_text(run_dir / "FAILED", f"{type(error).__name__}: {reason}\n"
                      "The epochs done are kept: `medkeras fit --out RUN --resume` continues from the last one.\n")
    if state.replaced is not None:
        print(f"medkeras: the run this one was replacing is kept in {state.replaced}")


def run_finished(state: RunState) -> None:
    (state.path / "FAILED").unlink(missing_ok=True)
    if state.replaced is not None:
        shutil.rmtree(state.replaced, ignore_errors=True)


def keep_finished_outputs(run_dir: Path) -> Path:
    """Before a finished run trains further: its model, metrics and report copied to `before-epoch-N/`."""
    keep = run_dir / f"before-epoch-{epochs_done(run_dir) + 1}"
    keep.mkdir(exist_ok=True)
    for name in ("model.keras", "metrics.json", "report.html", "predictions.csv", "predictions-val.csv",
                 "predictions.series.csv", "predictions.patient.csv", "duplicates.csv"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, keep / name)
    if (run_dir / "plots").is_dir():
        shutil.copytree(run_dir / "plots", keep / "plots", dirs_exist_ok=True)
    return keep


def load_run_config(run_dir) -> Config:
    """A run's own `config.yaml`, validated (a user may have edited it)."""
    import yaml

    from medkeras.config import validate

    cfg = from_dict(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()))
    validate(cfg)
    return cfg


def changed_on_resume(run_dir, overrides) -> list[tuple[str, object, object]]:
    """(key, the run's value, the value asked) for each `--set` of a `--resume` (besides train.epochs) that would
    change the run's own config: asking for what the run already has (the command that started it, run again) is
    no change. Nothing where the run has no config.yaml (`fit` says there is nothing to resume)."""
    import copy
    from functools import reduce

    from medkeras.config import parse_override, resolve_paths, set_key, validate

    if not (Path(run_dir) / "config.yaml").is_file():
        return []
    run = load_run_config(run_dir)
    asked = copy.deepcopy(run)
    pairs = [parse_override(o) if isinstance(o, str) else o for o in overrides]
    pairs = [(k, v) for k, v in pairs if k != "train.epochs"]
    for key, value in pairs:
        set_key(asked, key, value)
    validate(asked)  # the run's config takes the values in the forms it saved them (windows, volume sizes)
    resolve_paths(asked)
    value = lambda cfg, key: reduce(getattr, key.split("."), cfg)  # noqa: E731
    return [(key, value(run, key), value(asked, key)) for key, _ in pairs if value(run, key) != value(asked, key)]


def write_rows(path, header, rows) -> None:
    """A CSV written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def truncate_log(path: Path, epochs_done: int) -> None:
    """On resume keep only the log rows of epochs the restored state has seen: no epoch twice, none lost."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= epochs_done]  # epochs count from 1
    write_rows(path, kept[0], kept[1:])


def backup_epoch(backup_dir: Path) -> int | None:
    """The epoch a BackupAndRestore directory holds, or None."""
    meta = backup_dir / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else None
