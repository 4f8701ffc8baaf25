"""HU windowing: exact values, presets, the forms `data.window` takes, stacked windows as channels."""


import numpy as np
import pytest

from medkeras import window_hu
from medkeras.data.windows import WINDOW_PRESETS, apply_windows, parse_windows
from medkeras.errors import ConfigError


def test_window_hu_exact_values_numpy():
    hu = np.array([-2000.0, -1350.0, -975.0, -600.0, -225.0, 150.0, 3000.0])
    out = window_hu(hu, -600, 1500)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([0, 0, 0.25, 0.5, 0.75, 1, 1], np.float32))


def test_window_hu_tensor_in_tensor_out():
    import tensorflow as tf

    hu = tf.constant([[-1024.0, 40.0, 240.0]])
    out = window_hu(hu, 40, 400)
    assert isinstance(out, tf.Tensor)
    np.testing.assert_allclose(out.numpy(), [[0.0, 0.5, 1.0]], atol=1e-7)


def test_presets_are_the_clinical_ones():
    assert WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert WINDOW_PRESETS["mediastinum"] == (50.0, 350.0)
    assert WINDOW_PRESETS["bone"] == (400.0, 1800.0)
    assert WINDOW_PRESETS["brain"] == (40.0, 80.0)


def test_parse_windows_forms():
    assert parse_windows("lung") == [[-600.0, 1500.0]]
    assert parse_windows([40, 400]) == [[40.0, 400.0]]
    assert parse_windows(["lung", "mediastinum", [400, 1800]]) == [[-600.0, 1500.0], [50.0, 350.0], [400.0, 1800.0]]
    assert parse_windows(None) == [] and parse_windows(parse_windows("lung")) == [[-600.0, 1500.0]]  # idempotent
    with pytest.raises(ConfigError):
        parse_windows([40, -1])
    with pytest.raises(ConfigError):
        parse_windows("lungs")


def test_stacked_windows_become_channels():
    hu = np.array([[-600.0, 50.0]])
    out = apply_windows(hu, parse_windows(["lung", "mediastinum"]))
    assert out.shape == (1, 2, 2)
    np.testing.assert_allclose(out[0, 0], [0.5, 0.0])
    np.testing.assert_allclose(out[0, 1], [1400 / 1500, 0.5], rtol=1e-6)  # 50 HU: lung, mediastinum


def test_window_hu_of_a_number_is_a_number():
    """One HU value in, one float32 out (the in-place array path refused numpy scalars: found by a trial)."""
    for value in (-600.0, np.float32(-600.0), np.array(-600.0)):
        out = window_hu(value, -600, 1500)
        assert out == np.float32(0.5) and np.asarray(out).dtype == np.float32
    assert window_hu(10_000.0, -600, 1500) == 1.0 and window_hu(-10_000, -600, 1500) == 0.0
