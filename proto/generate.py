"""Regenerate the Python modules for containerd's content API.

Run ``python proto/generate.py`` after editing a .proto file. The generated
modules are committed next to this script; tests/test_proto.py fails when they
no longer match what this script produces.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
SOURCES = (
    "containerd/types/descriptor.proto",
    "containerd/services/content/v1/content.proto",
    "containerd/services/leases/v1/leases.proto",
    "containerd/services/images/v1/images.proto",
    "containerd/services/namespaces/v1/namespace.proto",
    "contentd/services/gc/v1/gc.proto",
    "contentd/services/transfer/v1/transfer.proto",
)

# grpc_tools writes `from containerd.services.content.v1 import content_pb2`;
# the modules live inside the contentd namespace instead, side by side, so
# they import each other relatively.
_ABSOLUTE_IMPORT = re.compile(
    r"^from (?:containerd|contentd)(?:\.\w+)+ import (\w+) as", flags=re.MULTILINE
)


def generate(into: Path) -> list[Path]:
    """Write the generated modules into `into` and return their paths."""
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"-I{include}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(str(HERE / source) for source in SOURCES),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for produced in sorted(Path(scratch).rglob("*.py*")):
            text = _ABSOLUTE_IMPORT.sub(r"from . import \1 as", produced.read_text())
            target = into / produced.name
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(HERE):
        print(path.relative_to(HERE), file=sys.stderr)
