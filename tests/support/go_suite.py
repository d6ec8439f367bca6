"""Build and run the Go conformance suites against a server address.

The suites are the `*_suite_test.go` files in tests/conformance, one Go package: containerd's
content testsuite (content_suite_test.go) and the ports of containerd's metadata tests
(metadata_suite_test.go). They build in GOPATH mode against the Debian package
golang-github-containerd-containerd-dev (containerd's sources and all their dependencies
under /usr/share/gocode), so they need no network and no go.mod. `build_suite` compiles the
package once into a test binary; `run_suite` runs one suite of it against any server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GOCODE = Path("/usr/share/gocode")
CONTAINERD_SOURCES = GOCODE / "src" / "github.com" / "containerd" / "containerd"
TESTSUITE_SOURCES = CONTAINERD_SOURCES / "content" / "testsuite"
SUITE_DIR = Path(__file__).resolve().parent.parent / "conformance"
# GOPATH mode builds only packages under GOPATH/src; the suites are copied there.
IMPORT_PATH = "contentd.test/conformance"
# Where the server listens, for every suite.
ADDRESS_ENV = "CONTENTD_ADDRESS"
# The content suite holds a lease per test namespace when this is "1" (needs the Leases API).
CONTENT_LEASES_ENV = "CONTENTD_SUITE_LEASES"


@dataclass(frozen=True)
class GoSuite:
    """One suite of the test binary: its top-level tests, each with the subtests it must
    report (by their names under it).

    A run passes only if it reports exactly these tests and subtests, every one passed, so a
    test that silently disappears fails the run.
    """

    tests: Mapping[str, tuple[str, ...]]

    @property
    def run_pattern(self) -> str:
        """The `-test.run` expression that selects this suite's top-level tests only."""
        return "^(" + "|".join(self.tests) + ")$"

    def expected_results(self) -> dict[str, str]:
        """Every test and subtest by its full name (`TestLeasesList/ID`), each PASS."""
        names = []
        for test, subtests in self.tests.items():
            names.append(test)
            names.extend(f"{test}/{subtest}" for subtest in subtests)
        return dict.fromkeys(names, "PASS")


# containerd 1.6's ContentSuite and ContentCrossNSSharedSuite, as `go test -v` names them.
CONTENT_SUITE = GoSuite(
    {
        "TestContentSuite": (
            "Writer",
            "UpdateStatus",
            "CommitExists",
            "Resume",
            "ResumeTruncate",
            "ResumeDiscard",
            "ResumeCopy",
            "ResumeCopySeeker",
            "ResumeCopyReaderAt",
            "SmallBlob",
            "Labels",
            "CommitErrorState",
        ),
        "TestContentCrossNSSharedSuite": ("CrossNamespaceAppend", "CrossNamespaceShare"),
    }
)

# The ports of containerd 1.6's metadata tests (metadata/leases_test.go, content_test.go,
# images_test.go, namespaces_test.go, db_test.go), with the cases added to their tables.
METADATA_SUITE = GoSuite(
    {
        "TestLeases": (),
        "TestLeasesGeneratedID": (),
        "TestLeasesList": (
            "All",
            "ID",
            "IDx2",
            "Label1",
            "Label1value1",
            "Label1value2",
            "Label2",
            "Label3",
            "BadFilter",
        ),
        "TestLeaseResource": (
            "Content",
            "Ingest",
            "IngestAgain",
            "Lease",
            "Container",
            "Image",
            "SnapshotsWithoutSnapshotter",
            "Snapshot",
            "SnapshotsNestedType",
            "MissingLease",
            "ContentNotADigest",
            "ContentSubtype",
            "BadTypeOnMissingLease",
            "ListResources",
            "DeleteResource",
            "ListResourcesOfMissingLease",
        ),
        "TestContentLeased": (
            "WriterUnderMissingLease",
            "WriterOnExistingContentUnderMissingLease",
            "DeleteUnderLease",
            "DeleteUnderMissingLease",
        ),
        "TestIngestLeased": ("AbortUnderMissingLease",),
        "TestImagesList": (
            "FullSet",
            "FullSetFiltered",
            "Even",
            "Odd",
            "ByName",
            "ByNameLabelEven",
            "ByMediaType",
            "ByAnnotation",
            "ByTargetDigest",
            "BadFilter",
        ),
        "TestImagesCreateUpdateDelete": (
            "Touch",
            "NoTarget",
            "ReplaceLabels",
            "ReplaceLabelsFieldPath",
            "ReplaceLabelsAnnotationsFieldPath",
            "ReplaceLabel",
            "ReplaceAnnotation",
            "ReplaceTarget",
            "EmptySize",
            "EmptySizeOnCreate",
            "EmptyMediaType",
            "EmptyMediaTypeOnCreate",
            "TryUpdateNameFail",
            "RemoveLabel",
            "UpdateNameFieldPath",
            "UpdateTargetDigestFieldPath",
            "CreateBadDigest",
        ),
        "TestImagesErrors": (
            "CreateExisting",
            "CreateWithoutName",
            "GetMissing",
            "UpdateMissing",
            "UpdateWithoutName",
            "UpdateMissingWithBadFieldPath",
            "DeleteMissing",
        ),
        "TestNamespaces": (
            "GetUnknown",
            "ConnectWithDefaultNamespace",
            "CreateListLabels",
            "CreateExisting",
            "CreateInvalidName",
            "SetLabel",
            "SetLabelCreatesNamespace",
            "WriteCreatesNamespace",
            "DeleteEmpty",
            "DeleteUnknown",
            "DeleteWithImage",
            "DeleteWithContent",
            "DeleteWithLeaseAndIngest",
        ),
        "TestMetadataCollector": (
            "content/unreferenced",
            "content/image-target",
            "content/image-label-ref",
            "content/gc-root",
            "content/gc-root-child",
            "content/leased",
            "content/leased-child",
            "content/leased-grandchild",
            "content/slash-ref",
            "content/prefix-only-ref",
            "content/flat-leased",
            "content/flat-child",
            "content/expired-leased",
            "content/unexpired-leased",
            "lease/lease-1",
            "lease/lease-2",
            "lease/expired",
            "lease/unexpired",
        ),
        "TestSynchronousDelete": (
            "Lease",
            "Image",
            "ImageSharingItsTarget",
            "ImageWhoseTargetIsLeased",
        ),
        "TestCollectionKeepsBytesRecordedInAnotherNamespace": (),
    }
)

BUILD_TIMEOUT = 240.0
# Inside pytest's 300 s per test, with room for the server to start and stop.
RUN_TIMEOUT = 240.0

_RESULT_LINE = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+) \(")


class SuiteBuildError(RuntimeError):
    """A Go build failed; the message carries the compiler's output."""


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


def suite_sources() -> list[Path]:
    """The Go files of the suites' package."""
    return sorted(SUITE_DIR.glob("*_suite_test.go"))


def go_build(
    workdir: Path, import_path: str, sources: Iterable[Path], command: Sequence[str], binary: Path
) -> Path:
    """Copy `sources` into a GOPATH under `workdir` as package `import_path` and run the
    go `command` there (its output flag naming `binary`); `binary`. Raises
    SuiteBuildError with the compiler's output when it fails."""
    package = workdir / "gopath" / "src" / import_path
    package.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copy2(source, package / source.name)
    result = subprocess.run(
        [*command, "-o", str(binary), "."],
        check=False,
        cwd=package,
        env=build_environment(workdir / "gopath"),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if result.returncode != 0:
        raise SuiteBuildError(
            f"{' '.join(command)} failed with status {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return binary


def build_suite(workdir: Path, go: str = "go") -> Path:
    """Compile the suites into one test binary under `workdir`; its path."""
    return go_build(
        workdir,
        IMPORT_PATH,
        suite_sources(),
        [go, "test", "-c"],
        workdir / "conformance-suites.test",
    )


def parse_results(output: str) -> dict[str, str]:
    """Each test's and subtest's outcome (PASS, FAIL or SKIP) from `go test -v` output, by
    its full name (`TestContentSuite`, `TestContentSuite/Writer`)."""
    results = {}
    for line in output.splitlines():
        match = _RESULT_LINE.match(line)
        if match:
            results[match[2]] = match[1]
    return results


@dataclass(frozen=True)
class SuiteServer:
    """A server the suites run against: where it listens, and whether it collects garbage on
    a schedule of its own (the content suite must then hold leases, or the server may
    collect its content mid-test)."""

    address: str
    collects: bool


@dataclass(frozen=True)
class SuiteRun:
    """One run of a suite: the binary's exit status and its verbose output."""

    returncode: int
    output: str

    @property
    def results(self) -> dict[str, str]:
        """Each test's and subtest's outcome, by full name."""
        return parse_results(self.output)


def run_suite(
    binary: Path, suite: GoSuite, address: str, env: Mapping[str, str] | None = None
) -> SuiteRun:
    """Run `suite`'s tests of the binary against the server at `address`, with `env` added
    to the environment (the content suite reads CONTENT_LEASES_ENV)."""
    result = subprocess.run(
        [
            str(binary),
            "-test.v",
            "-test.count=1",
            f"-test.run={suite.run_pattern}",
            f"-test.timeout={RUN_TIMEOUT - 10:g}s",
        ],
        check=False,
        env={**os.environ, **(env or {}), ADDRESS_ENV: address},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    return SuiteRun(result.returncode, result.stdout)
