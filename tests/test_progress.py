"""Long steps are never silent: a step says what it does, keeps saying it every ~10 s, and how long it took; bars
become plain lines in a file or pipe; a fit piped to a file says each of its steps in plain lines."""

import time

from medkeras.progress import Progress, step


def test_a_silent_step_keeps_saying_it_works(capsys):
    with step("building something slow", interval=0.4):
        time.sleep(1.5)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "medkeras: building something slow..."
    assert sum("building something slow: still working" in line for line in lines) >= 2
    assert lines[-1].startswith("medkeras: building something slow: done in 1.")


def test_progress_in_a_pipe_is_plain_periodic_lines(capsys):
    bar = Progress(50, "decoding files", "file", interval=0.0)
    for _ in range(50):
        bar.tick()
    out = capsys.readouterr().out
    assert "decoding files: 50/50 files (100%)" in out and "\r" not in out and "\x1b" not in out and "\b" not in out


def test_a_fit_in_a_pipe_says_each_step_in_plain_lines(tiny_run):
    _, result = tiny_run
    out = result.stdout
    for what in ("reading the data (breastmnist)...", "phase train: building the graph", "evaluating the test split",
                 "writing the report: done in"):
        assert what in out, what
    assert "\r" not in out and "\x1b" not in out and "\b" not in out
