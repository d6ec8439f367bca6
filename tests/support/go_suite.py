"""Build and run containerd's content testsuite against a server address.

The suite is `tests/conformance/content_suite_test.go`, built in GOPATH mode against the
Debian package golang-github-containerd-containerd-dev (containerd's sources and all their
dependencies under /usr/share/gocode), so it needs no network and no go.mod. `build_suite`
compiles it once into a test binary; `run_suite` runs that binary against any server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

GOCODE = Path("/usr/share/gocode")
CONTAINERD_SOURCES = GOCODE / "src" / "github.com" / "containerd" / "containerd"
TESTSUITE_SOURCES = CONTAINERD_SOURCES / "content" / "testsuite"
SUITE_SOURCE = Path(__file__).resolve().parent.parent / "conformance" / "content_suite_test.go"
# GOPATH mode builds only packages under GOPATH/src; the suite is copied there.
IMPORT_PATH = "contentd.test/conformance"

# containerd 1.6's ContentSuite and ContentCrossNSSharedSuite, as `go test -v` names them.
EXPECTED_SUBTESTS = (
    "TestContentSuite/Writer",
    "TestContentSuite/UpdateStatus",
    "TestContentSuite/CommitExists",
    "TestContentSuite/Resume",
    "TestContentSuite/ResumeTruncate",
    "TestContentSuite/ResumeDiscard",
    "TestContentSuite/ResumeCopy",
    "TestContentSuite/ResumeCopySeeker",
    "TestContentSuite/ResumeCopyReaderAt",
    "TestContentSuite/SmallBlob",
    "TestContentSuite/Labels",
    "TestContentSuite/CommitErrorState",
    "TestContentCrossNSSharedSuite/CrossNamespaceAppend",
    "TestContentCrossNSSharedSuite/CrossNamespaceShare",
)

BUILD_TIMEOUT = 240.0
# Inside pytest's 300 s per test, with room for the server to start and stop.
RUN_TIMEOUT = 240.0

_RESULT_LINE = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+) \(")


class SuiteBuildError(RuntimeError):
    """`go test -c` failed; the message carries the compiler's output."""


def go_cache_dir() -> Path:
    """Where compiled packages persist between runs: $GOCACHE when set, else a cache of our
    own under $XDG_CACHE_HOME or ~/.cache, else under the system temporary directory."""
    if os.environ.get("GOCACHE"):
        return Path(os.environ["GOCACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "contentd-go-build"
    if os.environ.get("HOME"):
        return Path(os.environ["HOME"]) / ".cache" / "contentd-go-build"
    return Path(tempfile.gettempdir()) / "contentd-go-build"


def build_environment(gopath: Path) -> dict[str, str]:
    """The environment for building in GOPATH mode, offline, whatever the caller's Go
    settings."""
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{GOCODE}",
        "GOCACHE": str(go_cache_dir()),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        # Nothing in the suite needs cgo, and CI installs Go without a C compiler.
        "CGO_ENABLED": "0",
    }


def build_suite(workdir: Path, go: str = "go") -> Path:
    """Compile the suite into a test binary under `workdir`; its path."""
    package = workdir / "gopath" / "src" / IMPORT_PATH
    package.mkdir(parents=True, exist_ok=True)
    shutil.copy2(SUITE_SOURCE, package / SUITE_SOURCE.name)
    binary = workdir / "content-suite.test"
    result = subprocess.run(
        [go, "test", "-c", "-o", str(binary), "."],
        check=False,
        cwd=package,
        env=build_environment(workdir / "gopath"),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if result.returncode != 0:
        raise SuiteBuildError(
            f"go test -c failed with status {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return binary


def parse_results(output: str) -> dict[str, str]:
    """Each subtest's outcome (PASS, FAIL or SKIP) from `go test -v` output, by its full
    name (`TestContentSuite/Writer`). Top-level tests are left out."""
    results = {}
    for line in output.splitlines():
        match = _RESULT_LINE.match(line)
        if match and "/" in match[2]:
            results[match[2]] = match[1]
    return results


@dataclass(frozen=True)
class SuiteRun:
    """One run of the suite: the binary's exit status and its verbose output."""

    returncode: int
    output: str

    @property
    def results(self) -> dict[str, str]:
        """Each subtest's outcome, by full name."""
        return parse_results(self.output)


def run_suite(binary: Path, address: str, *, leases: bool) -> SuiteRun:
    """Run the suite binary against the server at `address`. With `leases`, every test
    namespace holds a lease through the server's Leases API (a real containerd collects
    unleased content mid-test); a server with only the Content API must run without."""
    env = {
        **os.environ,
        "CONTENTD_ADDRESS": address,
        "CONTENTD_SUITE_LEASES": "1" if leases else "0",
    }
    result = subprocess.run(
        [str(binary), "-test.v", "-test.count=1", f"-test.timeout={RUN_TIMEOUT - 10:g}s"],
        check=False,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    return SuiteRun(result.returncode, result.stdout)
