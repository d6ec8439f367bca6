"""The servers the benchmark measures, started one at a time on roots that outlive each start.

The two compared come from the test support helpers: `contentd serve` as a subprocess
(`support.daemon.start_daemon`) and a private containerd with only its content plugins
(`support.containerd.start_containerd`), both with their garbage collectors on, as they
run by default, so workloads label what they keep with `containerd.io/gc.root`. A third,
`null_server.py`, stores nothing: the small-blob workload measures it as a reference,
outside the comparison. A server's root lives in a directory of the benchmark's own;
stopping and starting it again keeps its content, so each workload runs on a fresh
process of a store that holds what earlier workloads wrote.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
# tests/ is no package: its helpers import as `support.*` with the folder on the path.
sys.path.insert(0, str(REPO / "tests"))

from support.containerd import (  # noqa: E402
    ContainerdProcess,
    log_tail,
    short_socket_dir,
    start_containerd,
    terminate,
    wait_for_serving,
)
from support.daemon import DaemonProcess, start_daemon  # noqa: E402

START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 60.0
CONTENTD: Final = "contentd"
CONTAINERD: Final = "containerd"
NULL_SERVER: Final = "null-server"
#: Two contentd daemons serving one cluster store, clients dealt across them.
CONTENTD_PAIR: Final = "contentd-x2"


@dataclass
class Running:
    """A started server: where to reach it and which process to measure; `peers`, further
    daemons serving the same store (clients are dealt across all, all are measured)."""

    name: str
    address: str
    pid: int
    peers: tuple[tuple[str, int], ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.address, *(address for address, _ in self.peers))

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.pid, *(pid for _, pid in self.peers))


class Server(ABC):
    """One of the servers under test, bound to a directory that holds its store."""

    name: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def start(self) -> Running:
        """Start the server on its store and wait until it serves."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server if it runs; safe to call more than once."""

    @abstractmethod
    def log(self) -> str:
        """The last lines the server logged, for error reports."""


class Contentd(Server):
    """`contentd serve` with its root under the work directory, or on the store that
    `store_flags` name (`--blobs ... --metadata ...`: a cluster store)."""

    name = CONTENTD

    def __init__(self, workdir: Path, store_flags: Sequence[str] = ()) -> None:
        super().__init__(workdir)
        self.store_flags = tuple(store_flags)
        self._daemon: DaemonProcess | None = None
        self._last_log = ""

    def start(self) -> Running:
        self._daemon = start_daemon(
            self.workdir / "root", *self.store_flags, timeout=START_TIMEOUT, collect=True
        )
        return Running(self.name, self._daemon.address, self._daemon.process.pid)

    def stop(self) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is None:
            return
        # Past the timeout, stop() kills it and raises with its threads' stacks.
        status = daemon.stop(timeout=STOP_TIMEOUT)
        if status != 0:
            print(f"warning: contentd exited with status {status}", file=sys.stderr)
        self._last_log = daemon.logged()

    def log(self) -> str:
        daemon = self._daemon
        text = daemon.logged() if daemon is not None else self._last_log
        return "\n".join(text.splitlines()[-40:]) or "(nothing logged)"


class ContentdPair(Server):
    """Two `contentd serve` daemons on one cluster store (`store_flags`): what scale-out buys."""

    name = CONTENTD_PAIR

    def __init__(self, workdir: Path, store_flags: Sequence[str]) -> None:
        super().__init__(workdir)
        self._daemons = [Contentd(workdir / f"daemon-{n}", store_flags) for n in (1, 2)]

    def start(self) -> Running:
        try:
            first, second = (daemon.start() for daemon in self._daemons)
        except BaseException:
            self.stop()
            raise
        return Running(self.name, first.address, first.pid, ((second.address, second.pid),))

    def stop(self) -> None:
        for daemon in self._daemons:
            daemon.stop()

    def log(self) -> str:
        return "\n".join(
            f"--- daemon {n} ---\n{daemon.log()}" for n, daemon in enumerate(self._daemons, 1)
        )


class Containerd(Server):
    """A private containerd (content plugins only, collector on) under the work directory."""

    name = CONTAINERD

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._process: ContainerdProcess | None = None

    @staticmethod
    def available() -> bool:
        """Whether a containerd binary is on PATH."""
        return shutil.which("containerd") is not None

    def start(self) -> Running:
        self._process = start_containerd(self.workdir, timeout=START_TIMEOUT, collect=True)
        return Running(self.name, self._process.address, self._process.process.pid)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop(timeout=STOP_TIMEOUT)

    def log(self) -> str:
        return log_tail(self.workdir / "containerd.log")


class NullServer(Server):
    """`null_server.py`: a Python gRPC server answering Write and Info with nothing stored."""

    name = NULL_SERVER

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.workdir / "null-server.log"
        self._owned_socket_dir: Path | None = None

    def start(self) -> Running:
        socket_dir, owned = short_socket_dir(self.workdir, "null.sock")
        self._owned_socket_dir = socket_dir if owned else None
        address = f"unix://{socket_dir / 'null.sock'}"
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, str(REPO / "benchmarks" / "null_server.py"), address],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_serving(
                address,
                timeout=START_TIMEOUT,
                exited=self._process.poll,
                describe=lambda: f"null server log:\n{self.log()}",
            )
        except BaseException:
            self.stop()
            raise
        return Running(self.name, address, self._process.pid)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process, STOP_TIMEOUT)
        if self._owned_socket_dir is not None:
            shutil.rmtree(self._owned_socket_dir, ignore_errors=True)
            self._owned_socket_dir = None

    def log(self) -> str:
        return log_tail(self._log)
