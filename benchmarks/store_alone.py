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

from contentd.client import write_blob
from contentd.content import LocalStore

NAMESPACE = "bench-store-alone"


def loop(
    store: LocalStore,
    prefix: str,
    size: int,
    labels: Mapping[str, str],
    start: threading.Barrier,
    seconds: float,
    counts: list[int | BaseException],
    index: int,
) -> None:
    try:
        counts[index] = _stored(store, prefix, size, labels, start, seconds)
    except BaseException as failure:  # reported by main, which fails the run
        counts[index] = failure


def _stored(
    store: LocalStore,
    prefix: str,
    size: int,
    labels: Mapping[str, str],
    start: threading.Barrier,
    seconds: float,
) -> int:
    start.wait()
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
    counts: list[int | BaseException] = [0] * threads
    start = threading.Barrier(threads + 1)
    with LocalStore(root, NAMESPACE) as store:
        workers = [
            threading.Thread(
                target=loop,
                args=(store, f"alone-{i}", size, labels, start, seconds, counts, i),
            )
            for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.monotonic()
        start.wait()
        for worker in workers:
            worker.join()
        elapsed = time.monotonic() - began
        after = resource.getrusage(resource.RUSAGE_SELF)
    failures = [count for count in counts if isinstance(count, BaseException)]
    if failures:
        print(f"store_alone.py: a thread failed: {failures[0]!r}", file=sys.stderr)
        return 1
    result = {
        "blobs": sum(count for count in counts if isinstance(count, int)),
        "seconds": elapsed,
        "user_seconds": after.ru_utime - before.ru_utime,
        "system_seconds": after.ru_stime - before.ru_stime,
        "max_rss": after.ru_maxrss * 1024,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
