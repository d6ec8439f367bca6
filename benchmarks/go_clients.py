"""The Go load client (`goload/`): building it, and running it as one measured case.

A Python client spends CPU of its own on the cores the server runs on; containerd's own Go
client pieces spend a fraction of that, so the server's cost shows. `goload/main.go` builds
in GOPATH mode against Debian's containerd sources, as the conformance suites do
(`support.go_suite`), with no network and no go.mod; a run builds it once.

The binary dials one connection per client, says `ready` on stdout, waits for a line on
stdin, runs, and prints one JSON object: the harness opens its measured window in between.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import servers  # noqa: F401 (it puts tests/ on the path, for support.go_suite)
from clients import Window
from support.go_suite import CONTAINERD_SOURCES, SuiteBuildError, go_build

SOURCE_DIR: Final = Path(__file__).resolve().parent / "goload"
# GOPATH mode builds only packages under GOPATH/src; the source is copied there.
IMPORT_PATH: Final = "contentd.bench/goload"
#: How long the client may take to dial every connection.
READY_TIMEOUT: Final = 60.0


class GoLoadError(RuntimeError):
    """The Go load client failed to build, to start, or to finish in time."""


def unavailable() -> str | None:
    """Why the Go load client cannot be built here, or None when it can."""
    if shutil.which("go") is None:
        return "go is not installed (no `go` on PATH; install golang-go)"
    if not CONTAINERD_SOURCES.is_dir():
        return (
            f"containerd's Go sources are not at {CONTAINERD_SOURCES} "
            "(install golang-github-containerd-containerd-dev)"
        )
    return None


def build(workdir: Path) -> Path:
    """Compile goload into `workdir`; the binary's path."""
    try:
        return go_build(
            workdir, IMPORT_PATH, SOURCE_DIR.glob("*.go"), ["go", "build"], workdir / "goload"
        )
    except SuiteBuildError as exc:
        raise GoLoadError(str(exc)) from None


@dataclass(frozen=True)
class GoRun:
    """What one run of the client reported (times on the shared monotonic clock)."""

    start: float
    ends: tuple[float, ...]
    counts: tuple[int, ...]
    errors: tuple[str, ...]
    error_count: int
    #: The client process's CPU seconds over the run, every goroutine's.
    cpu_seconds: float
    #: contend mode: blobs of the digest listed once every client returned.
    listed: int

    @property
    def window(self) -> Window:
        """From the release to the last client's end."""
        return Window(self.start, max(self.ends))

    @property
    def blobs(self) -> int:
        return sum(self.counts)

    def check(self, what: str) -> None:
        """Raise unless every client succeeded."""
        if self.error_count:
            shown = "\n".join(self.errors)
            raise GoLoadError(f"{what}: {self.error_count} client errors, the first:\n{shown}")


def small_arguments(
    clients: int, seconds: float, size: int, labels: Mapping[str, str]
) -> list[str]:
    """Flags for `clients` writing random `size`-byte blobs, each then Info'd, for `seconds`."""
    return [
        "-mode=small",
        f"-clients={clients}",
        f"-seconds={seconds}",
        f"-size={size}",
        f"-labels={json.dumps(dict(labels))}",
    ]


def contend_arguments(
    clients: int, path: Path, digest: str, ref: str, labels: Mapping[str, str], timeout: float
) -> list[str]:
    """Flags for `clients` each writing the file at `path` under the one `ref`."""
    return [
        "-mode=contend",
        f"-clients={clients}",
        f"-file={path}",
        f"-digest={digest}",
        f"-ref={ref}",
        f"-labels={json.dumps(dict(labels))}",
        f"-timeout={timeout}",
    ]


def run(
    binary: Path,
    address: str,
    namespace: str,
    arguments: Sequence[str],
    *,
    timeout: float,
    on_ready: Callable[[], None] = lambda: None,
) -> GoRun:
    """Run the client against `address`: once it has dialled, `on_ready` runs and it is
    released. Raises GoLoadError when it fails, or is not done `timeout` seconds after
    the release (it is killed then)."""
    command = [str(binary), f"-address={address}", f"-namespace={namespace}", *arguments]
    with (
        tempfile.TemporaryFile("w+") as stderr,
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as process,
    ):
        assert process.stdin is not None
        assert process.stdout is not None
        # A stuck client is killed, which ends the read below with an empty line.
        killer = threading.Timer(READY_TIMEOUT + timeout, process.kill)
        killer.start()
        output = ""
        try:
            ready = process.stdout.readline()
            if ready.strip() == "ready":
                on_ready()
                process.stdin.write("go\n")
                process.stdin.flush()
                output = process.stdout.readline()
            status = process.wait()
        finally:
            killer.cancel()
            if process.poll() is None:
                process.kill()
        stderr.seek(0)
        if ready.strip() != "ready" or status != 0 or not output:
            raise GoLoadError(
                f"goload exited with status {status} (killed after {timeout:g} s if negative):"
                f"\n{stderr.read()[-4000:]}"
            )
    measured = json.loads(output)
    return GoRun(
        start=measured["start"],
        ends=tuple(measured["ends"]),
        counts=tuple(measured["counts"]),
        errors=tuple(measured["errors"]),
        error_count=measured["error_count"],
        cpu_seconds=measured["cpu_seconds"],
        listed=measured["listed"],
    )
