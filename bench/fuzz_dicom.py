"""Fuzzing the DICOM reader: real files mutated (truncated, bit-flipped, header values changed or deleted) and read.

Every outcome must be pixels (a finite float32 image) or a `DicomError` naming the file: never another exception,
a hang or a crash. Seeds are the repository's real CT slices, pydicom's CT_small and pydicom-data's files in other
transfer syntaxes (JPEG Lossless, JPEG 2000, JPEG-LS, RLE, big endian, multi-frame). Cases run in a child process
that reports each outcome; a case that kills it (a crash) or runs past `--timeout` (a hang) is recorded and the
child restarted after it.

    python -m bench.fuzz_dicom --cases 10000 --seed 0
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED_NAMES = ["CT_small.dcm", "MR_small_bigendian.dcm", "JPEG-LL.dcm", "693_J2KR.dcm", "MR_small_jpeg_ls_lossless.dcm",
              "MR_small_RLE.dcm", "emri_small.dcm", "JPGExtended.dcm", "SC_rgb.dcm", "bad_sequence.dcm"]
# Header values worth breaking: geometry, sample layout, frames, syntax, rescale, photometric interpretation
TAGS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames",
        "SamplesPerPixel", "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation", "PlanarConfiguration"]
VALUES = [0, 1, -1, 2, 3, 7, 8, 12, 16, 17, 32, 64, 255, 256, 65535, 2**31 - 1, "", "abc", "1e400", "nan", "-0",
          "MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL_422"]
SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.1.99", "1.2.3.4", ""]


def seed_files() -> list[Path]:
    """Real DICOM files to mutate: the repository's slices, pydicom's and pydicom-data's (where installed)."""
    from pydicom.data import get_testdata_file

    files = sorted((ROOT / "tests" / "fixtures" / "lung_pet_ct_dx_A0001").glob("*.dcm"))
    for name in SEED_NAMES:
        path = get_testdata_file(name)
        if path is not None:
            files.append(Path(path))
    return files


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutation of a DICOM file's bytes -> (bytes, what was done)."""
    kind = rng.choice(["truncate", "flip", "tag", "delete", "syntax", "tag+flip"])
    if kind == "truncate":
        cut = int(rng.integers(0, len(data)))
        return data[:cut], f"truncated at {cut}"
    if kind == "flip":
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 16))):
            out[int(rng.integers(0, len(out)))] ^= 1 << int(rng.integers(0, 8))
        return bytes(out), "bit flips"
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if kind in ("tag", "tag+flip"):
        tag, value = str(rng.choice(TAGS)), VALUES[int(rng.integers(0, len(VALUES)))]
        try:
            setattr(ds, tag, value)
        except Exception:  # noqa: BLE001 - a value the tag's VR refuses: write it raw below instead
            tag, value = "Rows", int(rng.integers(0, 70000))
            ds.Rows = value % 65536
        what = f"{tag}={value!r}"
    elif kind == "delete":
        tag = str(rng.choice(TAGS + ["PixelData", "TransferSyntaxUID"]))
        if tag == "TransferSyntaxUID":
            del ds.file_meta.TransferSyntaxUID
        elif tag in ds:
            delattr(ds, tag)
        what = f"deleted {tag}"
    else:
        value = SYNTAXES[int(rng.integers(0, len(SYNTAXES)))]
        ds.file_meta.TransferSyntaxUID = value
        what = f"TransferSyntaxUID={value!r}"
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - pydicom cannot write this mutation: draw another one
        out, other = mutate(data, rng)
        return out, f"{other} (after an unwritable {what})"
    out = buf.getvalue()
    if kind == "tag+flip":
        out = bytearray(out)
        out[int(rng.integers(0, len(out)))] ^= 0xFF
        out, what = bytes(out), what + " + a byte flipped"
    return out, what


def read_one(path) -> str:
    """What reading a file gives: "pixels", "DicomError", or the name of anything else raised."""
    from medkeras.data.readers import is_dicom, read_dicom_hu
    from medkeras.data.readers.dicom_layout import pixel_layout, plain_hu
    from medkeras.data.readers.dicom_tags import dicom_items
    from medkeras.errors import DicomError

    try:
        pixel_layout(path)  # the layout check must never raise
        items = dicom_items(path) if is_dicom(path) else []  # notes the layout: the numpy read below must hold too
        image = plain_hu(path) if len(items) == 1 else None
        image = read_dicom_hu(items[0].name if len(items) > 1 else path) if image is None else image
    except DicomError:
        return "DicomError"
    except Exception as exc:  # noqa: BLE001 - the finding
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    if image.dtype != np.float32 or image.ndim != 2 or not np.isfinite(image).all():
        return f"bad pixels {image.dtype} {image.shape}"
    return "pixels"


def cases(count: int, seed: int):
    """(index, seed file, mutated bytes, what) for `count` cases, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    files = seed_files()
    originals = [f.read_bytes() for f in files]
    for i in range(count):
        k = int(rng.integers(0, len(files)))
        data, what = mutate(originals[k], rng)
        yield i, files[k].name, data, what


def run_cases(count: int, seed: int, start: int = 0, folder=None):
    """Read cases start..count-1 in this process; yields (index, seed file, what, outcome)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="medkeras-fuzz-"))
    for i, name, data, what in cases(count, seed):
        if i < start:
            continue
        path = folder / f"case{i:05d}.dcm"
        path.write_bytes(data)
        yield i, name, what, read_one(path)
        path.unlink()


def _child(count, seed, start):
    for i, name, what, outcome in run_cases(count, seed, start):
        print(json.dumps([i, name, what, outcome]), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one case may take before it is a hang")
    parser.add_argument("--no-save", action="store_true", help="print the result only (the tests' short run)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return _child(args.cases, args.seed, args.child)
    t0, start, outcomes, findings = time.perf_counter(), 0, Counter(), []
    while start < args.cases:  # a child reads cases in order; a crash or a hang restarts it after that case
        proc = subprocess.Popen([sys.executable, "-m", "bench.fuzz_dicom", "--cases", str(args.cases), "--seed",
                                 str(args.seed), "--child", str(start)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        last = time.perf_counter()
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if not selector.select(timeout=args.timeout):
                proc.kill()
                findings.append({"case": start, "outcome": f"hang (> {args.timeout} s)"})
                outcomes["hang"] += 1
                start += 1
                break
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                if start < args.cases:
                    findings.append({"case": start, "outcome": f"crash (exit {proc.returncode})"})
                    outcomes["crash"] += 1
                    start += 1
                break
            i, name, what, outcome = json.loads(line)
            outcomes[outcome if outcome in ("pixels", "DicomError") else "other"] += 1
            if outcome not in ("pixels", "DicomError"):
                findings.append({"case": i, "seed_file": name, "mutation": what, "outcome": outcome})
            start, last = i + 1, time.perf_counter()
            if i % 500 == 0:
                print(f"{i} cases, {dict(outcomes)}", flush=True)
        del last
    seconds = round(time.perf_counter() - t0, 1)
    result = {"cases": args.cases, "seed": args.seed, "seconds": seconds, "outcomes": dict(outcomes),
              "findings": findings[:50], "seed_files": [f.name for f in seed_files()]}
    print(json.dumps(result, indent=1))
    if not args.no_save:
        from bench.common import save

        print("wrote", save("fuzz-dicom", result))


if __name__ == "__main__":
    main()
