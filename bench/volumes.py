"""A CT series to a resampled volume: medkeras (`read_volume`, geometry checked, then `resample_volume` in the TF
graph) against what a user writes by hand (pydicom per slice, sorted by z, stacked, `scipy.ndimage.zoom`, order 1),
rounds interleaved in one process. Series per second, and the share of each in reading vs resampling. `--studies N`
adds the rate over N studies at once (the series listed N times): the by-hand loop one after another, medkeras'
`study_arrays` as `fit` reads a split (studies in parallel threads, so one study's reading overlaps another's
resampling in TensorFlow's threads; the lung window applied too).

    python -m bench.volumes --series ../shared/data/lung_pet_ct_dx_A0001/Lung_Dx-A0001/04-04-2007-NA-Chest-07990/2.000000-5mm-40805 \
        --rounds 3 --name volumes
    python -m bench.volumes --series ... --rounds 5 --studies 4 --name volumes-split
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.common import save


def by_hand(folder: Path, target):
    import pydicom
    from scipy.ndimage import zoom

    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    t = time.perf_counter()
    dz = abs(float(slices[1].ImagePositionPatient[2]) - float(slices[0].ImagePositionPatient[2]))
    spacing = (dz, *(float(v) for v in slices[0].PixelSpacing))
    out = zoom(hu.astype(np.float32), np.asarray(spacing) / np.asarray(target), order=1)
    return out, time.perf_counter() - t


def medkeras_way(folder: Path, target):
    from medkeras.data.readers.volume import read_volume
    from medkeras.data.volumes import resample_volume

    volume = read_volume(folder)
    t = time.perf_counter()
    out, _ = resample_volume(volume.hu, volume.spacing, target_spacing=target)
    return out.numpy(), time.perf_counter() - t


def by_hand_split(folder: Path, target, n):
    outs = [by_hand(folder, target) for _ in range(n)]
    return outs[-1][0], sum(t for _, t in outs)


def medkeras_split(folder: Path, target, n):
    from medkeras.data.readers.volume import read_volume
    from medkeras.data.studies import study_arrays
    from medkeras.data.types import Split
    from medkeras.data.volumes import resampled_shape

    volume = read_volume(folder)  # only for the shape the crop keeps whole
    size = resampled_shape(volume.shape, volume.spacing, target)
    split = Split(labels=np.zeros(n, int), paths=[str(folder)] * n)
    return study_arrays(split, "lung", target, size)[-1, ..., 0], float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", required=True, help="a folder holding one DICOM series")
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.5, 1.5, 1.5])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--studies", type=int, default=0, help="also the rate over N studies read as fit reads them")
    parser.add_argument("--name", default="volumes")
    args = parser.parse_args()
    folder = Path(args.series)
    ways = {"by hand (pydicom + scipy.ndimage.zoom)": by_hand, "medkeras (read_volume + resample_volume)": medkeras_way}
    if args.studies:
        n = args.studies
        ways[f"by hand, {n} studies in turn"] = lambda f, t: by_hand_split(f, t, n)
        ways[f"medkeras study_arrays, {n} studies (as fit reads a split)"] = lambda f, t: medkeras_split(f, t, n)
    for way in ways.values():  # warm: imports, TF's first graph
        way(folder, args.spacing)
    load_before = os.getloadavg()
    times = {name: [] for name in ways}
    resample = {name: [] for name in ways}
    shapes = {}
    for _ in range(args.rounds):
        for name, way in ways.items():
            t0 = time.perf_counter()
            out, spent = way(folder, args.spacing)
            times[name].append(time.perf_counter() - t0)
            resample[name].append(spent)
            shapes[name] = list(out.shape)
    rows = []
    base = float(np.median(times[next(iter(ways))]))
    for name in ways:
        per = args.studies if "studies" in name else 1
        median = float(np.median(times[name])) / per
        rows.append({"way": name, "series_per_s": round(1 / median, 3), "vs_by_hand": round(base / median, 2),
                     "resample_share": round(float(np.median(resample[name])) / per / median, 3), "shape": shapes[name]})
        print(json.dumps(rows[-1]))
    print("saved", save(args.name, {"rows": rows, "rounds": args.rounds, "slices": len(list(folder.glob("*.dcm"))),
                                    "load_before": load_before, "load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
