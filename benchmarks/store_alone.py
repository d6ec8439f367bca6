"""contentd's store with no gRPC in front of it: the small-blob loop in threads of one process.

    python benchmarks/store_alone.py ROOT THREADS SECONDS SIZE LABELS_JSON

Each thread runs what a small-blob client does, `write_blob` of SIZE random bytes then
`info`, on one `LocalStore` over ROOT, for SECONDS; the threads are released together.
The daemon runs the store the same way (calls on threads of one process, group commits
shared between them), so this is the rate and the CPU the store costs on this machine
before any call reaches it over the wire. It prints one JSON object on stdout: blobs,
seconds, the process's CPU seconds (user, system) over the measured window, and its
peak RSS in bytes (`max_rss`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Mapping
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

from contentd.content import LocalStore, write_blob

NAMESPACE = "bench-store-alone"
#: How long the threads may take to be ready, and the harness to start them.
READY_TIMEOUT = 60.0


def stored(
    store: LocalStore,
    prefix: str,
    size: int,
    labels: Mapping[str, str],
    start: threading.Barrier,
    seconds: float,
) -> int:
    """One thread's loop: how many blobs it stored in `seconds` from the start."""
    start.wait(READY_TIMEOUT)
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        data = os.urandom(size)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        write_blob(store, f"{prefix}-{count}", data, size, digest, labels)
        if store.info(digest).size != size:
            raise RuntimeError(f"info of {digest} reports the wrong size")
        count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print("usage: store_alone.py ROOT THREADS SECONDS SIZE LABELS_JSON", file=sys.stderr)
        return 2
    root, threads, seconds, size = argv[0], int(argv[1]), float(argv[2]), int(argv[3])
    labels = json.loads(argv[4])
    start = threading.Barrier(threads + 1)
    with LocalStore(root, NAMESPACE) as store, ThreadPoolExecutor(threads) as pool:
        loops = [
            pool.submit(stored, store, f"alone-{i}", size, labels, start, seconds)
            for i in range(threads)
        ]
        before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.monotonic()
        start.wait(READY_TIMEOUT)
        futures.wait(loops)
        elapsed = time.monotonic() - began
        after = resource.getrusage(resource.RUSAGE_SELF)
    blobs = sum(loop.result() for loop in loops)  # raises what failed a thread
    result = {
        "blobs": blobs,
        "seconds": elapsed,
        "user_seconds": after.ru_utime - before.ru_utime,
        "system_seconds": after.ru_stime - before.ru_stime,
        "max_rss": after.ru_maxrss * 1024,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
