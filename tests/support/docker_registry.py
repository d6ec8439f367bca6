"""docker-registry 2.8 (Debian package `docker-registry`), the registry the HTTP face is held
to: started on a free port of 127.0.0.1 with filesystem storage under a work directory,
deletes enabled, warnings only and no access log. It is ready once `GET /v2/` answers 200.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from http.client import HTTPConnection
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from support.containerd import log_tail, terminate

DOCKER_REGISTRY: Final = "docker-registry"


class RegistryStartError(RuntimeError):
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
            raise RegistryStartError(f"{url}: the server exited with status {process.returncode}")
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
    raise RegistryStartError(f"{url}/v2/ did not answer 200 within {timeout:g} s (last: {last})")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def registry_config(
    root: Path, port: int, storage: Mapping[str, Mapping[str, object]] | None = None
) -> str:
    """docker-registry's config.yml: filesystem storage under `root`, or `storage` (a driver's
    name and its parameters). Values are JSON-quoted, which YAML reads as they are."""
    drivers = storage or {"filesystem": {"rootdirectory": str(root)}}
    storage_lines = []
    for driver, parameters in drivers.items():
        storage_lines.append(f"  {driver}:")
        storage_lines += [f"    {key}: {json.dumps(value)}" for key, value in parameters.items()]
    return "\n".join(
        [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            *storage_lines,
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {json.dumps(f'127.0.0.1:{port}')}",
            # Upload state is signed with it; a fixed one spares the warning about a random one.
            f"  secret: {json.dumps(secrets.token_hex(16))}",
            "",
        ]
    )


class DockerRegistryProcess:
    """A running docker-registry; `url` is its base URL. Stop it with `stop()`."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL (and RuntimeError) if it has not exited within `timeout`
        seconds; returns its exit status. Safe to call more than once."""
        if not terminate(self.process, timeout):
            raise RuntimeError(f"docker-registry did not stop within {timeout:g} s")
        return self.process.returncode

    def log(self) -> str:
        return log_tail(self.log_path)


def registry_log(workdir: Path) -> Path:
    """Where a docker-registry started on `workdir` logs, across its starts."""
    return workdir / "registry.log"


def available() -> bool:
    """Whether a docker-registry binary is on PATH."""
    return shutil.which(DOCKER_REGISTRY) is not None


def start_docker_registry(
    workdir: Path,
    *,
    timeout: float = 60,
    storage: Mapping[str, Mapping[str, object]] | None = None,
    environment: Mapping[str, str] | None = None,
) -> DockerRegistryProcess:
    """Start docker-registry with its config, storage and log (`registry.log`) under
    `workdir` (or the `storage` driver given, as `registry_config` takes it; `environment`
    replaces the inherited one), and wait until it serves. Its content outlives it: a new
    start on the same `workdir` serves it again."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(registry_config(workdir / "root", port, storage))
    log_path = registry_log(workdir)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [DOCKER_REGISTRY, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if environment is None else dict(environment),
        )
    running = DockerRegistryProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_serving(running.url, process, timeout)
    except RegistryStartError as error:
        running.stop()
        raise RegistryStartError(
            f"docker-registry did not start: {error}\n{running.log()}"
        ) from None
    return running
