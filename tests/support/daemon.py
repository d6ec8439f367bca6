"""Run `contentd serve` as a real subprocess on a temporary unix socket."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contentd.client import RemoteStore

# Addresses end at a space, or at the quote closing a JSON log line's message.
_READY = re.compile(r"serving on ([^\s\"]+)")
_HTTP_READY = re.compile(r"serving HTTP on ([^\s\"]+)")
_METRICS_READY = re.compile(r"serving metrics on ([^\s\"]+)")


@dataclass
class DaemonProcess:
    """A running contentd: its address, root, process and everything it logged."""

    address: str
    root: Path
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    #: A directory made for the socket, removed once the daemon has exited.
    socket_dir: Path | None = None
    #: The thread reading the daemon's stderr into `log`; it closes the pipe at EOF.
    reader: threading.Thread | None = None

    @property
    def socket(self) -> str:
        return self.address.removeprefix("unix://")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the daemon and wait for it to exit; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Ask the stuck daemon for its threads' stacks (faulthandler, on SIGUSR1).
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(2)
            self.kill()
            raise RuntimeError(
                f"contentd did not exit within {timeout:g} s of signal {sig}; it logged:\n"
                f"{self.logged()[-30000:]}"
            ) from None
        finally:
            self._exited()

    def kill(self) -> None:
        """SIGKILL: the daemon dies without cleaning up."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._exited()

    def _exited(self) -> None:
        # The reader has the last of the log, and closes the pipe, soon after the exit;
        # a pipe left to the garbage collector warns in whichever test runs then.
        if self.reader is not None and self.process.poll() is not None:
            self.reader.join(timeout=10)
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self.socket_dir is not None and self.process.poll() is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def logged(self) -> str:
        return "".join(self.log)

    @property
    def http_url(self) -> str:
        """The registry's base URL (``http://127.0.0.1:PORT``), when started with ``--http``."""
        found = _HTTP_READY.search(self.logged())
        if found is None:
            raise RuntimeError(f"contentd serves no HTTP:\n{self.logged()}")
        return found[1]

    @property
    def metrics_url(self) -> str:
        """Where Prometheus scrapes the daemon (``http://127.0.0.1:PORT/metrics``), with
        ``--metrics``."""
        found = _METRICS_READY.search(self.logged())
        if found is None:
            raise RuntimeError(f"contentd serves no metrics:\n{self.logged()}")
        return found[1]


def contentd_command() -> list[str]:
    """How to run the CLI from the test environment."""
    executable = shutil.which("contentd", path=os.path.dirname(sys.executable))
    if executable:
        return [executable]
    return [sys.executable, "-c", "from contentd.client.cli import main; main()"]


def start_daemon(
    root: Path,
    *extra: str,
    socket_dir: Path | None = None,
    timeout: float = 20,
    collect: bool = False,
) -> DaemonProcess:
    """Start `contentd serve --root ROOT` on a fresh unix socket and wait until it is ready.

    Without `collect` its garbage collection scheduler is off (sync deletes still
    collect): tests share daemons, and content one test stores without a lease or a
    root label would otherwise go when another test deletes something. The tests of
    collection turn it on.
    """
    # Unix socket paths are limited to about 100 bytes: keep them short.
    owned = socket_dir is None
    socket_dir = socket_dir or Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    address = f"unix://{socket_dir / 'contentd.sock'}"
    scheduler = () if collect else ("--no-gc-scheduler",)
    command = [*contentd_command(), "serve", "--root", str(root), "--address", address]
    return launch_daemon(
        [*command, *scheduler, *extra],
        address,
        root,
        socket_dir=socket_dir if owned else None,
        timeout=timeout,
    )


def launch_daemon(
    command: list[str],
    address: str,
    root: Path,
    *,
    socket_dir: Path | None = None,
    timeout: float = 20,
    **popen: Any,
) -> DaemonProcess:
    """Run `command` (a `contentd serve`, with `popen`'s extra Popen arguments) and wait
    until it logs that it serves; `socket_dir` is removed once it has exited."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen
    )
    daemon = DaemonProcess(address, root, process, socket_dir=socket_dir)
    ready = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        with process.stderr:
            for line in process.stderr:
                daemon.log.append(line)
                if _READY.search(line):
                    ready.set()

    daemon.reader = threading.Thread(target=pump, daemon=True)
    daemon.reader.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if process.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            raise RuntimeError(f"contentd did not start:\n{daemon.logged()}")
    return daemon


@contextmanager
def running_daemon(root: Path, *extra: str, collect: bool = False) -> Iterator[DaemonProcess]:
    """A daemon for the duration of a with-block; stopped with SIGTERM afterwards. `collect`
    turns its garbage collection scheduler on, as `start_daemon`'s does."""
    daemon = start_daemon(root, *extra, collect=collect)
    try:
        yield daemon
    finally:
        daemon.stop()


@contextmanager
def running_pair(place: Path, *extra: str) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    """Two daemons with the same options (as two serving one cluster store), their roots
    under `place`; both stopped with SIGTERM afterwards."""
    with (
        running_daemon(place / "a", *extra) as first,
        running_daemon(place / "b", *extra) as second,
    ):
        yield first, second


def remote(daemon: DaemonProcess, namespace: str = "default", timeout: float = 60) -> RemoteStore:
    """The Python client on `daemon`, once it answers."""
    store = RemoteStore(daemon.address, namespace, timeout=timeout)
    store.wait_ready(timeout=10)
    return store
