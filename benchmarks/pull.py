"""Benchmark `contentd pull` beside skopeo and `ctr content fetch`: one image, one registry.

    python benchmarks/pull.py [--quick] [--rounds N] [--json FILE] [--tmpdir DIR] [--keep]

One docker-registry 2.8 is started on loopback (filesystem storage under the work
directory), and skopeo pushes two generated images into it: a large one (8 layers of 64
MiB of random bytes, gzip'd; 4 MiB with --quick) and one of many small layers (64 of 256
KiB; 16 of 64 KiB with --quick), where what each blob costs beyond its bytes shows. Then,
round after round, each image is pulled by each tool in turn, one at a time, each into a
fresh destination: `skopeo copy` into a new OCI layout, `ctr content fetch` into a fresh
containerd, `contentd pull` through a fresh `contentd serve` (which fetches the image
itself), `contentd pull --fetch-locally` through one (the client fetches and writes every
blob through the daemon), and `contentd --root DIR pull` with no daemon. Each pull is the
wall time of its command, with the CPU time of the command's process, of the daemon it
goes through and of the registry over the same window; afterwards every blob is read back
from the destination and hashed. The best round of each counts. Progress goes to stderr;
the environment, a Markdown table and the target's verdict go to stdout. Everything
started is stopped and everything written is removed on the way out, however the run ends.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

try:
    from environment import describe, package_version, tool_version
    from measure import Monitor, Usage
    from pull_image import BuiltImage, ImageShape, push_image, write_image
    from pullers import (
        CONTENTD_LOCAL,
        CONTENTD_PULL,
        CONTENTD_ROOT,
        CTR,
        SKOPEO,
        ContentdPuller,
        CtrPuller,
        DaemonlessPuller,
        FetchLocallyPuller,
        Puller,
        SkopeoPuller,
    )
    from registry import Moved, Series, client_timeout
    from registry_servers import DockerRegistry
    from run import Progress, add_rounds_option, add_run_options, publish, serving
    from servers import Containerd, Server
    from support.containerd import log_tail
    from support.docker_registry import DOCKER_REGISTRY
    from support.skopeo import Skopeo
    from workloads import human_bytes

    import contentd.client
except ModuleNotFoundError as missing:
    sys.exit(
        f"benchmarks/pull.py: {missing}; run it with the project's virtualenv "
        "(`make bench-pull`, or `.venv/bin/python benchmarks/pull.py`)"
    )

MIB: Final = 1 << 20
KIB: Final = 1 << 10
MB: Final = 1e6
FULL: Final = (
    ImageShape("large", "bench/img", layers=8, layer_size=64 * MIB),
    ImageShape("many-small", "bench/small", layers=64, layer_size=256 * KIB),
)
QUICK: Final = (
    ImageShape("large", "bench/img", layers=8, layer_size=4 * MIB),
    ImageShape("many-small", "bench/small", layers=16, layer_size=64 * KIB),
)
#: The issue's target: contentd's pull at least this many times the faster of the others.
TARGET_TIMES: Final = 1.0
#: The tools contentd is held to.
PEERS: Final = (SKOPEO, CTR)
#: contentd's ways of pulling.
OURS: Final = (CONTENTD_PULL, CONTENTD_LOCAL, CONTENTD_ROOT)
TOOL_TITLES: Final = {
    SKOPEO: "skopeo copy (to an OCI layout)",
    CTR: "ctr content fetch (containerd)",
    CONTENTD_PULL: "contentd pull (daemon fetches)",
    CONTENTD_LOCAL: "contentd pull --fetch-locally (client fetches, writes via daemon)",
    CONTENTD_ROOT: "contentd --root pull (no daemon)",
}


def compile_contentd() -> None:
    """Compile contentd's modules to bytecode, as `pip install` does.

    An editable install has no bytecode until something writes it, and with
    PYTHONDONTWRITEBYTECODE set nothing does: every `contentd pull` would then
    compile the package from source (0.15-0.2 s of CPU here), a cost no
    installed contentd pays and skopeo's and ctr's binaries have no analogue of.
    """
    package = Path(contentd.client.__file__).parent.parent
    compileall.compile_dir(package, quiet=1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/pull.py",
        description="Benchmark contentd pull beside skopeo copy and ctr content fetch.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small images, to smoke-test the harness"
    )
    add_rounds_option(parser, "pulls of each image by each tool (default: 3); the best is reported")
    add_run_options(parser)
    return parser.parse_args(argv)


@dataclass(frozen=True)
class PullRound(Moved):
    """One pull of one image by one tool, into a fresh destination: `size` is the image's
    blobs' bytes together."""

    #: CPU seconds (user + system) of the command's process, from its exit status.
    client_cpu_seconds: float
    #: The daemon the pull went through (None: there was none).
    daemon: Usage | None
    registry: Usage
    #: Blobs read back from the destination and hashed after the pull.
    checked_blobs: int


#: Every series measured, by case and tool.
Found = dict[tuple[str, str], Series[PullRound]]


class CommandError(RuntimeError):
    """A pull's command failed or ran out of time."""


def run_command(
    command: list[str], environment: dict[str, str] | None, log: Path, timeout: float
) -> tuple[float, float]:
    """Run `command` with its output in `log`: its wall seconds and its CPU seconds."""
    with log.open("wb") as output:
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        # wait4 reports the process's own CPU time; a timer ends a hang.
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        killed = " (killed: out of time)" if process.returncode == -signal.SIGKILL else ""
        raise CommandError(
            f"{' '.join(command)} exited with status {process.returncode}{killed}:\n{log_tail(log)}"
        )
    return seconds, usage.ru_utime + usage.ru_stime


def pull_round(
    puller: Puller, image: BuiltImage, place: Path, log: Path, registry_pid: int
) -> PullRound:
    """Pull `image` with `puller` into a fresh destination under `place`, measured, then
    check it; the destination is stopped and removed whatever happens."""
    try:
        place.mkdir(parents=True)
        destination = puller.prepare(place, image)
        # Bytes an earlier step left dirty would otherwise be written back on this one's time.
        os.sync()
        daemon = None if destination.daemon_pid is None else Monitor(destination.daemon_pid)
        registry = Monitor(registry_pid)
        registry.start()
        if daemon is not None:
            daemon.start()
        try:
            seconds, client_cpu = run_command(
                destination.command, destination.environment, log, client_timeout(image.size)
            )
        finally:
            registry.stop()
            if daemon is not None:
                daemon.stop()
        checked = puller.check(image)
    except Exception:
        logged = puller.log()
        if logged is not None:
            print(f"--- {puller.daemon} log (last lines) ---\n{logged}", file=sys.stderr)
        raise
    finally:
        puller.finish()
        shutil.rmtree(place, ignore_errors=True)
    return PullRound(
        seconds,
        image.size,
        client_cpu,
        None if daemon is None else daemon.usage,
        registry.usage,
        checked,
    )


# Reporting.


def case_title(image: BuiltImage) -> str:
    shape = image.shape
    return (
        f"{shape.case}: {shape.layers} layers of {human_bytes(shape.layer_size)} of random "
        f"bytes, gzip'd, and a config ({image.size / MB:,.1f} MB in {len(image.blobs)} blobs)"
    )


def faster_peer(found: Found, case: str) -> Series[PullRound] | None:
    """Of skopeo and ctr, the one whose best round was the fastest."""
    peers = [found[(case, tool)] for tool in PEERS if (case, tool) in found]
    return min(peers, key=lambda s: s.best.seconds, default=None)


def ratio(found: Found, case: str, tool: str) -> float | None:
    """`tool`'s best rate over the faster peer's."""
    ours, theirs = found.get((case, tool)), faster_peer(found, case)
    if ours is None or theirs is None:
        return None
    return ours.best.rate / theirs.best.rate


def format_cpu(usage: Usage | None) -> str:
    return "n/a" if usage is None else f"{usage.cpu_seconds:,.2f} s"


def results_table(found: Found, images: Sequence[BuiltImage]) -> str:
    lines = [
        "| case | tool | MB/s | seconds (every round) | client CPU | daemon CPU | registry CPU "
        "| ratio (contentd over the faster of skopeo and ctr) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for image in images:
        case = image.shape.case
        for tool, title in TOOL_TITLES.items():
            series = found.get((case, tool))
            if series is None:
                continue
            best = series.best
            rounds = " / ".join(f"{r.seconds:.3f}" for r in series.rounds)
            times = ratio(found, case, tool) if tool in OURS else None
            lines.append(
                f"| {case} | {title} | {best.rate:,.1f} | {best.seconds:.3f} "
                f"({rounds}) | {best.client_cpu_seconds:,.2f} s | {format_cpu(best.daemon)} | "
                f"{format_cpu(best.registry)} | {'' if times is None else f'{times:.2f}'} |"
            )
    return "\n".join(lines)


def target_lines(found: Found, images: Sequence[BuiltImage]) -> list[str]:
    """The issue's target for each image and each way contentd pulls."""
    lines = []
    for image in images:
        case = image.shape.case
        theirs = faster_peer(found, case)
        for tool in OURS:
            times = ratio(found, case, tool)
            if times is None or theirs is None:
                continue
            verdict = "met" if times >= TARGET_TIMES else "NOT met"
            lines.append(
                f"- {case}, {TOOL_TITLES[tool]}: {times:.2f}x {theirs.server} (the faster): "
                f"at least {TARGET_TIMES:g}x the faster of them: {verdict}"
            )
    return lines


def report(
    environment: dict[str, str],
    found: Found,
    images: Sequence[BuiltImage],
    rounds: int,
) -> str:
    lines = [f"- {key}: {value}" for key, value in environment.items()]
    lines += ["", "Images, in docker-registry 2.8 on loopback:"]
    lines += [f"- {case_title(image)}" for image in images]
    lines += [
        "",
        results_table(found, images),
        "",
        f"Each row is the best of {rounds} round(s) (every round's seconds in parentheses), "
        "each into a fresh destination; MB = 10^6 bytes of the image's blobs, manifest and "
        "config included. Client CPU is the command's process (user + system, from its exit); "
        "daemon CPU is containerd's or contentd serve's and registry CPU docker-registry's, "
        "over the same window. The ratio is the row's rate over the faster of skopeo's and "
        "ctr's, above 1 contentd is faster. Every destination was read back and hashed "
        "after each pull.",
        "",
        "Target (issue 23):",
        *target_lines(found, images),
    ]
    return "\n".join(lines)


def write_json(
    path: Path,
    environment: dict[str, str],
    args: argparse.Namespace,
    images: Sequence[BuiltImage],
    found: Found,
    timings: dict[str, float],
) -> None:
    results = []
    for series in found.values():
        entry = dataclasses.asdict(series)
        entry["best_seconds"] = series.best.seconds
        entry["best_mb_per_s"] = series.best.rate
        entry["ratio"] = ratio(found, series.case, series.server) if series.server in OURS else None
        results.append(entry)
    document = {
        "environment": environment,
        "quick": args.quick,
        "rounds": args.rounds,
        "images": [
            dataclasses.asdict(image.shape) | {"size": image.size, "blobs": len(image.blobs)}
            for image in images
        ],
        "target_times": TARGET_TIMES,
        "wall_seconds": timings,
        "results": results,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def environment_lines(workdir: Path) -> dict[str, str]:
    """The main harness's lines, with the registry, the tools and contentd's HTTP client."""
    lines = describe(workdir)
    lines["aiohttp"] = package_version("aiohttp")
    lines["ctr"] = tool_version("ctr", "--version")
    lines["skopeo"] = tool_version(SKOPEO, "--version")
    lines[DOCKER_REGISTRY] = DockerRegistry.version()
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress()
    for needed, what in ((DOCKER_REGISTRY, "the registry"), (SKOPEO, "the pushes")):
        if shutil.which(needed) is None:
            progress(f"{needed} is not installed: it is needed for {what}")
            return 1

    compile_contentd()
    workdir = Path(tempfile.mkdtemp(prefix="contentd-pull-bench-", dir=args.tmpdir))
    environment = environment_lines(workdir)
    found: Found = {}
    images: list[BuiltImage] = []
    timings: dict[str, float] = {}
    servers: list[Server] = []
    with serving(servers, workdir, keep=args.keep, progress=progress):
        for key, value in environment.items():
            progress(f"{key}: {value}")
        registry = DockerRegistry(workdir / DOCKER_REGISTRY)
        servers.append(registry)
        running = registry.start()
        host = urlsplit(running.address).netloc
        home = workdir / "skopeo-home"
        for shape in FULL if not args.quick else QUICK:
            started = time.monotonic()
            layout = workdir / "layouts" / shape.case
            image = write_image(layout, shape)
            progress(f"pushing {case_title(image)} to {host}")
            push_image(Skopeo(home), layout, image, host)
            shutil.rmtree(layout)
            images.append(image)
            timings[f"{shape.case}/prepare"] = time.monotonic() - started

        pullers: list[Puller] = [SkopeoPuller(host, home)]
        if Containerd.available() and shutil.which(CTR) is not None:
            pullers.append(CtrPuller(host))
        else:
            progress("containerd or ctr is not installed: no ctr row")
        pullers += [ContentdPuller(host), FetchLocallyPuller(host), DaemonlessPuller(host)]
        logs = workdir / "logs"
        logs.mkdir()
        for number in range(1, args.rounds + 1):
            for image in images:
                case = image.shape.case
                for puller in pullers:
                    slug = f"{number}-{case}-{puller.name.replace(' ', '')}"
                    started = time.monotonic()
                    done = pull_round(
                        puller, image, workdir / "rounds" / slug, logs / f"{slug}.log", running.pid
                    )
                    timings[slug] = time.monotonic() - started
                    found.setdefault((case, puller.name), Series(case, puller.name))
                    found[(case, puller.name)].rounds.append(done)
                    progress(
                        f"{case}: {puller.name} round {number}: {done.rate:,.1f} MB/s "
                        f"({done.seconds:.3f} s, client CPU {done.client_cpu_seconds:.2f} s, "
                        f"daemon CPU {format_cpu(done.daemon)}, "
                        f"{done.checked_blobs} blobs checked)"
                    )
    publish(
        timings,
        environment,
        progress,
        lambda: report(environment, found, images, args.rounds),
        args.json,
        lambda path: write_json(path, environment, args, images, found, timings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
