"""A store of CT studies against reading them into memory: peak memory (RSS) and studies/s of one training epoch at
1x and 10x the studies, each in a fresh process.

Studies are the real series' first `--slices` slices, hard-linked into one folder per study (distinct paths, no
disk), half labelled tumour; a manifest names them all train but two val and two test. Each mode also reports its
peak once the first `--plateau` training studies have been fed: a peak that grows with the data rises after that
point; a bounded one (the shuffle buffer's 64 MiB, batches in flight, tf.data's tuned buffers) is reached before it.
Modes:
- `memory`: what `fit` does without a store, the split read into one (N, D, H, W, C) array (`study_split_arrays`),
  then batches gathered from it;
- `store`: `medkeras prepare` (timed, in this process) once per size, then the train split streamed
  (`stream_tf_dataset`: records windowed in the graph, a bounded shuffle buffer of studies); again with glibc's
  mmap threshold fixed at 1 MiB (`MALLOC_MMAP_THRESHOLD_`: glibc raises it after each large free, so freed
  volumes stay in the heap instead of going back to the system).

    python -m bench.study_store --series ../shared/data/lung_pet_ct_dx_A0001/Lung_Dx-A0001/04-04-2007-NA-Chest-07990/2.000000-5mm-40805 \
        --studies 16 --scales 1 5 10 20 --volume 48 160 160 --name study-store-bounded
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

from bench.common import save


def make_studies(series: Path, out: Path, n: int, slices: int) -> Path:
    files = sorted(series.glob("*.dcm"))[:slices]
    rows = []
    for i in range(n):
        folder = out / f"P{i:04d}" / "study" / "series"
        folder.mkdir(parents=True)
        for f in files:
            os.link(f, folder / f.name)  # every series repeats the file names, as TCIA's do
        split = "val" if i in (0, 1) else "test" if i in (2, 3) else "train"
        rows.append([folder, ("normal", "tumour")[i % 2], split])
    manifest = out / "studies.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split"], *rows])
    return manifest


def study_cfg(source, volume):
    from medkeras.config import Config, DataConfig, ModelConfig, validate

    cfg = Config(data=DataConfig(source=str(source), window="lung", image_size=volume[1], volume_size=list(volume)),
                 model=ModelConfig(input="volume", backbones=["resnet18_3d"]))
    validate(cfg)
    return cfg.data


def _peak_mib() -> float:
    return int([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]) / 1024


def epoch(mode: str, source: str, volume, batch: int, first: int = 0):
    """One pass over the train split as `fit` feeds it: (studies, seconds, peak RSS once `first` studies had been
    fed: a peak that grows with the data grows after it, a bounded one is reached before)."""
    from medkeras.data.pipeline import make_tf_dataset, stream_tf_dataset
    from medkeras.data.studies import load_studies, study_split_arrays

    cfg = study_cfg(source, volume)
    train = load_studies(cfg).splits["train"]
    t = time.perf_counter()
    if mode == "store":
        ds = stream_tf_dataset(train, cfg, batch, training=True)
    else:
        volumes, labels, _, _ = study_split_arrays(train, cfg)
        ds = make_tf_dataset(volumes, labels, cfg, batch, training=True)
    n, early = 0, None
    for x, _ in ds:
        n += int(x.shape[0])
        if early is None and n >= first:
            early = _peak_mib()
    return n, time.perf_counter() - t, early


def child(mode: str, source: Path, volume, batch: int, env=None, first: int = 0) -> dict:
    """`epoch` in a fresh process (with `env` added to its environment); peak RSS from /proc (VmHWM), at the end and
    once `first` studies had been fed."""
    code = ("import sys; sys.path.insert(0, '.'); from bench import study_store as b;"
            f"n, s, early = b.epoch({mode!r}, {str(source)!r}, {list(volume)}, {batch}, {first});"
            "print(n, s, early, b._peak_mib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}).stdout.split()
    return {"studies": int(out[-4]), "studies_per_s": round(int(out[-4]) / float(out[-3]), 3),
            "peak_rss_mib": round(float(out[-1]), 1),
            f"peak_rss_mib_after_{first}": None if out[-2] == "None" else round(float(out[-2]), 1)}  # None: fewer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", required=True, help="a folder holding one real DICOM series")
    parser.add_argument("--studies", type=int, default=8, help="studies at 1x")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10], help="multiples of --studies to run")
    parser.add_argument("--slices", type=int, default=32, help="slices per study")
    parser.add_argument("--volume", type=int, nargs=3, default=[48, 160, 160])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--plateau", type=int, default=48, help="report the peak also after this many studies")
    parser.add_argument("--name", default="study-store")
    args = parser.parse_args()
    from medkeras.data.prepare import prepare

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            n = args.studies * scale
            manifest = make_studies(Path(args.series), Path(tmp) / f"x{scale}", n, args.slices)
            t = time.perf_counter()
            prepare(study_cfg(manifest, args.volume), Path(tmp) / f"store{scale}", verbose=False, studies=True)
            prepared = time.perf_counter() - t
            store = Path(tmp) / f"store{scale}"
            for mode, source, env in (("memory", manifest, None), ("store", store, None),
                                      ("store", store, {"MALLOC_MMAP_THRESHOLD_": str(2**20)})):
                row = {"scale": scale, "studies_total": n, "mode": mode, **({"env": env} if env else {}),
                       **child(mode, source, args.volume, args.batch, env, first=args.plateau)}
                if mode == "store":
                    row["prepare_studies_per_s"] = round(n / prepared, 3)
                rows.append(row)
                print(json.dumps(row))
    print("saved", save(args.name, {"rows": rows, "volume": args.volume, "slices": args.slices,
                                    "load_before": load_before, "load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
