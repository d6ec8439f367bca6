"""Run containerd's `ctr` against a server, the way an operator would.

`Ctr(address, namespace)` runs `ctr --address ... --namespace ... <args>` and returns its
stdout, or raises CtrError carrying the exit status and stderr.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

CTR_TIMEOUT = 60.0


class CtrError(RuntimeError):
    """`ctr` exited non-zero; `stderr` holds its message."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(command)} exited with status {returncode}: {stderr.strip()}")
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr


def socket_path(address: str) -> str:
    """The socket path in a `unix:///path` address; ctr takes bare paths only."""
    return address.removeprefix("unix://")


@dataclass(frozen=True)
class Ctr:
    """`ctr` bound to one server address and one namespace."""

    address: str
    namespace: str
    binary: str = "ctr"

    def command(self, *args: str) -> list[str]:
        """The full command line for `ctr <args>`."""
        return [
            self.binary,
            "--address",
            socket_path(self.address),
            "--namespace",
            self.namespace,
            *args,
        ]

    def run(self, *args: str, stdin: bytes = b"", timeout: float = CTR_TIMEOUT) -> bytes:
        """Run `ctr <args>` with `stdin`; its stdout, or CtrError when it fails."""
        command = self.command(*args)
        result = subprocess.run(
            command, check=False, input=stdin, capture_output=True, timeout=timeout
        )
        if result.returncode != 0:
            raise CtrError(command, result.returncode, result.stderr.decode(errors="replace"))
        return result.stdout

    def content_ingest(self, ref: str, data: bytes) -> None:
        """`ctr content ingest <ref>` with `data` on stdin."""
        self.run("content", "ingest", ref, stdin=data)

    def content_ls(self) -> list[str]:
        """The digests `ctr content ls -q` lists."""
        return self.run("content", "ls", "--quiet").decode().split()

    def content_get(self, digest: str) -> bytes:
        """The bytes of blob `digest`, from `ctr content get`."""
        return self.run("content", "get", digest)
