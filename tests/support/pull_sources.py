"""The images the pull tests (contentd pull, the pull-through mirror) pull, and the
registries holding them.

Two OCI layouts built by tests/support/oci_layout.py: APP:v1, one image, and MULTI:v1, a
two-platform index; `fill` pushes both into a registry with skopeo, and `skopeo_copy`
copies a reference back out into an OCI layout, for comparing with what a pull stored.
The fixtures building on these are in tests/conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from support.oci_layout import Layout, read_blobs
from support.skopeo import Skopeo

APP: Final = "team/app"
MULTI: Final = "team/multi"


@dataclass(frozen=True)
class Source:
    """A registry holding APP:v1 (one image) and MULTI:v1 (a two-platform index)."""

    kind: str
    host: str

    def ref(self, repository: str, tag: str = "v1") -> str:
        return f"{self.host}/{repository}:{tag}"


def fill(skopeo: Skopeo, host: str, image_layout: Layout, index_layout: Layout) -> None:
    """Push APP:v1 and MULTI:v1 to the registry at `host`."""
    skopeo.push(image_layout.reference("v1"), f"docker://{host}/{APP}:v1")
    skopeo.push(index_layout.reference("v1"), f"docker://{host}/{MULTI}:v1", "--all")


def skopeo_copy(skopeo: Skopeo, reference: str, out: Path, *flags: str) -> dict[str, bytes]:
    """Copy the registry's `reference` into an OCI layout at `out`; its blobs by digest."""
    skopeo.pull(f"docker://{reference}", f"oci:{out}:v1", *flags)
    return read_blobs(out)
