"""Image references: ``host[:port]/repository[:tag][@digest]``, as docker and containerd read them.

A reference without a registry host names Docker Hub (``alpine`` is
``docker.io/library/alpine:latest``), as docker's normalisation has it; one
with neither tag nor digest means ``latest``. The first path component is a
host when it holds a ``.`` or a ``:``, is ``localhost``, or has upper case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from contentd.content import validate_digest
from contentd.errdefs import InvalidArgument

#: Docker Hub's name in references, and the host its registry API answers on.
DOCKER_HUB: Final = "docker.io"
DOCKER_HUB_API: Final = "registry-1.docker.io"
_LEGACY_HUB_NAMES: Final = frozenset({"index.docker.io", "registry-1.docker.io"})
_OFFICIAL_PREFIX: Final = "library/"
DEFAULT_TAG: Final = "latest"

# distribution/reference's grammar.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HOST = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_MAX_NAME: Final = 255


@dataclass(frozen=True)
class Reference:
    """An image in a registry: its host, repository, and tag or digest (or both)."""

    host: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def locator(self) -> str:
        """``host/repository``: the repository, wherever it is."""
        return f"{self.host}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host (and port) whose ``/v2/`` API serves the repository."""
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest, else the tag."""
        return self.digest or self.tag

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.host, self.repository, self.tag, digest)

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.locator}{tag}{digest}"


def _invalid(text: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"reference {text!r}: {why}", reason="REFERENCE_INVALID")


def parse_reference(text: str) -> Reference:
    """Parse an image reference, filling in Docker Hub's defaults and ``latest``.

    InvalidArgument (reason REFERENCE_INVALID) if it is not one.
    """
    if not text or text != text.strip():
        raise _invalid(text, "empty or surrounded by spaces")
    name, at, digest = text.partition("@")
    if at:
        try:
            validate_digest(digest)
        except InvalidArgument as exc:
            raise _invalid(text, exc.message) from None
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _invalid(text, f"tag {tag!r} is not valid")
    host, sep, path = name.partition("/")
    if not sep or not _names_host(host):
        host, path = DOCKER_HUB, name
    elif host in _LEGACY_HUB_NAMES:
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    if not _HOST.fullmatch(host):
        raise _invalid(text, f"registry host {host!r} is not valid")
    if len(path) > _MAX_NAME:
        raise _invalid(text, f"repository name longer than {_MAX_NAME} characters")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise _invalid(
                text, f"repository component {component!r} is not valid (lower case, digits, . _ -)"
            )
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(host, path, tag, digest)


def _names_host(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component.lower() != component
    )
