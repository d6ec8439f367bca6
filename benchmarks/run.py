"""Benchmark contentd side by side with containerd, over the same clients.

    python benchmarks/run.py [--quick] [--backend local|s3pg] [--only WORKLOAD...] [--json FILE]

For each workload in turn, it starts `contentd serve`, runs the workload, stops it, then
does the same with a private containerd (content plugins only, its own root, state and
socket); the two never run at the same time. Each server keeps one root, in a temporary
directory, for the whole run. With `--backend s3pg` contentd serves a cluster store
instead, on a SeaweedFS and a PostgreSQL the harness starts for the run (see `engines`),
and a third server, two contentd daemons on that one store, runs the small blobs.
Most workloads drive the servers with contentd's Python client; `small-go` and
`contention-go` with containerd's own Go client (`go_clients`), built once per run, and
skipped with a message where Go or containerd's Go sources are not installed.
Progress goes to stderr; the environment and Markdown tables (the results, the daemons'
peak memory and CPU time, then CPU per small blob) go to stdout. Everything started is stopped and
everything written is removed on the way out, however the run ends.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Final

try:
    from engines import BACKENDS, LOCAL, S3PG, Engines, engines_for
    from environment import describe, load_average
    from servers import (
        CONTAINERD,
        CONTENTD,
        CONTENTD_PAIR,
        NULL_SERVER,
        Containerd,
        Contentd,
        ContentdPair,
        Server,
    )
    from workloads import (
        FULL,
        FULL_CLUSTER,
        QUICK,
        STORE_ALONE,
        WORKLOADS,
        Context,
        Data,
        References,
        Result,
        Scale,
        Workload,
    )
except ModuleNotFoundError as missing:
    sys.exit(
        f"benchmarks/run.py: {missing}; run it with the project's virtualenv "
        "(`make bench`, or `.venv/bin/python benchmarks/run.py`)"
    )

MIB: Final = 1 << 20
#: The issue's memory target for the daemon while it ingests the large blob.
RSS_TARGET_MB: Final = 150
#: The issue's small-blob target: this many times containerd's rate with 8 clients.
SMALL_TARGET_TIMES: Final = 5
SMALL_TARGET_CASE: Final = "small/8"
#: Issue 22's targets, with 8 Go clients: this many times containerd's rate, and at most
#: containerd's daemon CPU per blob.
GO_TARGET_CASE: Final = "small-go/8"
GO_TARGET_TIMES: Final = 1.5


class Progress:
    """Timestamped progress lines on stderr."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [workload.name for workload in WORKLOADS]
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Benchmark contentd side by side with containerd.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="scaled-down sizes, to smoke-test the harness in about a minute",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=names,
        metavar="WORKLOAD",
        help=f"run only these workloads (of {', '.join(names)})",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=LOCAL,
        help="contentd's store: a local directory (default), or s3pg, a cluster store on "
        "S3 (SeaweedFS) and PostgreSQL started for the run; containerd's stays local",
    )
    parser.add_argument(
        "--populate-writers",
        type=int,
        metavar="N",
        help="writer processes populating the listing namespace (default: 8)",
    )
    add_run_options(parser)
    return parser.parse_args(argv)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every harness takes: --json, --tmpdir and --keep."""
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every raw number here")
    parser.add_argument(
        "--tmpdir",
        type=Path,
        default=None,
        help="where the servers' roots go (default: the system's temporary directory)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the roots and logs (the path is printed)"
    )


def add_rounds_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--rounds N (3 by default, at least 1), for the harnesses that repeat their cases."""

    def count(text: str) -> int:
        rounds = int(text)
        if rounds < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        return rounds

    parser.add_argument("--rounds", type=count, default=3, metavar="N", help=help_text)


@contextmanager
def terminated_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so cleanup runs when the harness is killed politely."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        print("benchmarks/run.py: terminated, cleaning up", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def serving(
    servers: Sequence[Server], workdir: Path, *, keep: bool, progress: Progress
) -> Iterator[None]:
    """The measuring part of a run: however it ends (error, SIGTERM, ^C), every server
    is stopped and the work directory removed (unless `keep`)."""
    try:
        with terminated_as_exit():
            yield
    finally:
        for server in servers:
            server.stop()
        if keep:
            progress(f"kept {workdir}")
        else:
            progress(f"removing {workdir}")
            shutil.rmtree(workdir, ignore_errors=True)


def publish(
    timings: dict[str, float],
    environment: dict[str, str],
    progress: Progress,
    report: Callable[[], str],
    json_path: Path | None,
    write_json: Callable[[Path], None],
) -> None:
    """End a run: record its total time and the load average it ended with, print
    `report()` and, if `json_path` is given, `write_json` the raw numbers there."""
    timings["total"] = time.monotonic() - progress.started
    environment["load average at end (1/5/15 min)"] = load_average()
    progress(f"done in {timings['total']:.1f} s")
    print(report())
    if json_path:
        write_json(json_path)
        progress(f"raw numbers written to {json_path}")


def run_workload(
    workload: Workload,
    server: Server,
    scale: Scale,
    data: Data,
    progress: Progress,
    engines: Engines | None = None,
) -> list[Result]:
    """Start `server`, run `workload` on it, and stop it whatever happens. The `engines`'
    CPU is measured beside contentd's (containerd uses none)."""
    progress(f"{server.name}: starting for {workload.name}")
    running = server.start()
    engines_cpu = engines.cpu_seconds if engines and server.name != CONTAINERD else None
    try:
        return workload.run(Context(running, scale, data, progress, engines_cpu))
    except Exception:
        print(f"--- {server.name} log (last lines) ---\n{server.log()}", file=sys.stderr)
        raise
    finally:
        server.stop()


# Reporting.


def format_value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "MB/s":
        return f"{value:,.1f} MB/s"
    return f"{value:,.0f} {unit}"


def ratio(ours: Result, theirs: Result | None) -> float | None:
    """How many times better contentd did: rate over rate, or time over time inverted."""
    if theirs is None or ours.value <= 0 or theirs.value <= 0:
        return None
    if ours.higher_is_better:
        return ours.value / theirs.value
    return theirs.value / ours.value


def paired(results: Sequence[Result]) -> list[tuple[Result, Result | None]]:
    """contentd's results in order (two daemons' too), each with containerd's result for
    the same case."""
    theirs = {r.case: r for r in results if r.server == CONTAINERD}
    return [(r, theirs.get(r.case)) for r in results if r.server in (CONTENTD, CONTENTD_PAIR)]


def column_names(backend: str) -> tuple[str, str]:
    """What the tables call contentd and containerd: their stores, when they differ."""
    if backend == S3PG:
        return "contentd (S3 + PostgreSQL)", "containerd (local)"
    return CONTENTD, CONTAINERD


def results_table(results: Sequence[Result], backend: str = LOCAL) -> str:
    ours_name, theirs_name = column_names(backend)
    lines = [
        f"| workload | {ours_name} | {theirs_name} | ratio (>1: contentd better) |",
        "|---|---:|---:|---:|",
    ]
    for ours, theirs in paired(results):
        times = ratio(ours, theirs)
        shown = "n/a" if times is None else f"{times:.2f}"
        if times is not None and not ours.counted:
            shown = f"({shown})"
        their_value = format_value(theirs.value if theirs else None, ours.unit)
        lines.append(
            f"| {ours.title} | {format_value(ours.value, ours.unit)} | {their_value} | {shown} |"
        )
    return "\n".join(lines)


def format_usage(result: Result | None) -> tuple[str, str]:
    if result is None or result.usage is None:
        return "n/a", "n/a"
    usage = result.usage
    memory = f"{usage.peak_rss / MIB:,.0f} MiB (HWM {usage.hwm / MIB:,.0f})"
    return memory, f"{usage.cpu_seconds:,.1f} s"


def format_engines_cpu(result: Result) -> str:
    seconds = result.usage.engines_cpu_seconds if result.usage else None
    return "n/a" if seconds is None else f"{seconds:,.1f} s"


def usage_table(results: Sequence[Result]) -> str:
    engines = any(r.usage and r.usage.engines_cpu_seconds is not None for r in results)
    extra = " engines' CPU |" if engines else ""
    lines = [
        f"| workload | contentd peak RSS | contentd CPU |{extra} containerd peak RSS "
        "| containerd CPU |",
        "|---|---:|---:|---:|---:|" + ("---:|" if engines else ""),
    ]
    for ours, theirs in paired(results):
        ours_rss, ours_cpu = format_usage(ours)
        theirs_rss, theirs_cpu = format_usage(theirs)
        on_engines = f" {format_engines_cpu(ours)} |" if engines else ""
        lines.append(
            f"| {ours.title} | {ours_rss} | {ours_cpu} |{on_engines} {theirs_rss} | {theirs_cpu} |"
        )
    return "\n".join(lines)


def server_ms_per_blob(result: Result) -> float | None:
    """The server's (or the store process's) CPU milliseconds per blob stored."""
    blobs = result.raw.get("blobs")
    if result.usage is None or not isinstance(blobs, int) or blobs <= 0:
        return None
    return 1000 * result.usage.cpu_seconds / blobs


def clients_ms_per_blob(result: Result) -> float | None:
    """The client processes' CPU milliseconds per blob stored, together."""
    blobs, seconds = result.raw.get("blobs"), result.raw.get("client_cpu_seconds")
    if not isinstance(blobs, int) or blobs <= 0 or not isinstance(seconds, float):
        return None
    return 1000 * seconds / blobs


def format_ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} ms"


_REFERENCE_NAMES: Final = {
    CONTENTD: "contentd",
    CONTAINERD: "containerd",
    NULL_SERVER: "a gRPC server that stores nothing",
    STORE_ALONE: "contentd's store alone, no gRPC (threads for clients)",
}


def _small(results: Sequence[Result], case: str, server: str) -> Result | None:
    return next((r for r in results if r.case == case and r.server == server), None)


def references_table(results: Sequence[Result]) -> str | None:
    """The small-blob rows beside what bounds them here, with each side's CPU per blob."""
    small = [r for r in results if r.case.startswith("small/") and r.server in _REFERENCE_NAMES]
    if not any(r.server in (NULL_SERVER, STORE_ALONE) for r in small):
        return None
    lines = [
        "| small blobs | clients | blobs/s | server CPU per blob | clients' CPU per blob |",
        "|---|---:|---:|---:|---:|",
    ]
    order = list(_REFERENCE_NAMES)
    cases = sorted({r.case for r in small}, key=lambda case: int(case.split("/")[1]))
    for case in cases:
        clients = case.split("/")[1]
        rows = sorted((r for r in small if r.case == case), key=lambda r: order.index(r.server))
        for result in rows:
            on_clients = (
                "(in the server's)"
                if result.server == STORE_ALONE
                else format_ms(clients_ms_per_blob(result))
            )
            lines.append(
                f"| {_REFERENCE_NAMES[result.server]} | {clients} | "
                f"{format_value(result.value, result.unit)} | "
                f"{format_ms(server_ms_per_blob(result))} | {on_clients} |"
            )
            if case == SMALL_TARGET_CASE and result.server == CONTAINERD:
                target = SMALL_TARGET_TIMES * result.value
                lines.append(
                    f"| target: {SMALL_TARGET_TIMES}x containerd | {clients} | "
                    f"{format_value(target, result.unit)} | | |"
                )
    return "\n".join(lines)


def small_target_lines(results: Sequence[Result]) -> list[str]:
    """What the small-blob target leaves of this machine's CPU for each blob, and what
    the clients, a server that stores nothing and the store alone take of it."""
    theirs = _small(results, SMALL_TARGET_CASE, CONTAINERD)
    if theirs is None or theirs.value <= 0:
        return []
    target = SMALL_TARGET_TIMES * theirs.value
    cores = os.cpu_count() or 1
    budget = 1000 * cores / target
    lines = [
        f"At the target's {target:,.0f} blobs/s, {cores} cores leave {budget:.2f} ms of CPU "
        "per blob for the server and its clients together."
    ]
    null, alone = (_small(results, SMALL_TARGET_CASE, s) for s in (NULL_SERVER, STORE_ALONE))
    parts = (
        clients_ms_per_blob(null) if null else None,
        server_ms_per_blob(null) if null else None,
        server_ms_per_blob(alone) if alone else None,
    )
    if all(part is not None for part in parts):
        on_clients, on_grpc, on_store = (part or 0.0 for part in parts)
        least = on_clients + on_grpc + on_store
        lines.append(
            f"Here the clients took {on_clients:.2f} ms per blob against the server that "
            f"stores nothing, that server {on_grpc:.2f} ms and the store alone "
            f"{on_store:.2f} ms: {least:.2f} ms in all, {least / budget:.1f} times that."
        )
    return lines


def go_cpu_table(results: Sequence[Result]) -> str | None:
    """The Go small-blob cases: each daemon's CPU per blob, and the Go client's."""
    rows = [(ours, theirs) for ours, theirs in paired(results) if ours.case.startswith("small-go/")]
    if not rows:
        return None
    lines = [
        "| small blobs, Go clients | clients | contentd CPU per blob | containerd CPU per blob "
        "| contentd / containerd | Go client's CPU per blob (against contentd / containerd) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for ours, theirs in rows:
        mine = server_ms_per_blob(ours)
        other = server_ms_per_blob(theirs) if theirs else None
        times = f"{mine / other:.2f}" if mine is not None and other else ""
        on_clients = " / ".join(
            format_ms(clients_ms_per_blob(r)) or "n/a" for r in (ours, theirs) if r is not None
        )
        lines.append(
            f"| 4 KiB WriteBlob+Info | {ours.case.split('/')[1]} | {format_ms(mine)} | "
            f"{format_ms(other)} | {times} | {on_clients} |"
        )
    return "\n".join(lines)


def go_target_line(results: Sequence[Result]) -> str | None:
    """Issue 22's targets for 8 Go clients, and whether this run met them."""
    ours, theirs = (_small(results, GO_TARGET_CASE, s) for s in (CONTENTD, CONTAINERD))
    if ours is None or theirs is None or theirs.value <= 0:
        return None
    times = ours.value / theirs.value
    mine, other = server_ms_per_blob(ours), server_ms_per_blob(theirs)
    if mine is None or other is None:
        return None

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    return (
        f"Small blobs with 8 Go clients: {times:.2f} times containerd's rate (target: "
        f"{GO_TARGET_TIMES:g}x, {verdict(times >= GO_TARGET_TIMES)}); daemon CPU {mine:.2f} ms "
        f"per blob against containerd's {other:.2f} ms (target: at most containerd's, "
        f"{verdict(mine <= other)})."
    )


def memory_target_line(results: Sequence[Result]) -> str | None:
    for result in results:
        if result.server == CONTENTD and result.case == "large-ingest" and result.usage:
            peak = result.usage.peak_rss / 1e6
            verdict = "met" if peak < RSS_TARGET_MB else "NOT met"
            return (
                f"contentd peak RSS during the large ingest: {peak:,.0f} MB "
                f"(target: under {RSS_TARGET_MB} MB, {verdict})."
            )
    return None


def report(environment: dict[str, str], results: Sequence[Result], backend: str = LOCAL) -> str:
    lines = [f"- {key}: {value}" for key, value in environment.items()]
    lines += [
        "",
        results_table(results, backend),
        "",
        "Ratios are contentd over containerd for rates and containerd over contentd for "
        "seconds, so above 1 contentd is better either way; a ratio in parentheses is for "
        "a figure outside the comparison. MB = 10^6 bytes.",
        "",
        usage_table(results),
        "",
        "Peak RSS is the highest VmRSS sampled every 50 ms while the clients worked; HWM is "
        "the daemon's VmHWM then, its peak since it started for this workload (setup "
        "included). CPU is user + system seconds of the daemon process over the same window.",
    ]
    if any(r.server == CONTENTD_PAIR for r in results):
        lines += [
            "",
            "With two contentd daemons on the one store, the clients are dealt across them in "
            "turn; their RSS and CPU are the two daemons' added up.",
        ]
    if backend == S3PG:
        lines += [
            "",
            "The engines' CPU is what SeaweedFS and PostgreSQL (every process of theirs) "
            "spent over the same window, on the same cores: contentd's work that runs "
            "outside its process. containerd's store is its own process.",
        ]
    references = references_table(results)
    if references:
        lines += [
            "",
            references,
            "",
            "The small-blob rows beside their references, measured in the same run: the same "
            "clients against a gRPC server that stores nothing (the cheapest a Python gRPC "
            "server answers), and contentd's store driven by as many threads in one process, "
            "with no gRPC. CPU per blob is the server's (or that process's) CPU seconds, and "
            "the client processes' together, over the window, divided by the blobs stored.",
        ]
        budget = small_target_lines(results)
        if budget:
            lines += ["", " ".join(budget)]
    go_cpu = go_cpu_table(results)
    if go_cpu:
        lines += [
            "",
            go_cpu,
            "",
            "CPU per blob is the daemon's CPU seconds over the Go client's run (from its "
            "release until it has exited), and the Go client process's own over its clients' "
            "window, each divided by the blobs stored.",
        ]
        go_target = go_target_line(results)
        if go_target:
            lines += ["", go_target]
    target = memory_target_line(results)
    if target:
        lines += ["", target]
    return "\n".join(lines)


def write_json(
    path: Path,
    environment: dict[str, str],
    scale: Scale,
    args: argparse.Namespace,
    results: Sequence[Result],
    timings: dict[str, float],
) -> None:
    document = {
        "environment": environment,
        "quick": args.quick,
        "backend": args.backend,
        "scale": dataclasses.asdict(scale),
        "wall_seconds": timings,
        "results": [dataclasses.asdict(result) for result in results],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def servers_for(workload: Workload, servers: Sequence[Server]) -> list[Server]:
    """The servers that run `workload`: two daemons on one store run the small blobs only."""
    return [s for s in servers if s.name != CONTENTD_PAIR or workload.name == "small"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress()
    scale = QUICK if args.quick else FULL_CLUSTER if args.backend == S3PG else FULL
    if args.populate_writers:
        scale = dataclasses.replace(scale, populate_writers=args.populate_writers)
    selected = [w for w in WORKLOADS if args.only is None or w.name in args.only]

    workdir = Path(tempfile.mkdtemp(prefix="contentd-bench-", dir=args.tmpdir))
    environment = describe(workdir)
    results: list[Result] = []
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
        if engines is not None:
            flags = engines.cluster("contentd").flags()
            servers += [
                Contentd(workdir / CONTENTD, flags),
                ContentdPair(workdir / CONTENTD_PAIR, flags),
            ]
        else:
            servers.append(Contentd(workdir / CONTENTD))
        if Containerd.available():
            servers.append(Containerd(workdir / CONTAINERD))
        else:
            progress("containerd is not installed (no `containerd` on PATH): contentd alone")
        for key, value in environment.items():
            progress(f"{key}: {value}")
        for workload in list(selected):
            reason = workload.unavailable()
            if reason is not None:
                progress(f"skipping {workload.name}: {reason}")
                selected.remove(workload)

        data = Data(workdir / "data")
        for workload in selected:
            started = time.monotonic()
            workload.prepare(data, scale)
            timings[f"{workload.name}/prepare"] = time.monotonic() - started
            for server in servers_for(workload, servers):
                started = time.monotonic()
                results += run_workload(workload, server, scale, data, progress, engines)
                timings[f"{workload.name}/{server.name}"] = time.monotonic() - started
            if engines is not None:
                # The references measure the local store and gRPC: the local run has them.
                continue
            started = time.monotonic()
            measured = workload.references(References(workdir, scale, data, progress))
            if measured:
                results += measured
                timings[f"{workload.name}/references"] = time.monotonic() - started
    publish(
        timings,
        environment,
        progress,
        lambda: report(environment, results, args.backend),
        args.json,
        lambda path: write_json(path, environment, scale, args, results, timings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
