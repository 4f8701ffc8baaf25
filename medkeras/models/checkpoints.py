"""Read PyTorch state dicts as numpy arrays, without PyTorch: `.safetensors` (timm / Hugging Face caches) through
the safetensors package's numpy API, and `.pth` / `.pt` / `.bin` (torchvision's cache) through a restricted
unpickler that rebuilds only tensors, parameters and dicts (nothing else in the pickle runs: as torch.load's
`weights_only=True`). Both the zip format (torch >= 1.6) and the legacy tar-less pickle stream are read.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from medkeras.errors import MedkerasError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _bfloat16_to_float32(raw: bytes) -> np.ndarray:
    halves = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32)
    return (halves << 16).view(np.float32)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    if not size:  # a 0-d tensor (e.g. num_batches_tracked) stays an array, so it is kept with the rest
        return np.array(storage[offset])
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=[s * item for s in stride])
    return np.array(view)


def _rebuild_parameter(data, *_ignored):
    return data


class _Unpickler(pickle.Unpickler):
    """Rebuilds torch tensors as numpy arrays from `load_storage(key, dtype_name)`; refuses every other class."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage
        self._storages: dict = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "torch" and name in ("float32", "float16", "bfloat16", "float64", "int64"):
            return name
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only tensors and dicts are read)")

    def persistent_load(self, pid):
        kind, storage_type, key = pid[0], pid[1], pid[2]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        if key not in self._storages:
            self._storages[key] = self._load_storage(str(key), storage_type, int(pid[4]))
        storage = self._storages[key]
        if len(pid) > 5 and pid[5] is not None:  # legacy view: (view key, offset, size)
            _, offset, size = pid[5]
            storage = storage[offset:offset + size]
        return storage


def _as_array(raw: bytes, storage_type) -> np.ndarray:
    dtype = _STORAGE_DTYPES.get(storage_type if isinstance(storage_type, str) else "", None)
    if dtype is None:
        raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
    if dtype == "bfloat16":
        return _bfloat16_to_float32(raw)
    return np.frombuffer(raw, dtype=dtype)


def _read_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise pickle.UnpicklingError("no data.pkl in the archive")
        root = pickles[0][: -len("data.pkl")]

        def load(key, storage_type, _numel):
            return _as_array(archive.read(f"{root}data/{key}"), storage_type)

        with archive.open(pickles[0]) as handle:
            return _Unpickler(handle, load).load()


def _itemsize(storage_type) -> int:
    dtype = _STORAGE_DTYPES[storage_type]
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _read_legacy(path: Path) -> dict:
    """torch < 1.6's format: magic, protocol, sys info, the pickled object, its storage keys, then each storage's
    bytes. The storages follow the pickle, so it is read twice: once to learn their types, once to build tensors."""
    with open(path, "rb") as handle:
        if pickle.load(handle) != _LEGACY_MAGIC:
            raise pickle.UnpicklingError("neither a zip nor a legacy PyTorch file")
        pickle.load(handle), pickle.load(handle)  # protocol version, sys info
        start = handle.tell()
        types: dict = {}

        def learn(key, storage_type, numel):
            types[key] = storage_type
            return np.zeros(numel, "float32")  # a stand-in of the right size

        _Unpickler(handle, learn).load()
        arrays = {}
        for key in pickle.load(handle):
            (count,) = struct.unpack("<q", handle.read(8))
            arrays[key] = _as_array(handle.read(count * _itemsize(types[key])), types[key])
        handle.seek(start)
        return _Unpickler(handle, lambda key, storage_type, _numel: arrays[key]).load()


def _unwrap(obj, path: Path) -> dict:
    """The state dict inside a checkpoint: {"state_dict": ...} / {"model": ...} wrappers and a common "module."
    prefix (DataParallel) are removed; only arrays are kept."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise MedkerasError(f"{path}: not a state dict (a {type(obj).__name__}); save model.state_dict()")
    arrays = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise MedkerasError(f"{path}: no tensors in the checkpoint")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in arrays):
            arrays = {k[len(prefix):]: v for k, v in arrays.items()}
    return arrays


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A PyTorch checkpoint's tensors by name, as numpy arrays (bfloat16 widened to float32)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MedkerasError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            try:
                obj = load_file(str(path))
            except TypeError:  # numpy has no bfloat16: read raw through the framework-free API
                obj = _read_safetensors_bf16(path)
        elif path.suffix == ".h5":
            raise MedkerasError(f"{path}: already a Keras weights file; give it to model.weights directly")
        else:
            obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except MedkerasError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: one line naming it
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MedkerasError(f"{path}: cannot read as a PyTorch checkpoint ({detail})") from exc
    return _unwrap(obj, path)


def _read_safetensors_bf16(path: Path) -> dict:
    """safetensors' header is JSON after an 8-byte length; bfloat16 tensors are widened to float32 here."""
    import json

    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    body = raw[8 + length:]
    kinds = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
             "U8": np.uint8, "BOOL": np.bool_}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        chunk = body[begin:end]
        values = _bfloat16_to_float32(chunk) if info["dtype"] == "BF16" else np.frombuffer(chunk, kinds[info["dtype"]])
        out[name] = values.reshape(info["shape"])
    return out
