"""What every benchmark records beside its numbers: the command, the machine, the date and the versions."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def machine() -> dict:
    gpu = ""
    try:
        gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for name in ("tensorflow", "keras", "numpy"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001
            versions[name] = None
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": gpu or "none",
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **versions,
    }


def command() -> str:
    return "python -m bench." + Path(sys.argv[0]).stem + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"command": command(), "machine": machine(), **payload}, indent=2) + "\n")
    return path
