"""Where a study model looked: the slice attention of its series members (`models.study`), per study, for the report
and `attention.csv`."""

from __future__ import annotations

import csv
import io

import numpy as np

from medkeras.utils import atomic_path


def study_attention(model, volumes, data_cfg, batch_size: int = 64, flips=()) -> dict:
    """{series member: its slice attention (N, D)} for studies (N, D, H, W, C); {} for models without series
    members, or slices. Each member's weights are those of `with_attention(with_tta(member, flips))`, averaged over
    the study and its test-time `flips` as `predict` and the export's `attention` average them, so the report's and
    `attention.csv`'s top slices are the ones served (their mean over members is the served `attention`)."""
    if volumes is None or np.ndim(volumes) != 5:
        return {}
    import keras

    from medkeras.data.pipeline import make_tf_dataset
    from medkeras.models.ensemble import leaf_members
    from medkeras.models.study import ATTENTION_LAYER, with_attention
    from medkeras.models.tta import with_tta

    found = {m.name: m for m in leaf_members(model) if any(layer.name == ATTENTION_LAYER for layer in m.layers)}
    if not found:
        return {}
    inputs = keras.Input(model.inputs[0].shape[1:], name="study")
    outputs = [with_attention(with_tta(m, flips))(inputs)[1] for m in found.values()]  # one pass for every member
    both = keras.Model(inputs, outputs, name=f"{model.name}_member_attention")
    ds = make_tf_dataset(volumes, np.zeros(len(volumes), np.int64), data_cfg, batch_size).map(lambda x, y: x)
    out = both.predict(ds, verbose=0)
    out = out if isinstance(out, (list, tuple)) else [out]
    return {name: np.asarray(w, np.float32) for name, w in zip(found, out)}


def write_attention(path, names, attention: dict) -> None:
    """`attention.csv`: per study and series member, the slice it weighed most and every slice's weight."""
    depth = next(iter(attention.values())).shape[1]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "member", "top_slice", *[f"slice_{d}" for d in range(depth)]])
    for member, weights in attention.items():
        for name, w in zip(names, weights):
            writer.writerow([name, member, int(np.argmax(w)), *[f"{v:.6g}" for v in w]])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
