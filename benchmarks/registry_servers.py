"""The two registries under test, started one at a time on roots that outlive each start.

- contentd's HTTP face: `contentd serve --http 127.0.0.1:0` through the test suite's
  `support.daemon.start_daemon` (the gRPC side on a private unix socket, as always).
- docker-registry 2.8 (Debian package `docker-registry`) through the test suite's
  `support.docker_registry.start_docker_registry`: filesystem storage under the work
  directory, deletes enabled, no blob descriptor cache, warnings only and no access log,
  on a free port of 127.0.0.1.

With `--backend s3pg` both keep their blobs in one SeaweedFS (`engines`): contentd on a
cluster store (`--blobs s3://... --metadata postgresql://...`), docker-registry with its S3
driver on a bucket of its own (`docker_registry_s3`).

Both are ready once `GET /v2/` answers 200. `Running.address` is the registry's base URL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from engines import Engines
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
from support.seaweedfs import REGION


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
            self.workdir / "root",
            *self.store_flags,
            "--http",
            "127.0.0.1:0",
            timeout=START_TIMEOUT,
        )
        url = self._daemon.http_url
        wait_until_serving(url, self._daemon.process, START_TIMEOUT)
        return Running(self.name, url, self._daemon.process.pid)


def docker_registry_s3(engines: Engines, bucket: str) -> dict[str, dict[str, object]]:
    """docker-registry's storage on `bucket` of the engines' SeaweedFS: its s3 driver (2.8
    forces path-style addressing for a `regionendpoint`; plain HTTP, signature v4), and
    no redirects."""
    return {
        "s3": {
            "accesskey": engines.seaweedfs.access_key,
            "secretkey": engines.seaweedfs.secret_key,
            "region": REGION,
            "regionendpoint": engines.seaweedfs.endpoint,
            "bucket": engines.create_bucket(bucket),
            "secure": False,
            "v4auth": True,
        },
        # Serve blobs itself, as contentd does, rather than redirect a pull to SeaweedFS.
        "redirect": {"disable": True},
    }


def docker_registry_environment() -> dict[str, str]:
    """The harness's environment without AWS_CA_BUNDLE: docker-registry's S3 driver panics
    when it is set (this machine sets it for everything)."""
    return {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}


class DockerRegistry(Server):
    """docker-registry 2.8 serving a filesystem store under the work directory, or the
    `storage` given (as `support.docker_registry.registry_config` takes it)."""

    name = DOCKER_REGISTRY

    def __init__(
        self, workdir: Path, storage: Mapping[str, Mapping[str, object]] | None = None
    ) -> None:
        super().__init__(workdir)
        self.storage = storage
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
        self._running = start_docker_registry(
            self.workdir,
            timeout=START_TIMEOUT,
            storage=self.storage,
            environment=None if self.storage is None else docker_registry_environment(),
        )
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
