"""Listing many DICOM files: each header parsed once (`dicom_tags.dicom_items`), on every core.

pydicom's parse is pure Python and holds the GIL (a pool of 4 threads was 2x slower than one), so a long listing
is split over forked processes: each parses its share and sends back the images and the pixel layouts it noted,
which this process notes as its own, so that decoding still reads no header twice. Measured here (512 real CT
slices, 2 cores, TensorFlow loaded): see bench/RESULTS.md. Short listings, systems without `fork`, and any file
whose listing raised in a worker are listed here, one by one, exactly as before, so errors are this process's.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial

from medkeras.data.readers import dicom_layout
from medkeras.data.readers.dicom import headers_parsed
from medkeras.data.readers.dicom_tags import dicom_items
from medkeras.errors import DataError

PARALLEL_FROM = 256  # files: a shorter listing is done here (starting workers costs ~0.1 s)
_RAISED = "raised"  # a worker's marker: this file is listed again here, where its exception is raised


def _listed(path, key_file):
    """dicom_items(path) as `list_dicom` keeps it: [SliceInfo], or None for a header that cannot be read."""
    try:
        return dicom_items(path, key_file)
    except DataError:
        return None


def _share(paths, key_file) -> list:
    """A worker's part: (images or None or _RAISED, the noted layout entry) per path."""
    out = []
    with headers_parsed():
        for path in paths:
            try:
                items = _listed(path, key_file)
            except Exception:  # noqa: BLE001 - listed again in the parent, which raises it there
                items = _RAISED
            out.append((items, dicom_layout.noted(path)))
    return out


def _workers(n: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n < PARALLEL_FROM or cores < 2 or sys.platform != "linux":
        return 1
    return min(cores, 8)


def list_dicom(paths, key_file=None) -> list:
    """[SliceInfo] (or None: the header cannot be read) for each DICOM path, in order; in forked workers when
    there are many (see the module)."""
    paths = list(paths)
    workers = _workers(len(paths))
    if workers == 1:
        with headers_parsed():
            return [_listed(p, key_file) for p in paths]
    from medkeras.data.keys import secret

    try:
        secret(key_file)  # read (or created) here, once: the workers inherit it
    except Exception:  # noqa: BLE001 - the serial listing raises it where it always has
        return [_listed(p, key_file) for p in paths]
    import multiprocessing

    first = _listed(paths[0], key_file)  # pydicom's first-use work done here, once, not in every worker
    rest = paths[1:]
    chunks = [rest[i::workers * 4] for i in range(workers * 4)]  # interleaved: each worker gets every series
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(partial(_share, key_file=key_file), chunks))
    except (OSError, BrokenProcessPool):  # no processes to be had here (limits, a sandbox): one by one
        return [first] + [_listed(p, key_file) for p in rest]
    listed = [first] + [None] * len(rest)
    for k, part in enumerate(parts):
        for j, (items, entry) in enumerate(part):
            i = k + j * len(chunks)
            if isinstance(items, str):  # _RAISED
                items = _listed(rest[i], key_file)  # raises here, as the serial listing would
            elif entry is not None:
                dicom_layout.remember(rest[i], entry)
            listed[i + 1] = items
    return listed
