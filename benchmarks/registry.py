"""Benchmark contentd's HTTP face side by side with docker-registry 2.8: push and pull one blob.

    python benchmarks/registry.py [--quick] [--backend local|s3pg] [--rounds N] [--json FILE]
                                  [--tmpdir DIR] [--keep]

Each round makes a file of fresh random bytes (256 MiB, or 32 MiB with --quick) and times
how fast the disk takes a durable copy of it; then, for contentd and then for
docker-registry in turn, it starts the server, pushes the file as one blob and pulls it
back, each through a client process of its own, checks the blob, and stops the server;
the two never run at the same time. Each server keeps one root, in a temporary directory,
for the whole run. Progress goes to stderr; the environment, two Markdown tables (the
medians and every round's rate, then the servers' peak memory and CPU time) and lines on
where a push's time goes go to stdout. Everything started is stopped and everything
written is removed on the way out, however the run ends.

With `--backend s3pg` both keep their blobs in one SeaweedFS started for the run: contentd
on a cluster store (S3 and a durable PostgreSQL, see `engines`), docker-registry with its
S3 driver on a bucket of its own; the targets are then those for object storage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

try:
    from clients import Blob, Timed
    from engines import BACKENDS, LOCAL, S3PG, Engines, engines_for
    from environment import describe, package_version
    from measure import Monitor, Usage
    from registry_client import (
        Go,
        Pull,
        Push,
        Pushed,
        check_digest,
        check_size,
        pull_blob,
        push_blob,
        run_client,
    )
    from registry_servers import ContentdRegistry, DockerRegistry, docker_registry_s3
    from run import Progress, add_rounds_option, add_run_options, publish, serving
    from servers import CONTENTD, Running, Server
    from support.docker_registry import DOCKER_REGISTRY  # on the path once servers is imported
    from workloads import Data, human_bytes
except ModuleNotFoundError as missing:
    sys.exit(
        f"benchmarks/registry.py: {missing}; run it with the project's virtualenv "
        "(`make bench-registry`, or `.venv/bin/python benchmarks/registry.py`)"
    )

MIB: Final = 1 << 20
MB: Final = 1e6
FULL_SIZE: Final = 256 * MIB
QUICK_SIZE: Final = 32 * MIB
REPOSITORY: Final = "bench"
PUSH: Final = "push"
PULL: Final = "pull"
#: The issues' targets: how many times docker-registry's rate contentd should reach, on
#: local disks and with both on S3.
TARGETS: Final = {LOCAL: {PUSH: 2.0, PULL: 1.0}, S3PG: {PUSH: 1.5, PULL: 1.0}}
#: docker-registry's bucket, beside the cluster stores' in the one SeaweedFS.
DOCKER_REGISTRY_BUCKET: Final = "docker-registry"

J = TypeVar("J")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/registry.py",
        description="Benchmark contentd's registry side by side with docker-registry.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a {human_bytes(QUICK_SIZE)} blob instead of {human_bytes(FULL_SIZE)}",
    )
    add_rounds_option(
        parser, "rounds, each with fresh content (default: 3); the median is reported"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=LOCAL,
        help="where both keep their blobs: local directories (default), or s3pg, one "
        "SeaweedFS started for the run (contentd: a cluster store with PostgreSQL; "
        "docker-registry: its S3 driver)",
    )
    add_run_options(parser)
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Moved:
    """Bytes moved in a measured time."""

    seconds: float
    size: int

    @property
    def rate(self) -> float:
        """MB/s (10^6 bytes per second)."""
        return self.size / MB / self.seconds


@dataclass(frozen=True)
class Round(Moved):
    """One push or pull on one server."""

    #: The server process over the measured window.
    usage: Usage
    #: For a push: how long the sync() right after it took (the server's unwritten bytes).
    sync_seconds: float | None = None
    #: For a push: seconds of its POST, PATCH and PUT, each from send to answer.
    phases: tuple[float, ...] = ()


M = TypeVar("M", bound=Moved)


@dataclass
class Series(Generic[M]):
    """Every round of one case (push or pull) on one server, or of one tool's pull."""

    case: str
    server: str
    rounds: list[M] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(r.rate for r in self.rounds)

    @property
    def best(self) -> M:
        """The fastest round."""
        return min(self.rounds, key=lambda r: r.seconds)


def client_timeout(size: int) -> float:
    """Far beyond anything either server needs: it only catches a hang."""
    return 60 + size / (2 * MB)


def measured(
    running: Running,
    operation: Callable[[J, Go], Timed],
    job: J,
    size: int,
    engines: Engines | None = None,
) -> Round:
    """Run one client operation, measuring the server (and the `engines` under it, if any)
    from the client's release to its end."""
    # Bytes an earlier step left dirty would otherwise be written back on this one's time.
    os.sync()
    monitor = Monitor(running.pid)
    engines_at_start = 0.0

    def on_ready() -> None:
        nonlocal engines_at_start
        if engines is not None:
            engines_at_start = engines.cpu_seconds()
        monitor.start()

    try:
        timed = run_client(operation, job, timeout=client_timeout(size), on_ready=on_ready)
    finally:
        monitor.stop()
    usage = monitor.usage
    if engines is not None:
        spent = engines.cpu_seconds() - engines_at_start
        usage = dataclasses.replace(usage, engines_cpu_seconds=spent)
    phases = timed.phases if isinstance(timed, Pushed) else ()
    return Round(timed.window.seconds, timed.count, usage, phases=phases)


def disk_rate(blob: Blob, directory: Path) -> float:
    """MB/s of copying `blob` 1 MiB at a time into a new file beside the servers' roots and
    fdatasync()ing it: what the disk allows a durable push, with no server in the way."""
    os.sync()
    copy = directory / "disk-probe.bin"
    with blob.path.open("rb", buffering=0) as source:
        started = time.monotonic()
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while piece := source.read(MIB):
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        seconds = time.monotonic() - started
    copy.unlink()
    return blob.size / MB / seconds


def run_round(
    server: Server, blob: Blob, number: int, progress: Progress, engines: Engines | None = None
) -> dict[str, Round]:
    """Start `server`, push `blob` and pull it back, check it, and stop the server."""
    progress(f"{server.name}: starting for round {number}")
    running = server.start()
    try:
        push = Push(running.address, REPOSITORY, blob)
        pushed = measured(running, push_blob, push, blob.size, engines)
        started = time.monotonic()
        os.sync()
        pushed = dataclasses.replace(pushed, sync_seconds=time.monotonic() - started)
        check_size(running.address, REPOSITORY, blob)
        pulled = measured(
            running,
            pull_blob,
            Pull(running.address, REPOSITORY, blob.digest, blob.size),
            blob.size,
            engines,
        )
        check_digest(running.address, REPOSITORY, blob)
    except Exception:
        print(f"--- {server.name} log (last lines) ---\n{server.log()}", file=sys.stderr)
        raise
    finally:
        server.stop()
    for case, done in ((PUSH, pushed), (PULL, pulled)):
        progress(
            f"{server.name}: {case} round {number}: {done.rate:,.1f} MB/s "
            f"({done.seconds:.3f} s, CPU {done.usage.cpu_seconds:.2f} s, "
            f"peak RSS {done.usage.peak_rss / MIB:,.0f} MiB)"
        )
    return {PUSH: pushed, PULL: pulled}


# Reporting.


def titles(size: int) -> dict[str, str]:
    shown = human_bytes(size)
    return {
        PUSH: f"push {shown}: POST, one PATCH, PUT",
        PULL: f"pull {shown}: GET, 1 MiB reads",
    }


def format_rates(series: Series[Round] | None) -> str:
    if series is None or not series.rounds:
        return "n/a"
    median = f"{series.median:,.1f} MB/s"
    if len(series.rounds) == 1:
        return median
    return f"{median} ({' / '.join(f'{r.rate:,.1f}' for r in series.rounds)})"


def ratio(ours: Series[Round] | None, theirs: Series[Round] | None) -> float | None:
    """contentd's median rate over docker-registry's."""
    if ours is None or theirs is None or not ours.rounds or not theirs.rounds:
        return None
    return ours.median / theirs.median


def results_table(
    found: dict[tuple[str, str], Series[Round]], size: int, backend: str = LOCAL
) -> str:
    ours_name, theirs_name = column_names(backend)
    lines = [
        f"| case | {ours_name} | {theirs_name} | ratio (>1: contentd faster) | target |",
        "|---|---:|---:|---:|---|",
    ]
    for case, title in titles(size).items():
        ours, theirs = found.get((case, CONTENTD)), found.get((case, DOCKER_REGISTRY))
        times = ratio(ours, theirs)
        target = TARGETS[backend][case]
        if times is None:
            shown, verdict = "n/a", f"{target:g}x"
        else:
            met = "met" if times >= target else "NOT met"
            shown, verdict = f"{times:.2f}", f"{target:g}x: {met}"
        lines.append(
            f"| {title} | {format_rates(ours)} | {format_rates(theirs)} | {shown} | {verdict} |"
        )
    return "\n".join(lines)


def column_names(backend: str) -> tuple[str, str]:
    """What the tables call the two registries: with their storage, when it is S3."""
    if backend == S3PG:
        return "contentd (S3 + PostgreSQL)", "docker-registry (S3)"
    return CONTENTD, DOCKER_REGISTRY


def format_usage(series: Series[Round] | None) -> tuple[str, str, str]:
    """Peak RSS, and the median CPU seconds of the server and of its engines."""
    if series is None or not series.rounds:
        return "n/a", "n/a", "n/a"
    peak = max(r.usage.peak_rss for r in series.rounds)
    hwm = max(r.usage.hwm for r in series.rounds)
    cpu = statistics.median(r.usage.cpu_seconds for r in series.rounds)
    on_engines = [r.usage.engines_cpu_seconds for r in series.rounds]
    engines = (
        "n/a" if None in on_engines else f"{statistics.median(s or 0.0 for s in on_engines):,.2f} s"
    )
    return f"{peak / MIB:,.0f} MiB (HWM {hwm / MIB:,.0f})", f"{cpu:,.2f} s", engines


def usage_table(
    found: dict[tuple[str, str], Series[Round]], size: int, backend: str = LOCAL
) -> str:
    engines = backend == S3PG
    extra = " engines' CPU |"
    lines = [
        f"| case | contentd peak RSS | contentd CPU |{extra if engines else ''} "
        f"docker-registry peak RSS | docker-registry CPU |{extra if engines else ''}",
        "|---|---:|---:|---:|---:|" + ("---:|---:|" if engines else ""),
    ]
    for case, title in titles(size).items():
        ours_rss, ours_cpu, ours_engines = format_usage(found.get((case, CONTENTD)))
        theirs_rss, theirs_cpu, theirs_engines = format_usage(found.get((case, DOCKER_REGISTRY)))
        ours = f"{ours_rss} | {ours_cpu} |" + (f" {ours_engines} |" if engines else "")
        theirs = f"{theirs_rss} | {theirs_cpu} |" + (f" {theirs_engines} |" if engines else "")
        lines.append(f"| {title} | {ours} {theirs}")
    return "\n".join(lines)


def phases_line(found: dict[tuple[str, str], Series[Round]]) -> str:
    """How each server's push divides between its requests (medians over the rounds)."""
    parts = []
    for server in (CONTENTD, DOCKER_REGISTRY):
        series = found.get((PUSH, server))
        if series is None or not series.rounds:
            continue
        phases = zip(*(r.phases for r in series.rounds), strict=True)
        medians = [statistics.median(phase) for phase in phases]
        shown = ", ".join(
            f"{name} {seconds:.3f} s"
            for name, seconds in zip(("POST", "PATCH", "PUT"), medians, strict=True)
        )
        parts.append(f"{server} {shown}")
    return "Push requests, send to answer (median): " + "; ".join(parts) + "."


def sync_line(found: dict[tuple[str, str], Series[Round]]) -> str:
    """What each server left for the disk after its push: the sync() right after it."""
    parts = []
    for server in (CONTENTD, DOCKER_REGISTRY):
        series = found.get((PUSH, server))
        if series is not None and series.rounds:
            seconds = [r.sync_seconds or 0.0 for r in series.rounds]
            parts.append(f"{server} {statistics.median(seconds):.3f} s")
    return "sync() right after the push (median; not in the push's time): " + ", ".join(parts)


def disk_line(disk: Sequence[float]) -> str:
    rounds = " / ".join(f"{rate:,.1f}" for rate in disk)
    return (
        f"The disk, for scale: the same file copied 1 MiB at a time and fdatasync()ed by the "
        f"harness, no server involved: {statistics.median(disk):,.1f} MB/s ({rounds})."
    )


def report(
    environment: dict[str, str],
    found: dict[tuple[str, str], Series[Round]],
    size: int,
    disk: Sequence[float],
    backend: str = LOCAL,
) -> str:
    lines = [f"- {key}: {value}" for key, value in environment.items()]
    lines += [
        "",
        results_table(found, size, backend),
        "",
        "Each rate is the median over the rounds, every round's rate in parentheses. "
        "MB = 10^6 bytes; MiB = 2^20. The ratio is contentd's median over docker-registry's.",
        "",
        usage_table(found, size, backend),
        "",
        "Peak RSS is the highest VmRSS sampled every 50 ms during any round, HWM the highest "
        "VmHWM (peak since that start, setup included); CPU is the median over the rounds of "
        "the server's user + system seconds in the measured window"
        + (
            "; the engines' CPU, of SeaweedFS's and PostgreSQL's processes together over the "
            "same window (docker-registry uses SeaweedFS only)."
            if backend == S3PG
            else "."
        ),
        "",
        phases_line(found),
        sync_line(found),
        disk_line(disk),
    ]
    return "\n".join(lines)


def write_json(
    path: Path,
    environment: dict[str, str],
    args: argparse.Namespace,
    size: int,
    found: dict[tuple[str, str], Series[Round]],
    disk: Sequence[float],
    timings: dict[str, float],
) -> None:
    results = []
    for series in found.values():
        entry = dataclasses.asdict(series)
        entry["median_mb_per_s"] = series.median
        for raw, measured_round in zip(entry["rounds"], series.rounds, strict=True):
            raw["mb_per_s"] = measured_round.rate
        results.append(entry)
    ratios = {
        case: ratio(found.get((case, CONTENTD)), found.get((case, DOCKER_REGISTRY)))
        for case in (PUSH, PULL)
    }
    document = {
        "environment": environment,
        "quick": args.quick,
        "size": size,
        "rounds": args.rounds,
        "wall_seconds": timings,
        "results": results,
        "ratios": ratios,
        "disk_mb_per_s": list(disk),
        "backend": args.backend,
        "targets": TARGETS[args.backend],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def environment_lines(workdir: Path) -> dict[str, str]:
    """The main harness's lines, with contentd's HTTP stack after grpcio and
    docker-registry's version in containerd's place."""
    lines = {}
    for key, value in describe(workdir).items():
        if key == "containerd":
            lines[DOCKER_REGISTRY] = DockerRegistry.version()
        else:
            lines[key] = value
        if key == "grpcio":
            lines["aiohttp"] = package_version("aiohttp")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress()
    size = QUICK_SIZE if args.quick else FULL_SIZE

    workdir = Path(tempfile.mkdtemp(prefix="contentd-registry-bench-", dir=args.tmpdir))
    environment = environment_lines(workdir)
    found: dict[tuple[str, str], Series[Round]] = {}
    disk: list[float] = []
    timings: dict[str, float] = {}
    servers: list[Server] = []
    with serving(servers, workdir, keep=args.keep, progress=progress), ExitStack() as stack:
        engines = engines_for(
            args.backend,
            stack,
            workdir,
            progress,
            keep=args.keep,
            servers=servers,
            environment=environment,
        )
        if ContentdRegistry.available():
            flags = engines.cluster("contentd").flags() if engines else ()
            servers.append(ContentdRegistry(workdir / CONTENTD, flags))
        else:
            progress("contentd serve has no --http: running docker-registry alone")
        if DockerRegistry.available():
            storage = docker_registry_s3(engines, DOCKER_REGISTRY_BUCKET) if engines else None
            servers.append(DockerRegistry(workdir / DOCKER_REGISTRY, storage))
        else:
            progress("docker-registry is not installed (no `docker-registry` on PATH)")
        if not servers:
            progress("nothing to measure")
            return 1
        for key, value in environment.items():
            progress(f"{key}: {value}")

        data = Data(workdir / "data")
        for number in range(1, args.rounds + 1):
            started = time.monotonic()
            blob = data.random_blob(f"round-{number}", size)
            timings[f"round-{number}/prepare"] = time.monotonic() - started
            disk.append(disk_rate(blob, workdir))
            progress(f"disk: round {number}: {disk[-1]:,.1f} MB/s written and fdatasync'd")
            for server in servers:
                started = time.monotonic()
                for case, done in run_round(server, blob, number, progress, engines).items():
                    found.setdefault((case, server.name), Series(case, server.name))
                    found[(case, server.name)].rounds.append(done)
                timings[f"round-{number}/{server.name}"] = time.monotonic() - started
            blob.path.unlink()
    publish(
        timings,
        environment,
        progress,
        lambda: report(environment, found, size, disk, args.backend),
        args.json,
        lambda path: write_json(path, environment, args, size, found, disk, timings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
