"""Where a study model looked: the slice attention of its series members (`models.study`), per study, for the report
and `attention.csv`."""

from __future__ import annotations

import csv
import io

import numpy as np

from medkeras.utils import atomic_path


def study_attention(model, volumes, data_cfg, batch_size: int = 64) -> dict:
    """{series member: its slice attention (N, D)} for studies (N, D, H, W, C) (`models.study.attention_models`);
    {} for models without series members, or slices."""
    if volumes is None or np.ndim(volumes) != 5:
        return {}
    from medkeras.data.pipeline import make_tf_dataset
    from medkeras.models.study import attention_models

    found = attention_models(model)
    if not found:
        return {}
    ds = make_tf_dataset(volumes, np.zeros(len(volumes), np.int64), data_cfg, batch_size).map(lambda x, y: x)
    return {name: np.asarray(m.predict(ds, verbose=0), np.float32) for name, m in found.items()}


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
