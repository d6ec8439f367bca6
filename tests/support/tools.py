"""Skip, or fail, tests whose external tools are missing.

Locally a missing `go`, `containerd` or `ctr` skips the conformance tests with a message
saying what to install. CI sets CONTENTD_REQUIRE_CONFORMANCE=1, and there a missing tool
fails the test instead: the conformance suites must never pass by not running.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_ENV = "CONTENTD_REQUIRE_CONFORMANCE"


def conformance_required() -> bool:
    """Whether missing conformance tools are failures rather than reasons to skip."""
    return os.environ.get(REQUIRE_ENV) == "1"


def missing(reason: str) -> NoReturn:
    """Skip the running test for `reason`, or fail it when conformance is required."""
    if conformance_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires it)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, package: str) -> str:
    """The path of executable `name`; skips or fails the test when it is not on PATH.
    `package` names what provides it, for the message."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not found on PATH (install {package})")
    return path


def require_path(path: Path, what: str) -> Path:
    """`path`, which must exist; skips or fails the test when it does not."""
    if not path.exists():
        missing(f"{what} not found at {path}")
    return path
