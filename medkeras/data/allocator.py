"""glibc's malloc, told to keep a training batch's buffers between steps.

A batch of 32 images of 224 x 224 x 3 float32 is 19 MiB. With glibc's defaults (a sliding mmap threshold) and the
128 KiB trim threshold TensorFlow sets when a `from_generator` dataset first runs (the graph DICOM decode did), freed
batch buffers went back to the kernel and came back as fresh pages, step after step: later epochs from memory ran
in one of two states, ~730 or ~1,400 images/s, from epoch to epoch in the same process (`bench.pipeline`'s cached
mode; with the grey batch not repeated to 3 channels, ~1,500 every epoch). Keeping buffers up to 64 MiB on the
heap and trimming only past 512 MiB free made every epoch the fast one, for ~5% more peak memory (1,003 vs
949 MiB). Applied where a training pipeline from memory is built (after the decode), so it outlasts TensorFlow's
own setting (not for a store streamed: there the heap kept more than it reused, +10-20% peak at 10x the data);
`MEDKERAS_MALLOC=default` leaves the allocator as it is. Elsewhere than glibc, nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 64 * 2**20  # blocks above this are mmap'd (glibc's dynamic threshold stops at 32 MiB)
TRIM_THRESHOLD = 512 * 2**20  # free heap top kept up to this, not returned to the kernel at every free


@lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return None
    return libc


def keep_batch_buffers() -> bool:
    """Set glibc's thresholds for batch-sized buffers (see the module); True where they were set."""
    if os.environ.get("MEDKERAS_MALLOC", "").lower() == "default":
        return False
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                      TRIM_THRESHOLD))
