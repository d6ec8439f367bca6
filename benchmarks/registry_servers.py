"""The two registries under test, started one at a time on roots that outlive each start.

- contentd's HTTP face: `contentd serve --http 127.0.0.1:0` through the test suite's
  `support.daemon.start_daemon` (the gRPC side on a private unix socket, as always).
- docker-registry 2.8 (Debian package `docker-registry`) through the test suite's
  `support.docker_registry.start_docker_registry`: filesystem storage under the work
  directory, deletes enabled, no blob descriptor cache, warnings only and no access log,
  on a free port of 127.0.0.1.

Both are ready once `GET /v2/` answers 200. `Running.address` is the registry's base URL.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from servers import START_TIMEOUT, STOP_TIMEOUT, Contentd, Running, Server
from support import docker_registry
from support.containerd import log_tail
from support.daemon import contentd_command, start_daemon
from support.docker_registry import (
    DOCKER_REGISTRY,
    DockerRegistryProcess,
    start_docker_registry,
    wait_until_serving,
)


class ContentdRegistry(Contentd):
    """`contentd serve --http 127.0.0.1:0`, with its root under the work directory."""

    @staticmethod
    def available() -> bool:
        """Whether this contentd has the HTTP face (`serve --http`)."""
        try:
            done = subprocess.run(
                [*contentd_command(), "serve", "--help"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return re.search(r"^\s*--http\b", done.stdout, re.MULTILINE) is not None

    def start(self) -> Running:
        self._daemon = start_daemon(
            self.workdir / "root", "--http", "127.0.0.1:0", timeout=START_TIMEOUT
        )
        url = self._daemon.http_url
        wait_until_serving(url, self._daemon.process, START_TIMEOUT)
        return Running(self.name, url, self._daemon.process.pid)


class DockerRegistry(Server):
    """docker-registry 2.8 serving a filesystem store under the work directory."""

    name = DOCKER_REGISTRY

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._running: DockerRegistryProcess | None = None

    @staticmethod
    def available() -> bool:
        """Whether a docker-registry binary is on PATH."""
        return docker_registry.available()

    @staticmethod
    def version() -> str:
        """What `docker-registry --version` says, or that it is missing."""
        if not DockerRegistry.available():
            return "not installed"
        try:
            done = subprocess.run(
                [DOCKER_REGISTRY, "--version"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        return done.stdout.strip() or "unknown"

    def start(self) -> Running:
        self._running = start_docker_registry(self.workdir, timeout=START_TIMEOUT)
        return Running(self.name, self._running.url, self._running.process.pid)

    def stop(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        status = running.stop(timeout=STOP_TIMEOUT)
        # Without a drain timeout configured it simply dies of the signal.
        if status not in (0, -signal.SIGTERM):
            print(f"warning: docker-registry exited with status {status}", file=sys.stderr)

    def log(self) -> str:
        return log_tail(docker_registry.registry_log(self.workdir))
