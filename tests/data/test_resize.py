"""The one resize rule: same size passes through, other sizes are resampled, whatever is known statically."""


import numpy as np


def test_resize_dynamic_with_one_side_known(breast):
    """A tensor whose static shape says it differs from the target is resampled (tf.cond cannot hold both)."""
    import tensorflow as tf

    from medkeras.data.pipeline import resize_dynamic, resize_images

    image = breast.splits["train"].images[0, :, :, None].astype("float32")  # 28 x 28

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 1], tf.float32)])
    def partly_known(x):
        return resize_dynamic(x, 16)

    np.testing.assert_array_equal(partly_known(image), resize_images(image, 16))
    same = tf.function(lambda x: resize_dynamic(x, 28), input_signature=[tf.TensorSpec([None, None, 1], tf.float32)])
    np.testing.assert_array_equal(same(image), image)  # unknown sides equal to the target: passed through
    unknown = tf.function(lambda x: resize_dynamic(x, 16), input_signature=[tf.TensorSpec([None, None, 1], tf.float32)])
    np.testing.assert_array_equal(unknown(image), resize_images(image, 16))  # called directly, not from tf.data
    assert unknown(image).shape == (16, 16, 1)
