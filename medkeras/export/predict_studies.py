"""`medkeras predict` with a study model (`model.input` slab, series or volume): one row per CT study.

Inputs are series folders, multi-frame DICOM files, NIfTI files, or folders holding them at any depth (TCIA's
`Patient/Study/Series/1-01.dcm`: every folder that directly holds DICOM files is one study, `studies.find_studies`).
A Keras model scores each study as `fit` read it (`studies.study_volume`: read, resampled, windowed); a SavedModel
gets what a TF Serving client sends, the HU volume and its spacing through `serve_volume`. Rows are named by the
study's path relative to the folder the inputs share (series folders repeat names, never paths), a PatientID folder
shown by its key; series members add the slice their attention weighed most.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from medkeras.errors import DataError


def study_inputs(inputs, key_file=None) -> list[tuple]:
    """(path, name, info with the keyed patient and series) of every study in `inputs`, in order."""
    from medkeras.data.keys import masked_name
    from medkeras.data.readers import is_dicom, is_volume_file
    from medkeras.data.studies import find_studies, study_header

    studies = []
    for item in inputs:
        path = Path(item).resolve()
        if not path.exists():
            raise DataError(item, "not found")
        if path.is_dir():
            found = find_studies(path)
            if not found:
                raise DataError(item, "holds no studies (series folders of DICOM files, or NIfTI files)")
            studies += found
        elif is_volume_file(path):
            studies.append(path)
        elif is_dicom(path):
            from medkeras.data.readers import dicom_items

            if len(dicom_items(path, key_file)) < 2:
                raise DataError(item, "is one slice, not a study: give its series folder")
            studies.append(path)
        else:
            raise DataError(item, "is not a study (a series folder, a multi-frame DICOM file or a NIfTI file)")
    base = os.path.commonpath([str(p.parent) for p in studies])
    out = []
    for path in studies:
        patient, series, masks = study_header(path, key_file)
        name = masked_name(os.path.relpath(path, base), masks)
        out.append((path, name, SimpleNamespace(patient=patient, series=series)))
    return out


def score_studies(scorer, items, on_bad_file="fail", batch_size=8, bar=None):
    """-> (rows (name, info, probs, label, logits, top slice or None), bad (name, cause))."""
    import tensorflow as tf

    from medkeras.data.readers import read_volume
    from medkeras.data.resize import to_model_channels
    from medkeras.data.studies import study_cause, study_volume
    from medkeras.models.outputs import predict_labels, softmax
    from medkeras.models.study import with_attention

    loaded = scorer.loaded
    size, spacing, windows = loaded.volume_size, loaded.meta.get("spacing"), loaded.windows
    both = with_attention(loaded.scoring_model()) if loaded.kind == "keras" else None
    rows, bad = [], []
    for start in range(0, len(items), batch_size):
        chunk, volumes = [], []
        for path, name, info in items[start:start + batch_size]:
            try:
                if loaded.kind == "savedmodel":  # what a client sends: the HU volume and its spacing
                    volume = read_volume(path)
                    volumes.append((np.asarray(volume.hu, np.float32), np.asarray(volume.spacing, np.float32)))
                else:
                    volumes.append(study_volume(path, windows, spacing, size))
            except DataError as exc:
                if on_bad_file == "fail":
                    raise
                bad.append((name, study_cause(path, exc)))
                continue
            chunk.append((name, info))
        if not chunk:
            continue
        if loaded.kind == "savedmodel":
            serve = loaded.model.signatures["serve_volume"]
            outs = [serve(hu=tf.constant(hu[None]), spacing=tf.constant(sp[None])) for hu, sp in volumes]
            probs = np.concatenate([o["probabilities"].numpy() for o in outs])
            labels = np.concatenate([o["label"].numpy() for o in outs])
            logits = np.concatenate([o["logits"].numpy() for o in outs])
            top = (np.concatenate([o["top_slice"].numpy() for o in outs]).tolist() if "top_slice" in outs[0]
                   else [None] * len(chunk))
        else:
            pixels = to_model_channels(np.stack(volumes)).numpy()
            if both is not None:  # logits and slice attention in one pass
                logits, weights = both.predict(pixels, verbose=0)
                top = np.argmax(weights, axis=1).tolist()
            else:
                logits, top = loaded.scoring_model().predict(pixels, verbose=0), [None] * len(chunk)
            logits = np.asarray(logits, np.float32)
            probs = softmax(logits, loaded.temperature)
            labels = predict_labels(probs, loaded.positive_index, loaded.threshold)
        rows += [(name, info, p, int(lb), lg, t) for (name, info), p, lb, lg, t in zip(chunk, probs, labels, logits,
                                                                                       top)]
        if bar is not None:
            bar.update(min(start + batch_size, len(items)))
    return rows, bad
