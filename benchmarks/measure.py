"""What a daemon process costs while a workload runs: peak resident memory and CPU time.

Both come from /proc: VmRSS sampled by a thread (every 50 ms by default), VmHWM (the
kernel's own high-water mark since the process started), and utime + stime from
/proc/PID/stat, which sum every thread of the process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

SAMPLE_INTERVAL: Final = 0.05
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
# utime and stime are fields 14 and 15 of /proc/PID/stat; counted after the ")" that ends
# the command name (which may itself hold spaces), they are the 12th and 13th.
_UTIME_AFTER_COMM: Final = 11


def _status_kib(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def rss_bytes(pid: int) -> int | None:
    """The process's resident set size now."""
    kib = _status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


def hwm_bytes(pid: int) -> int | None:
    """The process's peak resident set size since it started (VmHWM)."""
    kib = _status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = fields[_UTIME_AFTER_COMM], fields[_UTIME_AFTER_COMM + 1]
    return (int(utime) + int(stime)) / _CLOCK_TICKS


@dataclass(frozen=True)
class Usage:
    """What a process used over one measured window."""

    #: Highest VmRSS sampled during the window, in bytes.
    peak_rss: int
    #: VmHWM when the window closed: the peak since the process started, in bytes.
    hwm: int
    #: CPU seconds (user + system) spent during the window.
    cpu_seconds: float
    #: How many RSS samples the peak was taken from.
    samples: int
    #: CPU seconds the store's engines (S3, PostgreSQL) spent during the window, if measured.
    engines_cpu_seconds: float | None = None


def combined(usages: Sequence[Usage]) -> Usage:
    """Several processes measured over one window as one: peaks and CPU time added up."""
    return Usage(
        peak_rss=sum(u.peak_rss for u in usages),
        hwm=sum(u.hwm for u in usages),
        cpu_seconds=sum(u.cpu_seconds for u in usages),
        samples=min(u.samples for u in usages),
    )


class Monitor:
    """Measure one process over a window: `with Monitor(pid) as monitor: ...` (or `start()`
    and `stop()`), then `usage`.

    A thread samples VmRSS every `interval` seconds while the window is open; CPU time is
    read when it opens and when it closes.
    """

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name=f"rss-{pid}", daemon=True)
        self._peak = 0
        self._samples = 0
        self._cpu_start = 0.0
        self._usage: Usage | None = None

    def _record(self) -> None:
        rss = rss_bytes(self.pid)
        if rss is not None:
            self._peak = max(self._peak, rss)
            self._samples += 1

    def _sample(self) -> None:
        self._record()
        while not self._stop.wait(self.interval):
            self._record()

    def start(self) -> None:
        """Open the window: read the CPU time so far and start sampling."""
        self._cpu_start = cpu_seconds(self.pid)
        self._thread.start()

    def stop(self) -> None:
        """Close the window (if it is open) and compute `usage`."""
        if self._thread.ident is None or self._usage is not None:
            return
        self._stop.set()
        self._thread.join()
        self._record()
        try:
            spent = cpu_seconds(self.pid) - self._cpu_start
        except OSError:
            # The process died during the window; whatever ended it is the real news.
            spent = float("nan")
        self._usage = Usage(
            peak_rss=self._peak,
            hwm=hwm_bytes(self.pid) or 0,
            cpu_seconds=spent,
            samples=self._samples,
        )

    def __enter__(self) -> Monitor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def usage(self) -> Usage:
        """The window's measurements; available once the window has closed."""
        if self._usage is None:
            raise RuntimeError("the measured window has not closed yet")
        return self._usage
