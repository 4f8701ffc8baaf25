"""`data/allocator.py`: glibc's thresholds set where a training pipeline is built, left alone on request."""

import ctypes
import subprocess
import sys


def _thresholds_after(env_value):
    """mallopt's return values in a fresh process (the settings are process-wide): (set, default left)."""
    code = ("import os, sys; from medkeras.data.allocator import keep_batch_buffers; print(keep_batch_buffers())")
    env = {"PATH": "/usr/bin:/bin", **({"MEDKERAS_MALLOC": env_value} if env_value else {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "PYTHONPATH": "."})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_thresholds_are_set_on_glibc_and_left_alone_on_request():
    glibc = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert _thresholds_after(None) == str(glibc)
    assert _thresholds_after("default") == "False"


def test_a_training_pipeline_sets_them_and_an_evaluation_one_does_not(monkeypatch):
    import numpy as np

    from medkeras.config import DataConfig
    from medkeras.data import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "keep_batch_buffers", lambda: calls.append(1))
    images, labels = np.zeros((4, 8, 8, 1), np.float32), np.asarray([0, 1, 0, 1])
    pipeline.make_tf_dataset(images, labels, DataConfig(source="x", image_size=8), 2, training=False)
    assert calls == []
    pipeline.make_tf_dataset(images, labels, DataConfig(source="x", image_size=8), 2, training=True)
    assert calls == [1]
