"""A separate process acting on a store root, for tests of what crosses processes.

    python store_actor.py hold ROOT NAMESPACE REF          write a little, hold the lock, wait
    python store_actor.py race ROOT NAMESPACE REF GO SIZE  wait for file GO, ingest SIZE bytes
    python store_actor.py race-daemon ADDRESS NAMESPACE REF GO SIZE   the same through a daemon,
                                                           with write_blob's waiting and retries
    python store_actor.py crash ROOT NAMESPACE REF POINT   commit, dying (SIGKILL) at POINT
    python store_actor.py crash-put ROOT NAMESPACE REF POINT   the same through put()
    python store_actor.py crash-delete ROOT NAMESPACE DIGEST   delete, dying once bytes moved aside
    python store_actor.py slow-delete ROOT NAMESPACE DIGEST    delete, pausing there for a second
    python store_actor.py churn ROOT NAMESPACE                 put small blobs until killed

Each prints one line saying how it ended. The bytes written are a function of
the size only, so every racer writes the same content.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from contentd import errdefs
from contentd.content import _files, _fs, _rules, digest_of, open_store

CRASH_POINTS = ("after-fsync", "after-mark", "after-rename", "after-metadata")


def spawn(*arguments: str) -> subprocess.Popen[str]:
    """Run this script with `arguments` in a process of its own, its output piped."""
    return subprocess.Popen(
        [sys.executable, __file__, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def content(size: int) -> bytes:
    """The bytes every actor writes for `size`."""
    pattern = b"contentd crosses processes. "
    return (pattern * (size // len(pattern) + 1))[:size]


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _after(function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        function(*args, **kwargs)
        _die()

    return wrapper


def _before(function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _die()
        return function(*args, **kwargs)

    return wrapper


def hold(root: str, namespace: str, ref: str) -> None:
    store = open_store(root, namespace)
    writer = store.writer(ref)
    writer.write(content(1000))
    print("holding", flush=True)
    time.sleep(3600)


def race(root: str, namespace: str, ref: str, go: str, size: str) -> None:
    data = content(int(size))
    store = open_store(root, namespace)
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        with store.writer(ref, total=len(data), expected=digest_of(data)) as writer:
            writer.write(data[writer.status().offset :])
            writer.commit(len(data), digest_of(data))
    except errdefs.Unavailable:
        print("unavailable")
    except errdefs.AlreadyExists:
        print("exists")
    else:
        print("committed")


def race_daemon(address: str, namespace: str, ref: str, go: str, size: str) -> None:
    from contentd.client import RemoteStore, write_blob  # noqa: PLC0415 (loads gRPC)

    data = content(int(size))
    with RemoteStore(address, namespace) as store:
        store.wait_ready(timeout=10)
        while not os.path.exists(go):
            time.sleep(0.001)
        digest = write_blob(store, ref, data, len(data), digest_of(data), timeout=120)
    print(f"stored {digest}")


def _arm(point: str) -> None:
    if point == "after-fsync":
        _files.os.fdatasync = _after(os.fdatasync)  # type: ignore[attr-defined]
    elif point == "after-mark":
        _files.os.rename = _before(os.rename)  # type: ignore[attr-defined]
    elif point == "after-rename":
        # The directory fsync that makes the rename durable runs with the commit's batch.
        _files.fsync_directory = _after(_fs.fsync_directory)  # type: ignore[attr-defined]
    elif point == "after-metadata":
        _rules.BackedStore._end_ingest = _before(  # type: ignore[method-assign]
            _rules.BackedStore._end_ingest
        )
    else:
        raise SystemExit(f"unknown crash point {point}")


def crash(root: str, namespace: str, ref: str, point: str) -> None:
    data = content(300_000)
    store = open_store(root, namespace)
    writer = store.writer(ref, total=len(data), expected=digest_of(data))
    writer.write(data)
    _arm(point)
    writer.commit(len(data), digest_of(data))
    print("survived")


def crash_put(root: str, namespace: str, ref: str, point: str) -> None:
    data = content(300_000)
    store = open_store(root, namespace)
    _arm(point)
    store.put(ref, data, size=len(data), expected=digest_of(data), labels={"via": "put"})
    print("survived")


def crash_delete(root: str, namespace: str, digest: str) -> None:
    store = open_store(root, namespace)
    _files.os.rename = _after(os.rename)  # type: ignore[attr-defined]
    store.delete(digest)
    print("survived")


def slow_delete(root: str, namespace: str, digest: str) -> None:
    store = open_store(root, namespace)
    rename = os.rename

    def moved(source: Any, target: Any) -> None:
        rename(source, target)
        print("moved", flush=True)
        time.sleep(1)

    _files.os.rename = moved  # type: ignore[attr-defined]
    store.delete(digest)
    print("deleted", flush=True)


def churn(root: str, namespace: str) -> None:
    store = open_store(root, namespace)
    for count in itertools.count():
        store.put(f"churn-{os.getpid()}-{count % 64}", f"{os.getpid()} {count}".encode())


if __name__ == "__main__":
    action, *arguments = sys.argv[1:]
    {
        "hold": hold,
        "race": race,
        "race-daemon": race_daemon,
        "crash": crash,
        "crash-put": crash_put,
        "crash-delete": crash_delete,
        "slow-delete": slow_delete,
        "churn": churn,
    }[action](*arguments)
