"""The one resize rule: same size passes through, other sizes are resampled, whatever is known statically."""


import numpy as np
from conftest import LUNG


def test_resize_dynamic_with_one_side_known(breast):
    """A tensor whose static shape says it differs from the target is resampled (tf.cond cannot hold both)."""
    import tensorflow as tf

    from medkeras.data.resize import resize_dynamic, resize_images

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


def test_pillow_resize_is_tensorflows_filter():
    """`resize_pixels` (Pillow, what `decode_files` runs in threads) and `resize_images` (TensorFlow, what the
    graphs run) are one filter: equal to float32 rounding on real CT down to 224 and 64 and up from 28, and on
    ultrasound-sized 300 x 200; an image at the size passes through untouched."""
    from medkeras.data.resize import resize_images, resize_pixels

    from medkeras.data.readers import read_image

    ct = read_image(LUNG / "1-13.dcm", [[-600.0, 1500.0], [50.0, 350.0], [400.0, 1800.0]])
    for image, size in ((ct, 224), (ct, 64), (ct[:28, 200:228], 64), (ct[:300, :200, :1], 224), (ct[:57, :57], 32)):
        got = resize_pixels(image, size)
        assert got.shape == (size, size, image.shape[-1]) and got.dtype == np.float32
        np.testing.assert_allclose(got, resize_images(image, size).numpy(), atol=5e-3, rtol=0)  # 2e-5 of 255
    assert resize_pixels(ct[:64, :64], 64) is not None and np.array_equal(resize_pixels(ct[:64, :64], 64), ct[:64, :64])
