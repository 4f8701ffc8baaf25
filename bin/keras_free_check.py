#!/usr/bin/env python3
"""Load a medkeras export where neither keras nor medkeras is installed, and call all three signatures.

    python3 -m venv /tmp/kf && /tmp/kf/bin/pip install "tensorflow-cpu==2.21.*" && /tmp/kf/bin/pip uninstall -y keras
    /tmp/kf/bin/python bin/keras_free_check.py serving/breast/1 images.npy scan.png

`images.npy`: float32 pixels [N, H, W, C]. Prints the probabilities as JSON (tests compare them with Keras).
"""
import importlib.util
import json
import sys

import numpy as np

assert importlib.util.find_spec("keras") is None and importlib.util.find_spec("medkeras") is None, "keras or medkeras importable"
import tensorflow as tf

path = sys.argv[1]
loaded = tf.saved_model.load(path)
x = np.load(sys.argv[2])
out = loaded.signatures["serving_default"](image=tf.constant(x))
enc = loaded.signatures["serve_encoded"](image_bytes=tf.constant([open(sys.argv[3], "rb").read()]))
hu = loaded.signatures["serve_hu"](hu=tf.constant(np.full((1, 40, 40), -600.0, np.float32)))
print(json.dumps({"tf": tf.__version__, "probabilities": out["probabilities"].numpy().tolist(), "encoded": enc["probabilities"].numpy().tolist(), "hu_shape": list(hu["probabilities"].shape)}))
