"""Where a benchmark ran: the commit, the machine and the software, as printable lines."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import grpc
from servers import REPO


def _run(*command: str, cwd: Path = REPO) -> str | None:
    """A command's output less trailing whitespace, or None when it fails or is missing."""
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.rstrip()


def commit() -> str:
    """The short commit, and whether the tree differs from it outside benchmarks/: which
    paths, and a hash of the diff so two runs can tell whether they measured the same code."""
    head = _run("git", "rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown (not a git checkout)"
    changed = _run("git", "status", "--porcelain", "--untracked-files=all") or ""
    outside = sorted(
        line[3:] for line in changed.splitlines() if not line[3:].startswith("benchmarks/")
    )
    if not outside:
        return f"{head} (clean outside benchmarks/)"
    diff = _run("git", "diff", "HEAD", "--", ".", ":(exclude)benchmarks") or ""
    digest = hashlib.sha256(diff.encode()).hexdigest()[:12]
    return f"{head} + uncommitted changes to {', '.join(outside)} (diff sha256 {digest})"


def cpu_model() -> str:
    """The processor's model name, as /proc/cpuinfo has it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path`, from the longest mount point above it."""
    path = path.resolve()
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        # Mount points escape spaces and other bytes as octal (\040).
        point = fields[1].encode().decode("unicode_escape")
        inside = point == "/" or path == Path(point) or Path(point) in path.parents
        if inside and len(point) >= len(best):
            best, kind = point, f"{fields[2]}{_journal(fields)} ({fields[0]} on {point})"
    return kind


def _journal(mount: list[str]) -> str:
    """Says so of an ext4 mount without a journal, where deleting many files slows creating them."""
    if mount[2] != "ext4" or not mount[0].startswith("/dev/"):
        return ""
    try:
        task = Path(f"/sys/fs/ext4/{Path(mount[0]).resolve().name}/journal_task").read_text()
    except OSError:
        return ""
    return ", without a journal" if task.strip() == "<none>" else ""


def tool_version(*command: str) -> str:
    """The first line a version command (`skopeo --version`) prints, or that the tool is
    missing."""
    if shutil.which(command[0]) is None:
        return "not installed"
    output = _run(*command)
    return output.splitlines()[0] if output else "unknown"


def containerd_version() -> str:
    """What `containerd --version` says, or that it is missing."""
    return tool_version("containerd", "--version")


def package_version(name: str) -> str:
    """The installed version of the Python distribution `name`, or that it is missing."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: whether something else was using the cores."""
    return " / ".join(f"{load:.2f}" for load in os.getloadavg())


def describe(workdir: Path) -> dict[str, str]:
    """The environment lines printed with every result."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "commit": commit(),
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "memory": f"{memory / (1 << 30):.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "grpcio": grpc.__version__,
        "containerd": containerd_version(),
        "filesystem (working directory)": filesystem(Path.cwd()),
        "filesystem (server roots)": filesystem(workdir),
        "load average at start (1/5/15 min)": load_average(),
    }
