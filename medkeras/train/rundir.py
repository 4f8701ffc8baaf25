"""The run directory: where a run is written, what makes it resumable, and the small files every step writes.

A run directory holds `config.yaml` (fully resolved), `train_log.csv`, `tensorboard/`, `checkpoints/` (best model
+ its epoch and metrics; per-phase resume backups), `model.keras`, `metrics.json` and the test report.
"""

from __future__ import annotations

import csv
import json
import time
from datetime import datetime
from pathlib import Path

from medkeras.config import Config, from_dict
from medkeras.errors import MedkerasError
from medkeras.utils import atomic_path


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


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise MedkerasError(f"{run_dir}: nothing to resume (no config.yaml in this run directory)")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise MedkerasError(f"{run_dir}: run directory exists and is not empty (use --resume, or another --out)")
    run_dir.mkdir(parents=True, exist_ok=True)


def load_run_config(run_dir) -> Config:
    import yaml

    return from_dict(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()))


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
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs_done]
    write_rows(path, kept[0], kept[1:])


def backup_epoch(backup_dir: Path) -> int | None:
    """The epoch a BackupAndRestore directory holds, or None."""
    meta = backup_dir / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else None
