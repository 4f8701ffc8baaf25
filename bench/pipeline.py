"""Input pipeline: DICOM -> HU -> lung window -> resize -> flip + rotation, images/s against PyTorch-style loops.

Baselines, in the same run on the same files: a per-file Python loop doing what a PyTorch notebook's
`Dataset.__getitem__` does (pydicom + numpy + PIL, one image at a time, collated into batches), and the same
`Dataset` behind a `torch.utils.data.DataLoader` with 2 worker processes (if torch is installed).
medkeras rows: from DICOM (`split_arrays`: pydicom parses the headers, in forked workers for a long listing; numpy
reads, rescales and windows the pixels from the noted layout and Pillow resizes them, in threads; then the tf.data
pipeline with one fused flip/rotation resampling), and from a `medkeras
prepare` store (sized: windowed pixels at the training size; native: HU at 512 px, windowed and resized in the
graph). Every mode runs in its own fresh process per round (`child_run`: a warm-up epoch, then one timed epoch
over the same items); rounds are interleaved.

Also measured: input stall (a ResNet-18 training step fed by the store pipeline against the same steps fed one
cached batch) and peak memory (RSS) of one streamed epoch at 1x and 10x the data, each in a fresh process.

    python -m bench.pipeline --source ../shared/data/lung_pet_ct_dx_A0001 --rounds 3 --repeat 4 [--torch-python VENV/bin/python]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LEVEL, WIDTH = -600.0, 1500.0  # the lung window


def manifest(source: Path, out: Path, repeat: int = 1) -> Path:
    """A medkeras manifest of the series' slices (tumour box or not), repeated `repeat` times (train split)."""
    rows = list(csv.DictReader(open(source / "slices.csv")))
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for r in range(repeat):
            for i, row in enumerate(rows):
                split = "train" if r or i % 8 else ("val" if i % 16 else "test")
                writer.writerow([source / row["path"], "tumour" if row["has_tumor_bbox"] != "0" else "normal", split])
    return out


class LoopDataset:
    """What a PyTorch notebook writes: read, rescale, window, resize, augment, one file per `__getitem__`."""

    def __init__(self, paths, labels, size, seed=0):
        self.paths, self.labels, self.size = paths, labels, size
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import pydicom
        from PIL import Image

        ds = pydicom.dcmread(self.paths[i])
        hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        lo = LEVEL - WIDTH / 2
        x = np.clip((hu - lo) / WIDTH, 0.0, 1.0) * 255.0
        img = Image.fromarray(x).resize((self.size, self.size), Image.BILINEAR)
        if self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = img.rotate(float(self.rng.uniform(-18, 18)), resample=Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32)
        return np.repeat(arr[..., None], 3, axis=-1), self.labels[i]


def loop_epoch(paths, labels, size, batch):
    """One epoch of the per-file loop: a callable returning the number of images it delivered."""
    data = LoopDataset(paths, labels, size)

    def epoch():
        order = np.random.default_rng(0).permutation(len(data))
        n = 0
        for start in range(0, len(order), batch):
            items = [data[i] for i in order[start:start + batch]]
            n += len(np.stack([a for a, _ in items]))
        return n

    return epoch


def torch_epoch(paths, labels, size, batch, workers=2):
    """One epoch of a torch DataLoader over the same Dataset (workers start each epoch, as by default)."""
    import torch

    loader = torch.utils.data.DataLoader(LoopDataset(paths, labels, size), batch_size=batch, shuffle=True,
                                         num_workers=workers)
    return lambda: sum(len(x) for x, _ in loader)


def _train_items(manifest_path):
    rows = list(csv.DictReader(open(manifest_path)))
    rows = [r for r in rows if r["split"] == "train"]
    return [r["path"] for r in rows], [int(r["label"] == "tumour") for r in rows]


def python_loop(manifest_path, size, batch):
    """The per-file loop over a manifest's train split (this process never imports TensorFlow)."""
    return loop_epoch(*_train_items(manifest_path), size, batch)


def torch_loader(manifest_path, size, batch):
    return torch_epoch(*_train_items(manifest_path), size, batch)


LUNG = [[-600.0, 1500.0]]  # data.window: lung, as config validation resolves it


def data_cfg(source, size, window=LUNG):
    from medkeras.config import AugmentConfig, DataConfig

    augment = AugmentConfig(flip="horizontal", rotation=0.05, brightness=0, contrast=0, fill_mode="constant")
    return DataConfig(source=str(source), image_size=size, window=window, augment=augment)  # the loop's work


def dicom_decode(manifest_path, size):
    """medkeras' file path: the train split decoded (read, HU, window, resize) into memory (`decode_files`)."""
    from medkeras.data.pipeline import split_arrays
    from medkeras.data.sources import load_dataset

    cfg = data_cfg(manifest_path, size)
    images, labels, _, _ = split_arrays(load_dataset(cfg).splits["train"], cfg, verbose=False)
    return images, labels, cfg


def dicom_single_pass(manifest_path, size, batch):
    """Decode every file and augment it once: the whole cost of one pass from DICOM."""
    from medkeras.data.pipeline import make_tf_dataset

    def epoch():
        images, labels, cfg = dicom_decode(manifest_path, size)
        return sum(len(x) for x, _ in make_tf_dataset(images, labels, cfg, batch, training=True))

    return epoch


def cached_epoch(manifest_path, size, batch):
    """Later epochs of a medkeras run from DICOM: decoded once, augmented from the in-memory cache."""
    from medkeras.data.pipeline import make_tf_dataset

    images, labels, cfg = dicom_decode(manifest_path, size)
    ds = make_tf_dataset(images, labels, cfg, batch, training=True)
    return lambda: sum(len(x) for x, _ in ds)


def store_epoch(store, size, batch, window=LUNG):
    """One epoch streamed from a prepared store (the dataset object built once, as `fit` does)."""
    from medkeras.data.pipeline import stream_tf_dataset
    from medkeras.data.sources import load_dataset

    cfg = data_cfg(store, size, window)
    ds = stream_tf_dataset(load_dataset(cfg).splits["train"], cfg, batch, training=True)
    return lambda: sum(len(x) for x, _ in ds)


def timed(epoch):
    t = time.perf_counter()
    n = epoch()
    return n / (time.perf_counter() - t), n


def stall(store, size, batch, steps):
    """Share of a training step spent waiting for input: store pipeline vs one cached batch repeated."""
    import keras
    import tensorflow as tf

    from medkeras.data.pipeline import stream_tf_dataset
    from medkeras.data.sources import load_dataset
    from medkeras.models.ensemble import build_member

    cfg = data_cfg(store, size)
    split = load_dataset(cfg).splits["train"]
    real = stream_tf_dataset(split, cfg, batch, training=True).repeat()
    fixed = real.take(1).cache().repeat()
    model = build_member("resnet18", 2, size)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(fixed, steps_per_epoch=2, epochs=1, verbose=0)  # graph building out of the timing

    class StepTimes(keras.callbacks.Callback):
        """Per-step wall times; the first `warm` steps (pipeline start: shuffle buffer, prefetch) are left out."""

        def __init__(self, warm=2):
            super().__init__()
            self.warm, self.ends = warm, []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def median(self):
            return float(np.median(np.diff(self.ends[self.warm - 1:])))

    times = {}
    for name, ds in (("cached batch", fixed), ("store pipeline", real), ("cached batch ", fixed), ("store pipeline ", real)):
        clock = StepTimes()
        model.fit(ds, steps_per_epoch=steps + 2, epochs=1, verbose=0, callbacks=[clock])
        times.setdefault(name.strip(), []).append(clock.median())
    del tf
    step_fixed, step_real = min(times["cached batch"]), min(times["store pipeline"])
    return {"step_s_cached": step_fixed, "step_s_pipeline": step_real, "stall": max(0.0, 1 - step_fixed / step_real)}


def child_run(mode, path, size, batch, python=None):
    """Run two epochs of `mode` in a fresh process; returns images/s of the second and the peak RSS (VmHWM).

    Every mode gets its own process, as a user's training script would: run in one process after TensorFlow's
    pipelines, the plain Python loop measured 2x slower than alone (same code, nothing else running), which
    would flatter medkeras. The loop's and torch's processes never import TensorFlow. VmHWM from /proc, not
    ru_maxrss: the latter survives fork + exec and would report the parent's peak.
    """
    code = (
        "import sys; sys.path.insert(0, '.');"
        "from bench import pipeline as p;"
        f"e = p.{mode}({str(path)!r}, {size}, {batch}); p.timed(e); r, n = p.timed(e);"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        "print(r, n, int(hwm) / 1024)"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([str(python or sys.executable), "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return {"images_per_s": float(out[-3]), "images": int(out[-2]), "peak_rss_mib": float(out[-1])}


def _has_torch(python=None) -> bool:
    """Whether torch imports in `python` (another interpreter, e.g. a venv holding torch beside this one's TF)."""
    code = "import torch, pydicom, PIL"
    return subprocess.run([str(python or sys.executable), "-c", code], capture_output=True).returncode == 0


def first_pass(m1, args):
    """`--first-pass-only`: the loop, torch's DataLoader and medkeras' one pass from DICOM, interleaved rounds."""
    from bench.common import save

    modes = {"python loop": "python_loop", "medkeras from DICOM, one pass": "dicom_single_pass"}
    if _has_torch(args.torch_python):
        modes["torch DataLoader, 2 workers"] = "torch_loader"
    rates = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, mode in modes.items():
            python = args.torch_python if mode == "torch_loader" else None
            rates[name].append(child_run(mode, m1, args.size, args.batch, python)["images_per_s"])
    loop = float(np.median(rates["python loop"]))
    table = {name: {"images_per_s": float(np.median(r)), "vs_loop": float(np.median(r)) / loop, "runs": r}
             for name, r in rates.items()}
    load = os.getloadavg()[0]
    print(json.dumps(table, indent=1), f"\nload average after: {load:.2f}")
    print("wrote", save("pipeline-first-pass", {"throughput": table, "load_after": load}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/lung_pet_ct_dx_A0001"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=4, help="epoch = the series' slices this many times")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stall-steps", type=int, default=6)
    parser.add_argument("--stall-only", action="store_true", help="only the input-stall measurement")
    parser.add_argument("--first-pass-only", action="store_true",
                        help="only the loop, torch and medkeras' first pass from DICOM (no stores, stall or memory)")
    parser.add_argument("--torch-python", type=Path, default=None,
                        help="interpreter for the torch DataLoader row (a venv with torch, pydicom and Pillow)")
    parser.add_argument("--fit-epochs", type=int, default=20, help="epochs of the derived whole-fit row (lung-ct: 20)")
    args = parser.parse_args(argv)

    from medkeras._quiet import quiet_tensorflow

    quiet_tensorflow()
    from medkeras.config import DataConfig
    from medkeras.data.prepare import prepare

    load = [os.getloadavg()[0]]
    print(f"load average before: {load[0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="medkeras-bench-"))
    m1 = manifest(args.source.resolve(), work / "x1.csv", args.repeat)
    rows = list(csv.DictReader(open(m1)))
    paths = _train_items(m1)[0]

    if args.first_pass_only:
        return first_pass(m1, args)
    t = time.perf_counter()
    prepare(DataConfig(source=str(m1), window=LUNG), work / "sized", size=args.size, verbose=False)
    prepare_sized = len(rows) / (time.perf_counter() - t)
    if args.stall_only:
        from bench.common import save

        result = stall(work / "sized", args.size, args.batch, args.stall_steps)
        print(json.dumps(result), "\nwrote", save("pipeline-stall", result))
        return
    t = time.perf_counter()
    prepare(DataConfig(source=str(m1), window=LUNG), work / "native", verbose=False)
    prepare_native = len(rows) / (time.perf_counter() - t)

    modes = {
        "python loop (PyTorch-style __getitem__)": ("python_loop", m1),
        "medkeras from DICOM, one pass (headers by pydicom, pixels by numpy + Pillow in threads)": ("dicom_single_pass", m1),
        "medkeras from DICOM, later epochs (decoded once, cached)": ("cached_epoch", m1),
        "medkeras from store (--size 224: pixels)": ("store_epoch", work / "sized"),
        "medkeras from store (native 512 HU, windowed + resized in graph)": ("store_epoch", work / "native"),
    }
    if _has_torch(args.torch_python):
        modes["torch DataLoader, 2 workers"] = ("torch_loader", m1)
    rates = {name: [] for name in modes}
    for _ in range(args.rounds):  # rounds interleaved; each mode in a fresh process, its second epoch timed
        for name, (mode, path) in modes.items():
            python = args.torch_python if mode == "torch_loader" else None
            rates[name].append(child_run(mode, path, args.size, args.batch, python)["images_per_s"])
    loop = float(np.median(rates["python loop (PyTorch-style __getitem__)"]))
    table = {name: {"images_per_s": float(np.median(r)), "vs_loop": float(np.median(r)) / loop, "runs": r}
             for name, r in rates.items()}
    one = table["medkeras from DICOM, one pass (headers by pydicom, pixels by numpy + Pillow in threads)"]["images_per_s"]
    later = table["medkeras from DICOM, later epochs (decoded once, cached)"]["images_per_s"]
    epochs = args.fit_epochs
    fit_rate = epochs / (1 / one + (epochs - 1) / later)  # derived: one decoding pass, then cached epochs
    table[f"medkeras from DICOM, {epochs}-epoch fit (derived: 1 pass + {epochs - 1} cached)"] = {
        "images_per_s": fit_rate, "vs_loop": fit_rate / loop, "runs": []}
    print(json.dumps(table, indent=1))

    stall_result = stall(work / "sized", args.size, args.batch, args.stall_steps)
    print(json.dumps(stall_result))

    m10 = manifest(args.source.resolve(), work / "x10.csv", args.repeat * 10)
    prepare(DataConfig(source=str(m10), window=LUNG), work / "sized10", size=args.size, verbose=False)
    m4 = manifest(args.source.resolve(), work / "x4.csv", args.repeat * 4)
    prepare(DataConfig(source=str(m4), window=LUNG), work / "sized4", size=args.size, verbose=False)
    memory = {
        "store 1x": child_run("store_epoch", work / "sized", args.size, args.batch),
        "store 4x": child_run("store_epoch", work / "sized4", args.size, args.batch),
        "store 10x": child_run("store_epoch", work / "sized10", args.size, args.batch),
        "from DICOM (cached) 1x": child_run("cached_epoch", m1, args.size, args.batch),
        "from DICOM (cached) 4x": child_run("cached_epoch", m4, args.size, args.batch),
        "from DICOM (cached) 10x": child_run("cached_epoch", m10, args.size, args.batch),
    }
    print(json.dumps(memory, indent=1))

    from bench.common import save

    load.append(os.getloadavg()[0])
    print(f"load average after: {load[1]:.2f}")
    path = save("pipeline", {"load": load,
        "items_per_epoch": len(paths), "size": args.size, "batch": args.batch,
        "prepare_images_per_s": {"sized": prepare_sized, "native": prepare_native},
        "throughput": table, "stall": stall_result, "memory": memory,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
