"""Generated modules are fresh, our .proto is containerd's on the wire, read as protobuf does."""

from __future__ import annotations

import importlib.util
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, timestamp_pb2
from grpc_tools import protoc
from hypothesis import given
from hypothesis import strategies as st

from contentd.content import ContentRecord, Info, Status, datetime_from_ns
from contentd.proto import content_pb2, content_pb2_grpc
from contentd.proto.wire import (
    add_record,
    datetime_from_timestamp,
    info_from_message,
    info_message,
    status_from_message,
    status_message,
)

REPO = Path(__file__).resolve().parent.parent
CONTAINERD_SOURCES = Path("/usr/share/gocode/src/github.com/containerd/containerd")
#: Our .proto files, by the path of containerd's that each must match on the wire.
PROTOS = {
    "containerd/types/descriptor.proto": "api/types/descriptor.proto",
    "containerd/services/content/v1/content.proto": "api/services/content/v1/content.proto",
    "containerd/services/leases/v1/leases.proto": "api/services/leases/v1/leases.proto",
    "containerd/services/images/v1/images.proto": "api/services/images/v1/images.proto",
    "containerd/services/namespaces/v1/namespace.proto": (
        "api/services/namespaces/v1/namespace.proto"
    ),
}
GENERATED = {
    f"{name}{suffix}"
    for name in ("content", "descriptor", "leases", "images", "namespace", "gc", "transfer")
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
}


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_modules_match_the_generator(tmp_path: Path) -> None:
    generator = _load_generator()
    written = generator.generate(tmp_path)  # type: ignore[attr-defined]
    assert {p.name for p in written} == GENERATED
    for fresh in written:
        committed = REPO / "proto" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"proto/{fresh.name} is stale: run python proto/generate.py"
        )


def test_generated_modules_live_inside_the_contentd_namespace() -> None:
    assert content_pb2.DESCRIPTOR.package == "containerd.services.content.v1"
    assert content_pb2_grpc.ContentStub is not None
    assert importlib.util.find_spec("containerd") is None


def _descriptor(include: Path, source: str, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / (source.replace("/", "_") + ".pb")
    include_std = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{include}",
            f"-I{include_std}",
            f"--descriptor_set_out={out}",
            str(include / source),
        ]
    )
    assert status == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files.file[-1]


def _wire_shape(file: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    messages = {
        m.name: [(f.name, f.number, f.type, f.label, f.type_name) for f in m.field]
        + [("nested", n.name, [(f.name, f.number, f.type) for f in n.field]) for n in m.nested_type]
        for m in file.message_type
    }
    enums = {e.name: [(v.name, v.number) for v in e.value] for e in file.enum_type}
    services = {
        s.name: [
            (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in s.method
        ]
        for s in file.service
    }
    return {"package": file.package, "messages": messages, "enums": enums, "services": services}


def _without_gogoproto(text: str) -> str:
    """containerd's .proto without gogoproto, which only shapes Go code, and with imports
    of its own files where ours keep them."""
    text = re.sub(r'import weak "gogoproto/gogo.proto";', "", text)
    text = re.sub(r"\s*\[\(gogoproto\.[^\]]*\]", "", text)
    text = re.sub(r"\s*option \(gogoproto\.[^;]*;", "", text)
    return text.replace('"github.com/containerd/containerd/api/types/', '"containerd/types/')


@pytest.mark.skipif(
    not CONTAINERD_SOURCES.exists() and not os.environ.get("CONTENTD_REQUIRE_CONFORMANCE"),
    reason="containerd's sources are missing (Debian: golang-github-containerd-containerd-dev)",
)
@pytest.mark.parametrize("proto", sorted(PROTOS))
def test_proto_is_wire_identical_to_containerds(proto: str, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    for ours_path, their_path in PROTOS.items():
        (theirs / Path(ours_path).parent).mkdir(parents=True, exist_ok=True)
        text = (CONTAINERD_SOURCES / their_path).read_text()
        (theirs / ours_path).write_text(_without_gogoproto(text))
    ours = _wire_shape(_descriptor(REPO / "proto", proto, tmp_path))
    reference = _wire_shape(_descriptor(theirs, proto, tmp_path))
    assert ours == reference


@given(
    seconds=st.integers(-62_135_596_800, 253_402_300_799),  # 0001-01-01 to 9999-12-31
    nanos=st.integers(0, 999_999_999),
)
def test_timestamps_are_read_as_protobuf_reads_them(seconds: int, nanos: int) -> None:
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    read = datetime_from_timestamp(stamp)
    assert read == stamp.ToDatetime(tzinfo=UTC)
    assert read.tzinfo is UTC


# Times the store hands out: UTC, to the microsecond, from 1970 (nanoseconds since the epoch).
nanoseconds = st.integers(0, 253_402_300_799 * 1_000_000_000)
moments = nanoseconds.map(datetime_from_ns)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
labels = st.dictionaries(texts, texts, max_size=4)


@given(
    digest=texts,
    size=st.integers(0, 1 << 62),
    created=moments,
    updated=moments,
    labels=labels,
)
def test_an_info_crosses_the_wire_unchanged(
    digest: str, size: int, created: datetime, updated: datetime, labels: dict[str, str]
) -> None:
    info = Info(digest, size, created, updated, labels)
    assert info_from_message(info_message(info)) == info


@given(
    ref=texts,
    offset=st.integers(0, 1 << 62),
    total=st.integers(0, 1 << 62),
    expected=texts,
    started=moments,
    updated=moments,
)
def test_a_status_crosses_the_wire_unchanged(
    ref: str, offset: int, total: int, expected: str, started: datetime, updated: datetime
) -> None:
    status = Status(ref, offset, total, expected, started, updated)
    assert status_from_message(status_message(status)) == status


@given(created=nanoseconds, updated=nanoseconds, labels=labels)
def test_a_listed_record_reads_as_the_info_of_that_blob(
    created: int, updated: int, labels: dict[str, str]
) -> None:
    record = ContentRecord("sha256:" + "ab" * 32, 7, created, updated, labels)
    listed = content_pb2.ListContentResponse()
    size = add_record(listed.info, record)
    info = Info(record.digest, 7, datetime_from_ns(created), datetime_from_ns(updated), labels)
    assert listed.info[0] == info_message(info)
    assert size == listed.info[0].ByteSize()
