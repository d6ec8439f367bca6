"""skopeo (containers/image) as a user of a registry runs it, with a home of its own.

`Skopeo(home)` runs `skopeo --insecure-policy ...` with HOME, XDG directories, the auth file
and registries.conf under `home`, so no credentials, registries or policy of the host's
apply; `run` returns the finished process or raises SkopeoError with what skopeo said.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SKOPEO_TIMEOUT = 60.0


class SkopeoError(RuntimeError):
    """skopeo exited non-zero; `stderr` holds what it said."""

    def __init__(self, command: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(command)} exited with status {returncode}:\n{stderr}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Skopeo:
    """skopeo with a home of its own: no credentials, registries or policy of the host's."""

    home: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.home / "run"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            # Where an unprivileged skopeo keeps its blob info cache, which the
            # cross-repository mount test needs kept from one skopeo process to the next.
            "XDG_DATA_HOME": str(self.home / "data"),
            "REGISTRY_AUTH_FILE": str(self.home / "auth.json"),
            "CONTAINERS_REGISTRIES_CONF": str(self.home / "registries.conf"),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run `skopeo <args>`; the finished process, or SkopeoError when it fails."""
        command = ["skopeo", "--insecure-policy", *args]
        result = subprocess.run(
            command, env=self.env(), capture_output=True, check=False, timeout=SKOPEO_TIMEOUT
        )
        if result.returncode != 0:
            raise SkopeoError(command, result.returncode, result.stderr.decode(errors="replace"))
        return result

    def fails(self, *args: str) -> SkopeoError:
        """Run `skopeo <args>`, which must fail; the error it failed with."""
        with pytest.raises(SkopeoError) as failed:
            self.run(*args)
        return failed.value

    def output(self, *args: str) -> bytes:
        return self.run(*args).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.output(*args))

    def served_media_type(self, reference: str) -> str:
        """The Content-Type the registry served the manifest at `reference` with."""
        log = self.run("--debug", "inspect", "--tls-verify=false", "--raw", reference).stderr
        served = re.search(r'Content-Type from manifest GET is \\"([^"\\]+)\\"', log.decode())
        assert served is not None, f"skopeo logged no manifest Content-Type:\n{log.decode()}"
        return served.group(1)

    def push(self, source: str, destination: str, *flags: str) -> None:
        """Copy `source` to the registry `destination`, digests unchanged unless `flags`
        convert the manifest."""
        preserve = () if "--format" in flags else ("--preserve-digests",)
        self.run(
            "copy", "--quiet", "--dest-tls-verify=false", *preserve, *flags, source, destination
        )

    def pull(self, source: str, destination: str, *flags: str) -> None:
        """Copy the registry `source` to `destination` with digests unchanged."""
        self.run(
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--preserve-digests",
            *flags,
            source,
            destination,
        )
