#!/usr/bin/env python3
"""Turn image files into a TF Serving request for a medkeras export (REST JSON, or gRPC when installed).

    python bin/serving_client.py scan1.png scan2.jpg --json request.json
    python bin/serving_client.py scan1.png --url http://localhost:8501/v1/models/medkeras:predict
    python bin/serving_client.py scan1.png --grpc request.pb      # needs tensorflow-serving-api

`serve_encoded` (default) sends the PNG/JPEG bytes base64-encoded, as TF Serving's REST API expects
(`{"b64": ...}`); `serving_default` sends float32 pixels [H, W, C] in [0, 255]. Needs numpy and Pillow only.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.request
from pathlib import Path


def rest_request(paths, signature: str = "serve_encoded") -> dict:
    """The REST body for `:predict`: one instance per file, in the signature's named-input row format."""
    instances = []
    for path in paths:
        data = Path(path).read_bytes()
        if signature == "serve_encoded":
            instances.append({"image_bytes": {"b64": base64.b64encode(data).decode("ascii")}})
        elif signature == "serving_default":
            import io

            import numpy as np
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
            instances.append({"image": pixels.tolist()})
        else:
            raise SystemExit(f"serving_client: unsupported signature '{signature}' (serve_encoded or serving_default)")
    return {"signature_name": signature, "instances": instances}


def grpc_request(paths, model_name: str = "medkeras"):
    """A `PredictRequest` for `serve_encoded` (needs `pip install tensorflow-serving-api`)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serve_encoded"
    data = [Path(p).read_bytes() for p in paths]
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(data, dtype=tf.string, shape=[len(data)]))
    return request


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="PNG or JPEG files")
    parser.add_argument("--signature", default="serve_encoded", choices=["serve_encoded", "serving_default"])
    parser.add_argument("--json", help="write the REST request body here (default: standard output)")
    parser.add_argument("--url", help="POST the request to this TF Serving :predict URL and print the answer")
    parser.add_argument("--grpc", help="write a serialized gRPC PredictRequest here")
    parser.add_argument("--model-name", default="medkeras")
    args = parser.parse_args(argv)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        print(f"serving_client: error: {missing[0]}: file not found", file=sys.stderr)
        return 1
    if args.grpc:
        Path(args.grpc).write_bytes(grpc_request(args.images, args.model_name).SerializeToString())
        return 0
    body = rest_request(args.images, args.signature)
    if args.url:
        req = urllib.request.Request(args.url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as response:  # noqa: S310 - the user's own server
            print(response.read().decode())
    elif args.json:
        Path(args.json).write_text(json.dumps(body))
    else:
        print(json.dumps(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
