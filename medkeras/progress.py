"""Saying what a long step is doing: `step` names it, says how long it took, and says "still ..." every ~10 s while
it runs silently (graph building, evaluation, the export's verification); `Progress` counts items with Keras' bar
on a terminal and with plain periodic lines in a file or pipe (a bar there becomes long lines of control codes).
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

HEARTBEAT_S = 10.0


def interactive() -> bool:
    """Whether standard output is a terminal (bars redraw in place) rather than a file or a pipe."""
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


def say(text: str) -> None:
    print(f"medkeras: {text}", flush=True)


class Heartbeat:
    """Prints `medkeras: <what>: still working (N s)` every `interval` seconds until stopped."""

    def __init__(self, what: str, interval: float = HEARTBEAT_S):
        self.what, self.interval = what, interval
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            say(f"{self.what}: still working ({time.perf_counter() - self.t0:.0f} s)")

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return time.perf_counter() - self.t0


@contextmanager
def step(what: str, verbose: bool = True, interval: float = HEARTBEAT_S):
    """`with step("writing the report"):` says it starts, keeps saying it works, and says how long it took."""
    if not verbose:
        yield
        return
    say(f"{what}...")
    beat = Heartbeat(what, interval).start()
    try:
        yield
    finally:
        seconds = beat.stop()
    say(f"{what}: done in {seconds:.1f} s")


class Progress:
    """Counts items: Keras' Progbar on a terminal; elsewhere a line every `interval` seconds and at the end."""

    def __init__(self, total: int, what: str, unit: str = "item", interval: float = HEARTBEAT_S):
        self.total, self.what, self.unit, self.interval = total, what, unit, interval
        self.t0 = self.last = time.perf_counter()
        self.done = 0
        self.bar = None
        if interactive():
            import keras

            self.bar = keras.utils.Progbar(total, unit_name=unit)
        else:
            say(f"{what}: {total} {plural(unit)}")

    def update(self, done: int) -> None:
        self.done = done
        if self.bar is not None:
            self.bar.update(done)
            return
        now = time.perf_counter()
        if now - self.last >= self.interval or done >= self.total:
            self.last = now
            share = 100.0 * done / max(self.total, 1)
            say(f"{self.what}: {done}/{self.total} {plural(self.unit)} ({share:.0f}%), {now - self.t0:.0f} s")

    def tick(self) -> None:
        self.update(self.done + 1)


def plural(unit: str) -> str:
    """"image" -> "images", "study" -> "studies"."""
    return unit[:-1] + "ies" if unit.endswith("y") else unit + "s"


def counted(n: int, unit) -> str:
    """"1 unreadable study", "2 unreadable studies": `n` and `unit` agreeing; `unit` is the singular, or a
    (singular, plural) pair where `plural` cannot spell it."""
    one, many = unit if isinstance(unit, tuple) else (unit, plural(unit))
    return f"{n} {one if n == 1 else many}"
