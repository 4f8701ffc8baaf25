"""`TapConv3D`: Keras' Conv3D, computed on TensorFlow as one 2D convolution per tap along the slices.

Measured on this 2-core CPU (TF 2.21, `python -m bench.study_training`): TensorFlow's CPU gradient of a strided
Conv3D is pathological: a 7x7x7 stride-(1, 2, 2) stem on 2 x 16 x 32 x 32 x 3 took 0.035 s forward and 11.5 s
forward + backward; a 3x3x3 stride-2 conv 0.002 s and 0.127 s. Its 2D convolutions (oneDNN) have no such cliff.
A 3D convolution is exactly the sum over its kt depth taps of 2D convolutions of the matching slices:
out[d] = sum_t conv2d(x[d * sd + t], kernel[t]), which is one 2D convolution of the kt slices stacked as channels
with the kernel reshaped to (kh, kw, kt * cin, cout). A strided layer computes that, with the same kernel
(kt, kh, kw, cin, cout), weights, config and padding rule as Conv3D: checkpoints, inflation and `.keras` files do
not see the difference. Stride-1 layers, and other backends (JAX on a GPU), are Conv3D itself.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="medkeras")
class TapConv3D(keras.layers.Conv3D):
    def call(self, inputs):
        if keras.backend.backend() != "tensorflow" or self.groups != 1 or tuple(self.dilation_rate) != (1, 1, 1) \
                or self.data_format != "channels_last" or tuple(self.strides) == (1, 1, 1):
            return super().call(inputs)  # TF's own kernel where its gradient has no cliff (stride 1)
        import tensorflow as tf

        kt, kh, kw = self.kernel_size
        sd, sh, sw = self.strides
        x = tf.convert_to_tensor(inputs)
        if self.padding == "same":  # along the slices here; in the plane, conv2d's SAME is the same rule
            depth = tf.shape(x)[1]
            total = tf.maximum(((depth + sd - 1) // sd - 1) * sd + kt - depth, 0)
            x = tf.pad(x, [[0, 0], [total // 2, total - total // 2], [0, 0], [0, 0], [0, 0]])
        shape = tf.shape(x)
        batch, height, width, channels = shape[0], shape[2], shape[3], x.shape[-1]
        out_depth = (shape[1] - kt) // sd + 1
        # the kt slices each output slice sees, side by side as channels (tap-major), and the kernel to match:
        # one 2D convolution (measured faster than kt of them summed, for every strided layer of the backbones)
        taps = tf.concat([x[:, t:t + (out_depth - 1) * sd + 1:sd] for t in range(kt)], axis=-1)
        flat = tf.reshape(taps, tf.stack([batch * out_depth, height, width, kt * channels]))
        kernel = tf.reshape(tf.transpose(tf.cast(self.kernel, x.dtype), [1, 2, 0, 3, 4]),
                            [kh, kw, kt * channels, self.filters])
        y = tf.nn.conv2d(flat, kernel, strides=[1, sh, sw, 1], padding=self.padding.upper())
        out_shape = tf.shape(y)
        y = tf.reshape(y, tf.stack([batch, out_depth, out_shape[1], out_shape[2], self.filters]))
        if self.use_bias:
            y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y
