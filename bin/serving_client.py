#!/usr/bin/env python3
"""Send images to a medkeras export served by TF Serving, each kind to the signature made for it (REST or gRPC).

    python bin/serving_client.py scan.png slice.jpg --json request.json        # write the REST body
    python bin/serving_client.py slice.dcm --url http://localhost:8501/v1/models/ct:predict
    python bin/serving_client.py scan.png --grpc request.pb                    # a serialized PredictRequest
    python bin/serving_client.py scan.png --grpc-target localhost:8500 --model-name ct

- PNG / JPEG -> `serve_encoded`: the file's bytes, base64 in REST JSON (`{"b64": ...}`), decoded in the graph.
- DICOM -> `serve_hu`: Hounsfield units read here (medkeras' reader when installed, else pydicom's modality LUT);
  a multi-frame file sends one instance per frame. Needs pydicom (and its decoders for compressed files).
- NPY -> `serving_default`: uint8 or uint16 pixels (H, W[, C]), sent as float32 [0, 255] (uint16 scaled by
  255/65535, as medkeras reads them); with --npy-hu, a 2-D array of Hounsfield units goes to `serve_hu`.
- with --study, each input is one CT study -> `serve_volume` (a study model's export): a series folder, a
  multi-frame DICOM file or a NIfTI file, read here as one HU volume (D, H, W) in z order with its spacing
  (z, y, x mm) by medkeras' volume reader; resampled and windowed in the graph.
Instances of one signature and shape go in one request; others in their own. Needs numpy only for PNG/JPEG; errors
(a missing file or package, no server listening) are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

PICTURES = {".png", ".jpg", ".jpeg"}
DICOM = {".dcm", ".dicom"}


class ClientError(Exception):
    """One line for the user."""


def read_hu(path: Path):
    """float32 (F, H, W) Hounsfield units of a DICOM file (F frames), as medkeras reads them where installed."""
    try:
        import numpy as np
        import pydicom
    except ImportError as exc:
        raise ClientError(f"{path}: reading DICOM needs {exc.name} (pip install pydicom numpy)") from exc
    try:
        from medkeras.data.readers import dicom_items, read_dicom_hu
    except ImportError:  # plain pydicom: the modality LUT (rescale slope / intercept), every frame
        from pydicom.pixels import apply_modality_lut

        try:
            ds = pydicom.dcmread(str(path))
            pixels = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
            raise ClientError(f"{path}: cannot read DICOM: {str(exc).splitlines()[0]}") from exc
        return pixels if pixels.ndim == 3 else pixels[None]
    try:
        return np.stack([read_dicom_hu(item.name) for item in dicom_items(path)])
    except ValueError as exc:  # medkeras' DicomError
        raise ClientError(str(exc)) from exc


def study_instances(path: Path) -> list[tuple[str, tuple, dict]]:
    """The studies at `path` (a series folder, a multi-frame DICOM or NIfTI file, or a folder holding them at any
    depth, as `medkeras predict` finds them) as `serve_volume` instances: HU (D, H, W) in z order and spacing."""
    if not path.exists():
        raise ClientError(f"{path}: not found")
    try:
        from medkeras.data.readers import read_volume
        from medkeras.data.studies import find_studies
    except ImportError as exc:
        raise ClientError(f"studies are read with medkeras' volume reader (pip install medkeras): {exc}") from exc
    studies = find_studies(path) if path.is_dir() else [path]
    if not studies:
        raise ClientError(f"{path}: holds no studies (series folders of DICOM files, or NIfTI files)")
    out = []
    for study in studies:
        try:
            volume = read_volume(study)
        except ValueError as exc:  # medkeras' DataError: one line naming the file
            raise ClientError(str(exc)) from exc
        hu = volume.hu.astype("float32")
        out.append(("serve_volume", hu.shape, {"hu": hu.tolist(), "spacing": [float(v) for v in volume.spacing]}))
    return out


def instances(paths, npy_hu: bool = False, study: bool = False) -> list[tuple[str, tuple, dict]]:
    """(signature, shape, instance) per image (or per study, with `study`), in the row format TF Serving's REST API
    takes."""
    if study:
        return [instance for p in paths for instance in study_instances(Path(p))]
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            raise ClientError(f"{path}: a folder; for a study model's serve_volume, send studies with --study")
        if not path.is_file():
            raise ClientError(f"{path}: file not found")
        suffix = path.suffix.lower()
        if suffix in PICTURES:
            out.append(("serve_encoded", (), {"image_bytes": {"b64": base64.b64encode(path.read_bytes()).decode()}}))
        elif suffix in DICOM:
            for frame in read_hu(path):
                out.append(("serve_hu", frame.shape, {"hu": frame.tolist()}))
        elif suffix == ".npy":
            import numpy as np

            array = np.load(path, allow_pickle=False)
            if npy_hu and array.ndim == 2:
                out.append(("serve_hu", array.shape, {"hu": array.astype(np.float32).tolist()}))
                continue
            if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3):
                raise ClientError(f"{path}: send pixels as a uint8 or uint16 (H, W[, C]) array, or HU with --npy-hu "
                                  f"(got {array.dtype} {array.shape})")
            scale = 255.0 / 65535.0 if array.dtype == np.uint16 else 1.0
            pixels = array.astype(np.float32) * np.float32(scale)
            pixels = pixels[..., None] if pixels.ndim == 2 else pixels
            out.append(("serving_default", pixels.shape, {"image": pixels.tolist()}))
        else:
            raise ClientError(f"{path}: not PNG, JPEG, DICOM or NPY (the signatures take those)")
    return out


def rest_requests(paths, npy_hu: bool = False, study: bool = False) -> list[dict]:
    """REST bodies for `:predict`: one per signature and shape, in the order the files first need them."""
    groups: dict = {}
    for signature, shape, instance in instances(paths, npy_hu, study):
        groups.setdefault((signature, shape), []).append(instance)
    return [{"signature_name": signature, "instances": rows} for (signature, _), rows in groups.items()]


def rest_request(paths, signature: str = "serve_encoded") -> dict:
    """The single REST body for PNG/JPEG files (kept for scripts that build one request)."""
    bodies = rest_requests(paths)
    if len(bodies) != 1 or bodies[0]["signature_name"] != signature:
        raise ClientError(f"these files need {len(bodies)} requests ({[b['signature_name'] for b in bodies]})")
    return bodies[0]


def grpc_requests(paths, model_name: str = "medkeras", npy_hu: bool = False, study: bool = False) -> list:
    """`PredictRequest`s for the same groups (needs `pip install tensorflow-serving-api`)."""
    import importlib.util
    import os

    if importlib.util.find_spec("tensorflow_serving") is None:  # before TensorFlow's start-up chatter
        raise ClientError("gRPC needs tensorflow_serving (pip install tensorflow-serving-api)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    out = []
    for body in rest_requests(paths, npy_hu, study):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = body["signature_name"]
        for name in body["instances"][0]:  # serve_volume takes two inputs, hu and spacing
            rows = [row[name] for row in body["instances"]]
            if name == "image_bytes":
                value = tf.make_tensor_proto([base64.b64decode(r["b64"]) for r in rows], dtype=tf.string)
            else:
                value = tf.make_tensor_proto(np.asarray(rows, dtype=np.float32))
            request.inputs[name].CopyFrom(value)
        out.append(request)
    return out


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - the user's own server
            return json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip().replace("\n", " ")[:300]
        raise ClientError(f"{url}: the server answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClientError(f"{url}: cannot reach TF Serving ({reason})") from exc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="PNG, JPEG, DICOM or NPY files (with --study: studies)")
    parser.add_argument("--json", help="write the REST request bodies here (a list; default: standard output)")
    parser.add_argument("--url", help="POST them to this TF Serving :predict URL and print the answers")
    parser.add_argument("--grpc", help="write the serialized gRPC PredictRequests here (length-prefixed)")
    parser.add_argument("--grpc-target", help="send them over gRPC to HOST:PORT and print the answers")
    parser.add_argument("--model-name", default="medkeras")
    parser.add_argument("--npy-hu", action="store_true", help="2-D NPY arrays are Hounsfield units: send to serve_hu")
    parser.add_argument("--study", action="store_true",
                        help="each input a CT study (series folder, multi-frame DICOM, NIfTI): send to serve_volume")
    args = parser.parse_args(argv)
    try:
        if args.grpc or args.grpc_target:
            requests = grpc_requests(args.images, args.model_name, args.npy_hu, args.study)
            if args.grpc:
                with open(args.grpc, "wb") as fh:
                    for request in requests:
                        data = request.SerializeToString()
                        fh.write(len(data).to_bytes(4, "little") + data)
            if args.grpc_target:
                _send_grpc(args.grpc_target, requests)
            return 0
        bodies = rest_requests(args.images, args.npy_hu, args.study)
        if args.url:
            for body in bodies:
                print(json.dumps(post(args.url, body)))
        elif args.json:
            Path(args.json).write_text(json.dumps(bodies))
        else:
            print(json.dumps(bodies))
    except ClientError as exc:
        print(f"serving_client: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _send_grpc(target: str, requests) -> None:
    try:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc
    except ImportError as exc:
        raise ClientError(f"gRPC needs {exc.name} (pip install grpcio tensorflow-serving-api)") from exc
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
    for request in requests:
        try:
            print(stub.Predict(request, timeout=60))
        except grpc.RpcError as exc:
            raise ClientError(f"{target}: gRPC failed ({exc.code().name}: {exc.details()})") from exc


if __name__ == "__main__":
    sys.exit(main())
