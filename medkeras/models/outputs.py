"""From a model's logits to what it answers: probabilities at its temperature, and a label by its threshold.

One helper for every place that decides (evaluation, predict, the SavedModel's graph): binary tasks score the
positive class (the clinically interesting one, e.g. "malignant") and call it where p(positive) >= threshold;
K > 2 classes take the argmax. numpy in, numpy out; a tensor in, a tensor out.
"""

from __future__ import annotations

import numpy as np


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Probabilities (N, K) of logits (N, K) at `temperature`, float32, computed in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def positive_index(class_names, positive_class=None) -> int | None:
    """Index of the class whose probability is the binary score (default: the last class); None for K > 2."""
    if len(class_names) != 2:
        return None
    if positive_class is None:
        return len(class_names) - 1
    return list(class_names).index(positive_class)


def predict_labels(probs, pos: int | None = None, threshold: float = 0.5):
    """Binary (`pos` given): positive where p(pos) >= threshold, else the other class; K classes: argmax. int64."""
    if isinstance(probs, np.ndarray) or isinstance(probs, list):
        probs = np.asarray(probs)
        if probs.shape[1] == 2 and pos is not None:
            return np.where(probs[:, pos] >= threshold, pos, 1 - pos).astype(np.int64)
        return probs.argmax(axis=1).astype(np.int64)
    import tensorflow as tf

    if probs.shape[-1] == 2 and pos is not None:
        return tf.cast(tf.where(probs[:, pos] >= threshold, pos, 1 - pos), tf.int64)
    return tf.argmax(probs, axis=-1, output_type=tf.int64)
