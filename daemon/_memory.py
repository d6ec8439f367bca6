"""Keep glibc's malloc from handing large buffers back to the kernel after every message.

Each 1 MiB message the daemon reads or writes passes through several 1 MiB
buffers (the bytes read from disk, protobuf's copy, gRPC's). glibc decides
at run time, from the history of allocations, whether such buffers come from
its heap or straight from mmap, and trims its heap back whenever enough is
free at the top; the decision can flip with any unrelated change. When it
flips, every message costs fresh pages: page faults and zeroing. Measured on
a 128 MiB Read stream: 440-470 MB/s unpinned against 950-1080 MB/s pinned,
for 4 MB more peak RSS (67 against 71 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Allocations up to this size come from the heap, so message buffers are reused.
MMAP_THRESHOLD = 32 << 20
#: The heap is trimmed only when this much is free at its top.
TRIM_THRESHOLD = 64 << 20

_log = logging.getLogger("contentd.daemon")


def pin_allocator_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    pinned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not pinned:
        _log.debug("could not pin malloc thresholds; large messages may cost page faults")
    return pinned
