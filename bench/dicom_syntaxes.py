"""Reading compressed DICOM: images/s of `read_dicom_hu` per transfer syntax against the uncompressed files, and the
`prepare` time of a compressed series against the same series uncompressed.

The real Lung-PET-CT-Dx series (512 x 512, 12-bit) is re-encoded once into each lossless syntax (pydicom's encoders;
GDCM for the JPEG Lossless processes) and checked to read back the same HU; then every syntax is read in one
process, in interleaved rounds: `read_dicom_hu` on one thread (a per-core figure; the uncompressed rows are read the
same way), and the whole decoding step of `fit` and `prepare` (`decode_files`: lung window, 224 px, both cores;
uncompressed files there are read by numpy from their noted layout, compressed ones through pydicom, in threads).

    python -m bench.dicom_syntaxes --source ../shared/data/lung_pet_ct_dx_A0001 --slices 32 --rounds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SYNTAXES = ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless", "JPEGLossless", "JPEGLosslessSV1",
            "DeflatedExplicitVRLittleEndian", "JPEGLSNearLossless", "JPEG2000"]


def encode(src: Path, dst: Path, syntax: str) -> None:
    import pydicom
    from pydicom import uid

    if syntax in ("JPEGLossless", "JPEGLosslessSV1"):
        import gdcm

        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        name = {"JPEGLossless": "JPEGLosslessProcess14", "JPEGLosslessSV1": "JPEGLosslessProcess14_1"}[syntax]
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, name)))
        change.SetInput(reader.GetImage())
        change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.Write()
        return
    ds = pydicom.dcmread(src)
    if syntax == "DeflatedExplicitVRLittleEndian":
        ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    else:
        options = {"jls_error": 2} if syntax == "JPEGLSNearLossless" else {"j2k_cr": [10]} if syntax == "JPEG2000" else {}
        ds.compress(getattr(uid, syntax), **options)
    ds.save_as(dst, enforce_file_format=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/lung_pet_ct_dx_A0001"))
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prepare-syntax", default="JPEGLosslessSV1")
    parser.add_argument("--prepare-only", action="store_true", help="only the prepare rows")
    args = parser.parse_args(argv)

    from medkeras import read_dicom_hu

    rows = list(csv.DictReader(open(args.source / "slices.csv")))[: args.slices]
    originals = [(args.source / r["path"]).resolve() for r in rows]
    work = Path(tempfile.mkdtemp(prefix="medkeras-syntaxes-"))
    files = {"uncompressed": originals}
    sizes = {"uncompressed": sum(p.stat().st_size for p in originals)}
    for syntax in SYNTAXES:
        folder = work / syntax
        folder.mkdir()
        files[syntax] = []
        for i, src in enumerate(originals):
            dst = folder / f"{i:03d}.dcm"
            encode(src, dst, syntax)
            files[syntax].append(dst)
        sizes[syntax] = sum(p.stat().st_size for p in files[syntax])
        lossy = syntax in ("JPEGLSNearLossless", "JPEG2000")
        same = all(np.array_equal(read_dicom_hu(a), read_dicom_hu(b)) for a, b in zip(originals[:4], files[syntax][:4]))
        assert same or lossy, f"{syntax} did not read back the original HU"
    if args.prepare_only:
        prepared = _prepare_times(work, originals, files[args.prepare_syntax], args.prepare_syntax, args.rounds)
        print(json.dumps(prepared, indent=1))
        from bench.common import save

        print("wrote", save("dicom-prepare", {"slices": len(originals), "prepare": prepared}))
        return
    from medkeras.config import DataConfig
    from medkeras.data.pipeline import decode_files
    from medkeras.data.types import Split

    cfg = DataConfig(source="unused", image_size=224, window=[[-600.0, 1500.0]])
    from medkeras.data.readers import dicom_items

    decode_files(Split(labels=np.zeros(2, np.int64), paths=originals[:2]), cfg, verbose=False)  # warm-up
    for paths in files.values():  # listed first, as `fit` lists a source: plain files' layouts are noted
        for path in paths:
            dicom_items(path)
    rates = {name: [] for name in files}
    pipeline = {name: [] for name in files}
    per_cpu = {name: [] for name in files}  # images per CPU-second of this process: a per-core figure
    for _ in range(args.rounds):  # interleaved: each round reads every syntax once
        for name, paths in files.items():
            t0 = time.perf_counter()
            for path in paths:
                read_dicom_hu(path)
            rates[name].append(len(paths) / (time.perf_counter() - t0))
            t0, c0 = time.perf_counter(), time.process_time()
            decode_files(Split(labels=np.zeros(len(paths), np.int64), paths=paths), cfg, verbose=False)
            pipeline[name].append(len(paths) / (time.perf_counter() - t0))
            per_cpu[name].append(len(paths) / (time.process_time() - c0))
    base, base_pipe = float(np.median(rates["uncompressed"])), float(np.median(pipeline["uncompressed"]))
    base_cpu = float(np.median(per_cpu["uncompressed"]))
    table = {name: {"read_dicom_hu_images_per_s": round(float(np.median(r)), 1),
                    "read_vs_uncompressed": round(float(np.median(r)) / base, 3),
                    "decode_files_images_per_s": round(float(np.median(pipeline[name])), 1),
                    "decode_files_vs_uncompressed": round(float(np.median(pipeline[name])) / base_pipe, 3),
                    "decode_files_images_per_cpu_s": round(float(np.median(per_cpu[name])), 1),
                    "per_core_vs_uncompressed": round(float(np.median(per_cpu[name])) / base_cpu, 3),
                    "bytes_vs_uncompressed": round(sizes[name] / sizes["uncompressed"], 3)} for name, r in rates.items()}
    print(json.dumps(table, indent=1))

    prepared = _prepare_times(work, originals, files[args.prepare_syntax], args.prepare_syntax)
    print(json.dumps(prepared, indent=1))
    from bench.common import save

    print("wrote", save("dicom-syntaxes", {"slices": len(originals), "rounds": args.rounds, "read": table,
                                           "prepare": prepared}))


def _prepare_times(work: Path, originals, compressed, syntax: str, rounds: int = 2) -> dict:
    """`prepare --size 224 --window lung` of the series, uncompressed and compressed, reading in threads and in worker
    processes (`prepare.PROCESS_POOL_MIN`), interleaved over `rounds` -> images/s per case."""
    from medkeras.config import DataConfig
    from medkeras.data import prepare as prep

    minimum = prep.PROCESS_POOL_MIN
    out, n = {}, 0
    for _ in range(rounds):
        for label, paths in (("uncompressed", originals), (syntax, compressed)):
            manifest = work / f"{label}.csv"
            with open(manifest, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["path", "label", "split"])
                for i, path in enumerate(paths):
                    writer.writerow([path, "a" if i % 2 else "b", "train"])
            for pool in ("threads", "processes"):
                prep.PROCESS_POOL_MIN = minimum if pool == "processes" else 10**9
                n += 1
                t0 = time.perf_counter()
                prep.prepare(DataConfig(source=str(manifest), window=[[-600.0, 1500.0]]), work / f"store-{n}", size=224,
                             verbose=False)
                out.setdefault(f"{label}, {pool}", []).append(round(len(paths) / (time.perf_counter() - t0), 1))
    prep.PROCESS_POOL_MIN = minimum
    return {"images_per_s": out}


if __name__ == "__main__":
    main()
