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


def parse_table(output: bytes) -> list[dict[str, str]]:
    """The rows of a table ctr prints (`content ls`, `content active`), each mapping column
    header to cell. ctr pads with tabs, so runs of tabs separate cells; no cell here is
    empty (ctr prints `-` for no labels) or holds a tab."""
    lines = output.decode().splitlines()
    if not lines:
        return []

    def cells(line: str) -> list[str]:
        return [cell for cell in line.split("\t") if cell]

    header = cells(lines[0])
    return [dict(zip(header, cells(line), strict=True)) for line in lines[1:]]


def parse_aligned_table(output: bytes, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a table ctr pads with spaces (`images ls`, `leases ls`), each mapping
    column header to cell. Headers (`CREATED AT`) and cells (`3.0 MiB`) hold spaces there,
    so each cell is cut where its column's header starts: ctr's tabwriter left-aligns every
    cell of a column at one offset. `columns` are the headers, in order."""
    lines = output.decode().splitlines()
    if not lines:
        return []
    header = lines[0]
    starts: list[int] = []
    for name in columns:
        start = header.find(name, starts[-1] + 1 if starts else 0)
        if start < 0:
            raise ValueError(f"no column {name!r} in header {header!r}")
        starts.append(start)
    ends = [*starts[1:], None]
    return [
        {
            name: line[start:end].strip()
            for name, start, end in zip(columns, starts, ends, strict=True)
        }
        for line in lines[1:]
    ]


def table(ctr: Ctr, *args: str) -> list[dict[str, str]]:
    """The rows of the table `ctr <args>` prints, parsed by `parse_table`."""
    return parse_table(ctr.run(*args))


def start(ctr: Ctr, *args: str) -> subprocess.Popen[bytes]:
    """Start `ctr <args>` with pipes on stdin, stdout and stderr, for commands a test feeds
    while they run; the caller writes, closes stdin and waits."""
    return subprocess.Popen(
        ctr.command(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_with_stdin_file(
    ctr: Ctr, stdin_path: str, *args: str, timeout: float = CTR_TIMEOUT
) -> bytes:
    """Like `Ctr.run`, with stdin read from the file at `stdin_path`. A file is seekable
    where a pipe is not, and ctr resumes an ingest only by seeking its input to the
    ingest's offset."""
    command = ctr.command(*args)
    with open(stdin_path, "rb") as stdin:
        result = subprocess.run(
            command, check=False, stdin=stdin, capture_output=True, timeout=timeout
        )
    if result.returncode != 0:
        raise CtrError(command, result.returncode, result.stderr.decode(errors="replace"))
    return result.stdout
