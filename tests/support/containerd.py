"""A private containerd that serves the Content API, for tests and benchmarks.

`start_containerd(workdir)` writes a config that loads only the plugins behind the Content
and Leases services, starts `containerd` on sockets of its own, and returns once the daemon
answers gRPC health checks. Everything it writes stays under `workdir` (the sockets move to a
short directory under /tmp when `workdir` is too deep for a unix socket path).

No pytest here, so benchmarks can use it too; tests skip through `support.tools`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40
# sun_path holds 108 bytes on Linux, its terminating NUL included; stay well clear.
MAX_SOCKET_PATH = 100

# The content service needs a content store, the metadata store over it (which refuses to
# start without at least one snapshotter: "native" is plain directories), the event exchange
# it publishes to, and the garbage collector the leases service holds. The leases service
# lets a client keep its content from that collector; the images and namespaces services
# are the rest of the metadata contentd serves beside content; health answers readiness
# probes.
# Listed as required, so a containerd missing any of them fails to start instead of serving
# without it.
REQUIRED_PLUGINS = (
    "io.containerd.content.v1.content",
    "io.containerd.snapshotter.v1.native",
    "io.containerd.metadata.v1.bolt",
    "io.containerd.event.v1.exchange",
    "io.containerd.gc.v1.scheduler",
    "io.containerd.service.v1.content-service",
    "io.containerd.service.v1.leases-service",
    "io.containerd.service.v1.images-service",
    "io.containerd.service.v1.namespaces-service",
    "io.containerd.grpc.v1.content",
    "io.containerd.grpc.v1.leases",
    "io.containerd.grpc.v1.images",
    "io.containerd.grpc.v1.namespaces",
    "io.containerd.grpc.v1.healthcheck",
)

# Every other plugin containerd 1.6 registers. containerd has no allow-list, only this
# deny-list; names a build lacks (Debian's has no tracing) are ignored. CRI, runtimes,
# cgroup monitors and the other snapshotters need root features or touch the host
# (/opt, cgroups, mounts); the rest serve APIs the content tests never call.
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.restart",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.differ.v1.walking",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.service.v1.introspection-service",
    "io.containerd.service.v1.containers-service",
    "io.containerd.service.v1.diff-service",
    "io.containerd.service.v1.snapshots-service",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.introspection",
    "io.containerd.grpc.v1.containers",
    "io.containerd.grpc.v1.diff",
    "io.containerd.grpc.v1.events",
    "io.containerd.grpc.v1.snapshots",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.grpc.v1.version",
)


class ServerStartError(RuntimeError):
    """A server did not come up: it exited, or did not answer before its deadline."""


GC_OFF = """  mutation_threshold = 0
  deletion_threshold = 1000000000
"""


def containerd_config(
    root: Path, state: Path, grpc_socket: Path, ttrpc_socket: Path, *, collect: bool = True
) -> str:
    """A version 2 config.toml serving the content service, and little else, from `root`.

    With `collect` false the garbage collector never runs: no startup pass, no
    trigger on mutations (threshold 0), and a deletion threshold no test
    reaches. Tests that compare Content API behaviour use that, so unreferenced
    content stays put as it does in contentd, which has no collector.
    """

    def toml_list(items: tuple[str, ...]) -> str:
        return "[\n" + "".join(f"  {json.dumps(item)},\n" for item in items) + "]"

    # JSON strings are valid TOML basic strings.
    return f"""\
version = 2
root = {json.dumps(str(root))}
state = {json.dumps(str(state))}
required_plugins = {toml_list(REQUIRED_PLUGINS)}
disabled_plugins = {toml_list(DISABLED_PLUGINS)}

# containerd chowns its sockets to these, root's by default; only root may give a file away.
[grpc]
  address = {json.dumps(str(grpc_socket))}
  uid = {os.getuid()}
  gid = {os.getgid()}

[ttrpc]
  address = {json.dumps(str(ttrpc_socket))}
  uid = {os.getuid()}
  gid = {os.getgid()}

# A fresh root has nothing to collect, and the one-off pass containerd schedules 100 ms
# after startup would race with the first unleased writes (`ctr content ingest` takes no
# lease). Collections after mutations and deletions keep containerd's defaults.
[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "0s"
{"" if collect else GC_OFF}"""


def short_socket_dir(workdir: Path, longest_name: str) -> tuple[Path, bool]:
    """A directory for sockets: `workdir` when `workdir/longest_name` fits a socket path,
    else a new short directory under /tmp. The flag says whether the directory is new (the
    caller removes it)."""
    if len(os.fsencode(workdir / longest_name)) < MAX_SOCKET_PATH:
        return workdir, False
    return Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp")), True


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a server log, for error messages."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def wait_for_serving(
    address: str,
    *,
    timeout: float,
    exited: Callable[[], int | None],
    describe: Callable[[], str],
) -> None:
    """Poll the gRPC health service at `address` until it reports SERVING.

    Raises ServerStartError when `exited()` returns an exit status or `timeout` seconds
    pass; `describe()` supplies the context for the message (a log tail, say).
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while True:
        status = exited()
        if status is not None:
            raise ServerStartError(f"server exited with status {status}\n{describe()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerStartError(
                f"{address} did not report SERVING within {timeout:g} s ({last_error})\n"
                f"{describe()}"
            )
        # A channel per attempt: one that failed to connect backs off for a second or more
        # before it tries again, and the socket usually appears within milliseconds.
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=min(1.0, remaining)
                )
            except grpc.RpcError as error:
                last_error = f"{error.code().name}: {error.details()}"
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        time.sleep(0.02)


def terminate(process: subprocess.Popen[Any], timeout: float) -> bool:
    """SIGTERM `process` and wait for it, SIGKILL it if it has not exited within `timeout`
    seconds. Returns whether it ended without the SIGKILL. Safe to call more than once."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return False
    return True


class ContainerdProcess:
    """A running private containerd. Stop it with `stop()` or by leaving its `with` block."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        socket: Path,
        root: Path,
        log_path: Path,
        owned_dir: Path | None,
    ) -> None:
        self.process = process
        self.socket = socket
        self.root = root
        self.log_path = log_path
        self._owned_dir = owned_dir

    @property
    def address(self) -> str:
        """The gRPC target, `unix:///...`."""
        return f"unix://{self.socket}"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if containerd has not exited within `timeout` seconds.
        Safe to call more than once."""
        terminate(self.process, timeout)
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> ContainerdProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_containerd(
    workdir: Path,
    *,
    binary: str = "containerd",
    timeout: float = START_TIMEOUT,
    log_level: str = "info",
    collect: bool = True,
) -> ContainerdProcess:
    """Start a containerd with its config, root, state and log (`containerd.log`) under
    `workdir`, and wait until it serves. Start it on an empty `workdir` for a fresh store."""
    executable = shutil.which(binary)
    if executable is None:
        raise ServerStartError(f"{binary} not found on PATH")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    socket_dir, owned = short_socket_dir(workdir, "containerd.sock.ttrpc")
    socket = socket_dir / "containerd.sock"
    config = workdir / "config.toml"
    config.write_text(
        containerd_config(
            workdir / "root",
            workdir / "state",
            socket,
            socket_dir / "containerd.sock.ttrpc",
            collect=collect,
        )
    )
    log_path = workdir / "containerd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [executable, "--config", str(config), "--log-level", log_level],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a ^C meant for the test run reaches us, and we stop it in order.
            start_new_session=True,
        )
    containerd = ContainerdProcess(
        process,
        socket=socket,
        root=workdir / "root",
        log_path=log_path,
        owned_dir=socket_dir if owned else None,
    )
    try:
        wait_for_serving(
            containerd.address,
            timeout=timeout,
            exited=process.poll,
            describe=lambda: f"containerd log ({log_path}):\n{log_tail(log_path)}",
        )
    except BaseException:
        containerd.stop()
        raise
    return containerd
