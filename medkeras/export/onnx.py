"""`medkeras export --format onnx`: the Keras model's logits graph as ONNX (Keras' own exporter, via tf2onnx).

ONNX carries the graph from pixels to logits, with each backbone's normalization and the model's test-time flips
inside; the temperature,
threshold and class names travel beside it in `preprocessing.json` and `labels.txt` (apply
softmax(logits / temperature), then the threshold on the positive class). Verified with onnxruntime.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from medkeras.errors import MedkerasError
from medkeras.export.savedmodel import open_export, preprocessing_facts
from medkeras.export.verify import PARITY_TOLERANCE, verification_batch
from medkeras.utils import dumps_json


def export_onnx(model_path, base, name=None, version=None) -> dict:
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as exc:
        raise MedkerasError(
            f"ONNX export needs tf2onnx and onnxruntime: pip install 'medkeras[onnx]' ({exc.name} is missing)"
        ) from exc
    import onnxruntime as ort

    t0 = time.perf_counter()
    from medkeras.data.resize import to_model_pixels

    loaded, model_dir, version, target = open_export(model_path, base, name, version)
    if loaded.studies:
        raise MedkerasError(f"{model_path}: a study model ({loaded.meta.get('model_input')}); ONNX export is for "
                            "slice models: export it as a SavedModel (--format savedmodel) for serve_volume")
    model, meta = loaded.scoring_model(), loaded.meta  # with its test-time flips in the graph
    images, source, _, _ = verification_batch(loaded)
    pixels = to_model_pixels(images, loaded.image_size)
    expected = np.asarray(model.predict(pixels, verbose=0))
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_dir))
    try:
        out = tmp / "export"
        out.mkdir()
        model(pixels[:1])  # Keras' exporter needs a model that has been called
        model.export(str(out / "model.onnx"), format="onnx", verbose=False)
        (out / "labels.txt").write_text("\n".join(meta["class_names"]) + "\n")
        (out / "preprocessing.json").write_text(dumps_json({**preprocessing_facts(meta), "outputs": "logits"}))
        session = ort.InferenceSession(str(out / "model.onnx"))
        served = session.run(None, {session.get_inputs()[0].name: pixels})[0]
        diff = float(np.abs(served - expected).max())
        if diff > PARITY_TOLERANCE * 100:  # logits, not probabilities: allow float reordering in onnxruntime
            raise MedkerasError(f"{target}: ONNX logits differ from the Keras model by {diff:.2e}")
        os.rename(out, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    check = {"images": int(len(pixels)), "source": source, "max_abs_diff": diff}
    return {"path": str(target), "version": version, "verification": check, "seconds": round(time.perf_counter() - t0, 1)}
