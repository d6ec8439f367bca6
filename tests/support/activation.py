"""Start `contentd serve` the way systemd socket-activates it.

The test binds and listens on the socket (systemd's part), forks, and in the child puts
the socket at descriptor 3 and sets LISTEN_FDS=1 and LISTEN_PID to the child's own pid
before exec, as systemd does (sd_listen_fds(3)). The test keeps its own copy of the
socket open, as systemd does, so the socket outlives each daemon it starts.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .daemon import DaemonProcess, contentd_command, launch_daemon

#: The descriptor systemd passes the first socket as.
FIRST_FD = 3


def listening_unix_socket(path: Path) -> socket.socket:
    """A unix stream socket listening on `path`, as a ListenStream= unit makes it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    return sock


def start_activated(
    root: Path, listener: socket.socket, *extra: str, timeout: float = 20
) -> DaemonProcess:
    """`contentd serve --root ROOT EXTRA...` given `listener` by socket activation."""

    def as_systemd_does() -> None:
        # In the child, after fork and before exec: the pid is the daemon's own.
        if listener.fileno() == FIRST_FD:
            os.set_inheritable(FIRST_FD, True)  # dup2 onto itself would keep close-on-exec
        else:
            os.dup2(listener.fileno(), FIRST_FD)
        os.environ["LISTEN_FDS"] = "1"
        os.environ["LISTEN_PID"] = str(os.getpid())

    address = f"unix://{listener.getsockname()}"
    return launch_daemon(
        [*contentd_command(), "serve", "--root", str(root), "--no-gc-scheduler", *extra],
        address,
        root,
        timeout=timeout,
        # Popen would close descriptor 3 after `as_systemd_does` put the socket there;
        # the test's own descriptors are not inheritable, so none other leaks through.
        close_fds=False,
        preexec_fn=as_systemd_does,
    )
