"""The two registries under test, started one at a time on roots that outlive each start.

- contentd's HTTP face: `contentd serve --http 127.0.0.1:0` through the test suite's
  `support.daemon.start_daemon` (the gRPC side on a private unix socket, as always).
- docker-registry 2.8 (Debian package `docker-registry`) with a config written here:
  filesystem storage under the work directory, deletes enabled, no blob descriptor cache,
  warnings only and no access log, on a free port of 127.0.0.1.

Both are ready once `GET /v2/` answers 200. `Running.address` is the registry's base URL.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from servers import START_TIMEOUT, STOP_TIMEOUT, Contentd, Running, Server
from support.containerd import log_tail
from support.daemon import contentd_command, start_daemon

DOCKER_REGISTRY: Final = "docker-registry"


class ServerError(RuntimeError):
    """A registry did not start or did not answer as one."""


def wait_until_serving(
    url: str, process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float
) -> None:
    """Poll `GET url/v2/` until it answers 200; fail if `process` exits or time runs out."""
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{url}: the server exited with status {process.returncode}")
        connection = HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=2)
        try:
            connection.request("GET", "/v2/")
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return
            last = f"{response.status} {response.reason}"
        except OSError as error:
            last = str(error)
        finally:
            connection.close()
        time.sleep(0.05)
    raise ServerError(f"{url}/v2/ did not answer 200 within {timeout:g} s (last: {last})")


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


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def registry_config(root: Path, port: int) -> str:
    """docker-registry's config.yml. Strings are JSON-quoted, which YAML reads as they are."""
    return "\n".join(
        [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {json.dumps(str(root))}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {json.dumps(f'127.0.0.1:{port}')}",
            # Upload state is signed with it; a fixed one spares the warning about a random one.
            f"  secret: {json.dumps(secrets.token_hex(16))}",
            "",
        ]
    )


class DockerRegistry(Server):
    """docker-registry 2.8 serving a filesystem store under the work directory."""

    name = DOCKER_REGISTRY

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = workdir / "registry.log"

    @staticmethod
    def available() -> bool:
        """Whether a docker-registry binary is on PATH."""
        return shutil.which(DOCKER_REGISTRY) is not None

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
        port = free_port()
        config = self.workdir / "config.yml"
        config.write_text(registry_config(self.workdir / "root", port))
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [DOCKER_REGISTRY, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(url, self._process, START_TIMEOUT)
        except ServerError as error:
            self.stop()
            raise ServerError(f"docker-registry did not start: {error}\n{self.log()}") from None
        return Running(self.name, url, self._process.pid)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(f"docker-registry did not stop within {STOP_TIMEOUT:g} s") from None
        # Without a drain timeout configured it simply dies of the signal.
        if status not in (0, -signal.SIGTERM):
            print(f"warning: docker-registry exited with status {status}", file=sys.stderr)

    def log(self) -> str:
        return log_tail(self._log_path)
