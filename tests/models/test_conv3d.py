"""`TapConv3D` is Conv3D: the same outputs and the same kernel and bias gradients, for the strides, paddings and
kernel sizes the 3D backbones use (and odd sizes), under float32 and mixed precision, and the same saved config."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from medkeras.models.conv3d import TapConv3D

CASES = [  # (kernel, strides, padding, input (D, H, W, C), filters)
    ((7, 7, 7), (1, 2, 2), "valid", (13, 18, 18, 3), 8),  # the ResNet stem, after its ZeroPadding3D
    ((7, 7, 7), (2, 2, 2), "valid", (14, 17, 17, 3), 8),  # DenseNet's
    (3, 2, "valid", (9, 9, 9, 4), 6),
    (3, 1, "same", (5, 6, 7, 4), 6),
    (3, 2, "same", (7, 9, 8, 4), 6),
    (1, 2, "valid", (6, 6, 6, 4), 6),
    ((3, 1, 1), 1, "same", (4, 5, 5, 2), 3),
]


@pytest.mark.parametrize("kernel, strides, padding, shape, filters", CASES)
def test_tap_conv3d_equals_conv3d_forward_and_backward(kernel, strides, padding, shape, filters):
    x = tf.constant(np.random.default_rng(0).normal(size=(2, *shape)).astype("float32"))
    kwargs = dict(filters=filters, kernel_size=kernel, strides=strides, padding=padding, activation="relu")
    tap, ref = TapConv3D(**kwargs), keras.layers.Conv3D(**kwargs)
    tap.build(x.shape)
    ref.build(x.shape)
    rng = np.random.default_rng(1)
    ref.set_weights([rng.normal(size=w.shape).astype("float32") for w in ref.get_weights()])
    tap.set_weights(ref.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = tap(x), ref(x)
        la, lb = tf.reduce_sum(a * a), tf.reduce_sum(b * b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5 * float(tf.reduce_max(tf.abs(b))))
    for ga, gb in zip(tape.gradient(la, [x, *tap.trainable_weights]), tape.gradient(lb, [x, *ref.trainable_weights])):
        np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-4, atol=1e-5 * float(tf.reduce_max(tf.abs(gb))))
    same = {k: v for k, v in tap.get_config().items() if k != "name"}
    assert same == {k: v for k, v in ref.get_config().items() if k != "name"}  # one config: files cannot tell


def test_tap_conv3d_under_mixed_precision_and_saved():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = TapConv3D(4, 3, strides=2, padding="same")
        y = layer(np.ones((1, 5, 8, 8, 2), "float32"))
        assert y.dtype == "float16" and tuple(y.shape) == (1, 3, 4, 4, 4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    back = TapConv3D.from_config(layer.get_config())
    assert back.strides == (2, 2, 2) and back.padding == "same"
