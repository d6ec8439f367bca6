"""A private PostgreSQL cluster for the tests: Debian's server binaries, a temporary directory,
127.0.0.1 on a free port, trust authentication, no fsync.

PostgreSQL refuses to run as root; when the tests do, the cluster runs as
the ``postgres`` user, in a directory that user owns. Each store the tests
open gets a schema of its own in the one database, which costs a few
statements rather than a cluster.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from support.backends import DSN_VARIABLE

__all__ = ["DSN_VARIABLE", "PostgresCluster", "binaries", "running_postgres"]
_USER = "postgres"
# Tests only: durability is the database's business, not what these tests test.
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
}


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """A running cluster: its `dsn`, and stop, start and restart for fault tests.

    `settings` override the tests' server settings (the benchmarks turn fsync back on).
    """

    def __init__(
        self, bin_directory: Path, directory: Path, settings: Mapping[str, str] | None = None
    ) -> None:
        self._bin = bin_directory
        self.directory = directory
        self.data = directory / "data"
        self.port = _free_port()
        self._as_user = os.geteuid() == 0
        self.settings = {**_SETTINGS, **(settings or {})}

    @property
    def dsn(self) -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", _USER, "--"] if self._as_user else []
        subprocess.run(
            [*prefix, *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def initialise(self) -> None:
        self._run(
            str(self._bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            _USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )

    def start(self) -> None:
        options = " ".join(
            [f"-p {self.port}", f"-k {self.directory}"]
            + [f"-c {name}={value}" for name, value in self.settings.items()]
        )
        self._run(
            str(self._bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``immediate`` stops it as a crash would (recovery on start)."""
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresCluster]:
    """A fresh cluster for as long as the block runs; skips the test when there is none to run."""
    bin_directory = binaries()
    if bin_directory is None:
        pytest.skip("PostgreSQL's server binaries are not installed (apt install postgresql)")
    directory = Path(tempfile.mkdtemp(prefix="contentd-pg-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam(_USER)
            os.chown(directory, user.pw_uid, user.pw_gid)
        cluster = PostgresCluster(bin_directory, directory)
        cluster.initialise()
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(subprocess.SubprocessError):
                cluster.stop("immediate")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
