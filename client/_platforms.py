"""Platforms (``os/arch[/variant]``) and how an index's manifest is chosen for one.

Written after containerd's `platforms` package: the same normalisation
(``x86_64`` is ``amd64``, ``aarch64`` is ``arm64``, ``arm`` is ``arm/v7``),
the same parsing of specifiers, and `Only`'s order of preference: a machine
also runs what its older variants run (``amd64`` runs ``386``, ``arm64``
runs ``arm/v8`` down to ``arm/v5``).
"""

from __future__ import annotations

import platform as _host
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from contentd.errdefs import InvalidArgument

_COMPONENT = re.compile(r"[A-Za-z0-9_-]+")
_KNOWN_OS: Final = frozenset(
    {
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "hurd",
        "illumos",
        "ios",
        "js",
        "linux",
        "nacl",
        "netbsd",
        "openbsd",
        "plan9",
        "solaris",
        "windows",
        "zos",
    }
)
_KNOWN_ARCH: Final = frozenset(
    {
        "386",
        "amd64",
        "amd64p32",
        "arm",
        "armbe",
        "arm64",
        "arm64be",
        "ppc64",
        "ppc64le",
        "loong64",
        "mips",
        "mipsle",
        "mips64",
        "mips64le",
        "mips64p32",
        "mips64p32le",
        "ppc",
        "riscv",
        "riscv64",
        "s390",
        "s390x",
        "sparc",
        "sparc64",
        "wasm",
    }
)


@dataclass(frozen=True)
class Platform:
    """An operating system, a CPU architecture and its variant, normalised."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    @classmethod
    def from_descriptor(cls, described: Mapping[str, Any]) -> Platform:
        """The platform an index's descriptor gives (``os``, ``architecture``, ``variant``)."""
        return normalize(
            str(described.get("os", "")),
            str(described.get("architecture", "")),
            str(described.get("variant", "") or ""),
        )


def _normalize_os(name: str) -> str:
    if not name:
        return _host_os()
    name = name.lower()
    return "darwin" if name == "macos" else name


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


def normalize(os_name: str, architecture: str, variant: str = "") -> Platform:
    """A platform in containerd's canonical form."""
    arch, variant = _normalize_arch(architecture, variant)
    return Platform(_normalize_os(os_name), arch, variant)


def _host_os() -> str:
    return "darwin" if sys.platform == "darwin" else sys.platform.rstrip("0123456789")


_MACHINES: Final = {"i686": "386", "i586": "386", "armv7l": "arm", "armv6l": "arm"}


def default_platform() -> Platform:
    """The running machine's platform, as containerd's ``platforms.DefaultSpec`` gives it."""
    machine = _host.machine().lower()
    variant = ""
    if machine.startswith("armv"):
        variant = "v" + machine[4]
    return normalize(_host_os(), _MACHINES.get(machine, machine), variant)


def parse_platform(specifier: str) -> Platform:
    """Parse ``os``, ``arch``, ``os/arch`` or ``os/arch/variant`` as containerd does.

    A lone component is an OS if it is a known one (the architecture is then
    this machine's), else an architecture (the OS this machine's).
    """
    parts = specifier.split("/")
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            raise InvalidArgument(
                f"platform {specifier!r}: {part!r} is not a valid component", reason="PLATFORM"
            )
    if len(parts) == 1:
        os_name = _normalize_os(parts[0])
        if os_name in _KNOWN_OS:
            here = default_platform()
            return Platform(os_name, here.architecture, here.variant)
        arch, variant = _normalize_arch(parts[0], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        if arch in _KNOWN_ARCH:
            return Platform(_host_os(), arch, variant)
        raise InvalidArgument(
            f"platform {specifier!r}: unknown operating system or architecture", reason="PLATFORM"
        )
    if len(parts) == 2:
        arch, variant = _normalize_arch(parts[1], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        return Platform(_normalize_os(parts[0]), arch, variant)
    if len(parts) == 3:
        arch, variant = _normalize_arch(parts[1], parts[2])
        if arch == "arm64" and not variant:
            variant = "v8"
        return Platform(_normalize_os(parts[0]), arch, variant)
    raise InvalidArgument(f"platform {specifier!r}: expected os/arch[/variant]", reason="PLATFORM")


def _vector(wanted: Platform) -> list[Platform]:
    """What a machine of `wanted`'s platform runs, best first (containerd's platformVector)."""
    vector = [wanted]
    version = wanted.variant.removeprefix("v")
    if wanted.architecture == "amd64":
        if version.isdigit() and int(version) > 1:
            vector += [
                Platform(wanted.os, "amd64", f"v{n}") for n in range(int(version) - 1, 0, -1)
            ]
        vector.append(Platform(wanted.os, "386"))
    elif wanted.architecture == "arm":
        if version.isdigit() and int(version) > 5:
            vector += [Platform(wanted.os, "arm", f"v{n}") for n in range(int(version) - 1, 4, -1)]
    elif wanted.architecture == "arm64":
        vector += _vector(Platform(wanted.os, "arm", wanted.variant or "v8"))
    return vector


class PlatformMatcher:
    """Which platforms a pull for `wanted` takes, best first (containerd's ``platforms.Only``)."""

    def __init__(self, wanted: Platform) -> None:
        self.wanted = wanted
        normalized = normalize(wanted.os, wanted.architecture, wanted.variant)
        self._order = [normalize(p.os, p.architecture, p.variant) for p in _vector(normalized)]

    def rank(self, candidate: Platform) -> int | None:
        """How good a match `candidate` is (0 best), or None if it does not run here."""
        found = normalize(candidate.os, candidate.architecture, candidate.variant)
        for position, accepted in enumerate(self._order):
            if accepted == found:
                return position
        return None
