"""bin/serving_client.py: each kind of file goes to the signature made for it, in the request format TF Serving's
REST API takes, and the SavedModel answers what `medkeras predict` answers; errors are one line."""

import base64
import csv
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LUNG, run_cli

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "bin" / "serving_client.py"


def _client():
    spec = importlib.util.spec_from_file_location("serving_client", CLIENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _as_tf_serving_would(loaded, body, outputs=False):
    """What TF Serving's REST API does with a row-format body: each named input stacked over the instances, b64
    objects decoded to bytes, then the signature called -> probabilities (every output, numpy, with `outputs`)."""
    import tensorflow as tf

    fn = loaded.signatures[body["signature_name"]]
    names = set(body["instances"][0])
    assert names == set(fn.structured_input_signature[1])
    feed = {}
    for name in names:
        rows = [row[name] for row in body["instances"]]
        if isinstance(rows[0], dict) and "b64" in rows[0]:
            feed[name] = tf.constant([base64.b64decode(r["b64"]) for r in rows])
        else:
            feed[name] = tf.constant(np.asarray(rows, dtype=np.float32))
    answer = fn(**feed)
    return {k: v.numpy() for k, v in answer.items()} if outputs else answer["probabilities"].numpy()


def _predicted(run, folder, tmp_path):
    out = tmp_path / "predict.csv"
    result = run_cli("predict", run, folder, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out, newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def test_each_kind_goes_to_its_signature_and_answers_as_predict(ct_run, tmp_path, lce_ct):
    """A CT model's export: DICOM slices (one of them a 3-frame file) to serve_hu, their windowed PNG/JPEG pictures
    to serve_encoded, an NPY array to serving_default: each request, as TF Serving would decode it, gives the
    probabilities `medkeras predict` gives for the same file."""
    import tensorflow as tf
    from PIL import Image

    from medkeras.data.readers import read_image

    run, export = ct_run
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(LUNG / "1-13.dcm", folder / "slice.dcm")
    shutil.copy(lce_ct, folder / "three.dcm")
    pixels = np.clip(np.round(read_image(LUNG / "1-01.dcm", [[-600.0, 1500.0]])), 0, 255).astype(np.uint8)[..., 0]
    Image.fromarray(pixels).save(folder / "slice.png")
    Image.fromarray(pixels).save(folder / "slice.jpg", quality=90)
    np.save(folder / "slice.npy", pixels[..., None])  # uint8 pixels (H, W, 1)
    client = _client()
    files = sorted(folder.iterdir())
    bodies = client.rest_requests(files)
    kinds = {b["signature_name"]: len(b["instances"]) for b in bodies}
    assert kinds == {"serve_hu": 4, "serve_encoded": 2, "serving_default": 1}  # 1 + 3 frames; png + jpg; npy
    json.dumps(bodies)  # serializable as sent
    loaded = tf.saved_model.load(str(export))
    expected = _predicted(run, folder, tmp_path)
    order = {"serve_hu": ["slice.dcm", "three.dcm#3", "three.dcm#2", "three.dcm#1"],
             "serve_encoded": ["slice.jpg", "slice.png"], "serving_default": ["slice.npy"]}
    for body in bodies:
        served = _as_tf_serving_would(loaded, body)
        for probs, name in zip(served, order[body["signature_name"]]):
            assert abs(probs[1] - float(expected[name]["p_tumour"])) <= 1e-4, name


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_errors_are_one_line(tmp_path, test_pngs):
    def run(*args):
        proc = subprocess.run([sys.executable, str(CLIENT), *map(str, args)], capture_output=True, text=True,
                              timeout=120)
        return proc.returncode, proc.stderr.strip().splitlines()

    code, err = run(test_pngs[0], "--url", f"http://127.0.0.1:{_free_port()}/v1/models/m:predict")
    assert code == 1 and len(err) == 1 and "cannot reach TF Serving" in err[0]
    (tmp_path / "notes.txt").write_text("not an image")
    code, err = run(tmp_path / "notes.txt")
    assert code == 1 and len(err) == 1 and "not PNG, JPEG, DICOM or NPY" in err[0]
    code, err = run(tmp_path / "absent.png")
    assert code == 1 and err == [f"serving_client: error: {tmp_path / 'absent.png'}: file not found"]
    if importlib.util.find_spec("tensorflow_serving") is None:
        code, err = run(test_pngs[0], "--grpc", tmp_path / "r.pb")
        assert code == 1 and len(err) == 1 and "pip install tensorflow-serving-api" in err[0]
    else:
        pytest.skip("tensorflow-serving-api is installed here: the missing-package line cannot be shown")


def test_a_study_goes_to_serve_volume_as_tf_serving_takes_it_and_answers_as_predict(study_run, tmp_path):
    """`--study`: each series folder one `serve_volume` instance (HU in z order and the spacing), through TF
    Serving's row format as JSON text, answers what `medkeras predict` answers on the run for the same folder."""
    import tensorflow as tf

    run, export, manifest = study_run
    with open(manifest, newline="") as fh:
        folders = [Path(r["path"]) for r in csv.DictReader(fh) if r["split"] == "test"]
    expected = _predicted(run, folders[0].parents[1], tmp_path)  # the patient's folder: its studies
    loaded = tf.saved_model.load(str(export))
    client = _client()
    for folder in folders:
        (body,) = client.rest_requests([folder], study=True)
        body = json.loads(json.dumps(body))  # as sent
        assert body["signature_name"] == "serve_volume" and set(body["instances"][0]) == {"hu", "spacing"}
        assert len(body["instances"][0]["spacing"]) == 3
        answer = _as_tf_serving_would(loaded, body, outputs=True)
        want = expected[str(folder.relative_to(folders[0].parents[1]))]
        np.testing.assert_allclose(answer["probabilities"][0], [float(want["p_normal"]), float(want["p_tumour"])],
                                   atol=1e-5)
        # a series model answers with its slice attention too, the slice weighed most as predict names it
        assert answer["attention"].shape == (1, 4) and abs(float(answer["attention"].sum()) - 1) < 1e-5
        assert int(answer["top_slice"][0]) == int(np.argmax(answer["attention"][0])) == int(want["top_slice"])
    # `medkeras predict` on the export gives the run's rows: the same probabilities and the same top slice
    served_rows = _predicted(export, folders[0].parents[1], tmp_path)
    assert served_rows.keys() == expected.keys()
    for name, row in served_rows.items():
        assert row["top_slice"] == expected[name]["top_slice"] and row["predicted"] == expected[name]["predicted"]
        assert abs(float(row["p_tumour"]) - float(expected[name]["p_tumour"])) < 1e-5
    result = subprocess.run([sys.executable, str(CLIENT), "--study", str(tmp_path / "nowhere")], capture_output=True,
                            text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "nowhere: not found" in result.stderr


def test_a_study_model_takes_studies_and_refuses_a_lone_slice_in_one_line(study_run, tmp_path):
    """`medkeras predict` with a study model: a patient's folder gives one row per series (with the slice attention
    weighed most); one slice of a series is not a study and is refused, naming it. The client, given a folder
    without --study, says to use it."""
    run, _, manifest = study_run
    with open(manifest, newline="") as fh:
        folder = Path(next(r["path"] for r in csv.DictReader(fh) if r["split"] == "test"))
    rows = _predicted(run, folder.parents[1], tmp_path)
    assert len(rows) == 4 and all(r["top_slice"] in {"0", "1", "2", "3"} for r in rows.values())
    lone = sorted(folder.iterdir())[0]
    result = run_cli("predict", run, lone)
    assert result.returncode == 1 and f"{lone.name}: is one slice, not a study" in result.stderr
    assert len(result.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in result.stderr
    client = subprocess.run([sys.executable, str(CLIENT), str(folder)], capture_output=True, text=True)
    assert client.returncode == 1 and "--study" in client.stderr and "Traceback" not in client.stderr
