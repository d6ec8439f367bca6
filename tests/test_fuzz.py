"""Hostile input on every RPC of the Content API, against one real `contentd serve` process.

Hypothesis sends each RPC random and adversarial fields over raw gRPC (and bytes that are
no protobuf message at all), on one daemon that every example shares. After each example:

- every answer was a success or a deliberate status code: never UNKNOWN or INTERNAL (an
  unclassified failure), nor a deadline the daemon let pass;
- no error text gives away where the daemon keeps its files, or a traceback;
- the daemon still answers its health check;
- nothing appeared on disk outside the store root, and nothing inside it outside blobs/,
  ingest/, trash/ and the database;
- a refused Update, Delete or Abort, or a Write stream refused at its first message as
  invalid, left the blob or ingest as it was;
- List and ListStatuses answered exactly what the filter language selects.

The examples are derandomized, so a CI run is reproducible; CONTENTD_FUZZ_EXAMPLES scales
every test's example count (1 by default) for a longer hunt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from support.daemon import DaemonProcess, start_daemon
from support.grpc_client import CALL_TIMEOUT, commit, connect, write

from contentd.content.filters import info_adaptor, parse_all, status_adaptor
from contentd.proto import content_pb2 as api
from contentd.proto import content_pb2_grpc

Code = grpc.StatusCode
T = TypeVar("T")
Metadata = tuple[tuple[str, str | bytes], ...]
SERVICE = "/containerd.services.content.v1.Content/"
NAMESPACE = "fuzz"
#: A namespace whose labels and refs invite catastrophic regular expression backtracking.
BOMB_NAMESPACE = "fuzz-bombs"
#: Codes that mean the daemon failed instead of deciding: unclassified errors, or no answer
#: within the call's deadline.
UNDECIDED = frozenset({Code.UNKNOWN, Code.INTERNAL, Code.DEADLINE_EXCEEDED})
#: Words that would give away the daemon's internals in an error text.
PRIVATE_WORDS = (tempfile.gettempdir() + "/", "Traceback", "blobs/", "ingest/", "metadata.db")
#: What a store root may hold at its top.
ROOT_ENTRIES = frozenset({"blobs", "ingest", "trash", "metadata.db"})
_DATABASE_FILES = re.compile(r"metadata\.db(-wal|-shm|-journal)?")
_BLOB_NAMES = {"sha256": re.compile(r"[0-9a-f]{64}"), "sha512": re.compile(r"[0-9a-f]{128}")}
_INGEST_NAMES = re.compile(r"[0-9a-f]{64}(\.lock)?")

#: Examples per test; CONTENTD_FUZZ_EXAMPLES multiplies them for a longer hunt.
EXAMPLES = 200 * int(os.environ.get("CONTENTD_FUZZ_EXAMPLES", "1"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# The daemon and what it must keep to itself


@dataclass
class Seeded:
    """A blob the module stores before fuzzing, restored whenever an example deletes it."""

    namespace: str
    data: bytes
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


SEEDED = (
    Seeded(NAMESPACE, b"", {"empty": "yes"}),
    Seeded(NAMESPACE, b"small blob", {"team": "fuzz", "k.with.dots": "v", "": "empty key"}),
    Seeded(NAMESPACE, bytes(range(256)) * 6000, {"size": "big"}),  # several Read chunks
    Seeded(
        BOMB_NAMESPACE,
        b"bait",
        {"a": "a" * 4000 + "!", "x": "x" * 4000, "d": "1" * 4000, "ab": "ab" * 2000 + "!"},
    ),
    Seeded("fuzz-other", b"small blob"),  # the same bytes in another namespace
)
SEEDED_DIGESTS = sorted({seeded.digest for seeded in SEEDED})
#: Ingests left in progress before fuzzing.
SEEDED_REFS = {NAMESPACE: ["ingest-a", "x" * 1024], BOMB_NAMESPACE: ["a" * 1000 + "!"]}


class Fuzzed:
    """The shared daemon, its channel, and what its disk held before fuzzing."""

    def __init__(
        self,
        daemon: DaemonProcess,
        channel: grpc.Channel,
        stub: content_pb2_grpc.ContentStub,
        sandbox: Path,
        outside: set[str],
    ) -> None:
        self.daemon = daemon
        self.channel = channel
        self.stub = stub
        self.sandbox = sandbox
        self.outside = outside

    @property
    def root(self) -> Path:
        return self.daemon.root

    def __repr__(self) -> str:
        return f"<the daemon on {self.daemon.address}>"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    # The root sits a few levels deep in a sandbox of its own, so a path that
    # escaped it with "../" would land in the sandbox, where it is looked for.
    sandbox = tmp_path_factory.mktemp("fuzz")
    root = sandbox / "one" / "two" / "root"
    root.parent.mkdir(parents=True)
    (sandbox / "one" / "sibling").mkdir()
    daemon = start_daemon(root)
    try:
        with connect(daemon.address) as channel:
            stub = content_pb2_grpc.ContentStub(channel)
            for seeded in SEEDED:
                _store(stub, seeded)
            for namespace, refs in SEEDED_REFS.items():
                for ref in refs:
                    _start_ingest(stub, namespace, ref)
            outside = _outside(sandbox, root) | _outside(Path(daemon.socket).parent, root)
            fuzzed = Fuzzed(daemon, channel, stub, sandbox, outside)
            yield fuzzed
            _check_disk(fuzzed)
            assert daemon.process.poll() is None
            _check_health(channel)
    finally:
        try:
            exit_status = daemon.stop()
        finally:
            daemon.kill()  # a daemon that would not stop must not outlive the tests
    assert exit_status == 0, daemon.logged()


def _namespaced(namespace: str) -> Metadata:
    return (("containerd-namespace", namespace),)


def _store(stub: content_pb2_grpc.ContentStub, seeded: Seeded) -> None:
    message = commit(
        f"seed-{seeded.digest}",
        data=seeded.data,
        total=len(seeded.data),
        expected=seeded.digest,
        labels=seeded.labels,
    )
    answers = stub.Write(
        iter([message]), metadata=_namespaced(seeded.namespace), timeout=CALL_TIMEOUT
    )
    assert [answer.digest for answer in answers] == [seeded.digest]


def _start_ingest(stub: content_pb2_grpc.ContentStub, namespace: str, ref: str) -> None:
    metadata = _namespaced(namespace)
    with contextlib.suppress(grpc.RpcError):
        stub.Abort(api.AbortRequest(ref=ref), metadata=metadata, timeout=CALL_TIMEOUT)
    answers = stub.Write(iter([write(ref, b"partial")]), metadata=metadata, timeout=CALL_TIMEOUT)
    assert [answer.offset for answer in answers] == [7]


def _outside(directory: Path, root: Path) -> set[str]:
    """Every path under `directory`, but for the store root and what it holds."""
    found = set()
    for parent, dirs, files in os.walk(directory):
        if Path(parent) == root.parent:
            dirs[:] = [name for name in dirs if name != root.name]
        found.update(os.path.join(parent, name) for name in (*dirs, *files))
    return found


def _strays(root: Path) -> list[str]:
    """What the store root holds beyond its layout."""
    strays = []
    for entry in os.listdir(root):
        if entry not in ROOT_ENTRIES and not _DATABASE_FILES.fullmatch(entry):
            strays.append(entry)
    for algorithm in os.listdir(root / "blobs"):
        pattern = _BLOB_NAMES.get(algorithm)
        if pattern is None:
            strays.append(f"blobs/{algorithm}")
            continue
        strays.extend(
            f"blobs/{algorithm}/{name}"
            for name in os.listdir(root / "blobs" / algorithm)
            if not pattern.fullmatch(name)
        )
    strays.extend(
        f"ingest/{name}"
        for name in os.listdir(root / "ingest")
        if not _INGEST_NAMES.fullmatch(name)
    )
    return strays


def _check_disk(fuzzed: Fuzzed) -> None:
    root = fuzzed.root
    now = _outside(fuzzed.sandbox, root) | _outside(Path(fuzzed.daemon.socket).parent, root)
    assert now == fuzzed.outside, f"created outside the root: {sorted(now - fuzzed.outside)}"
    assert _strays(root) == []


def _check_health(channel: grpc.Channel) -> None:
    request = health_pb2.HealthCheckRequest(service="")
    answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_TIMEOUT)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def _shown(request: object) -> str:
    text = repr(request)
    return text if len(text) <= 3000 else f"{text[:3000]}... ({len(text)} characters)"


def _texts(value: object) -> Iterator[str]:
    """Every string a request carries, so the words it echoes back are not taken for leaks."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("latin-1")
    elif isinstance(value, Message):
        for _field, inner in value.ListFields():
            yield from _texts(inner)
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _texts(key)
            yield from _texts(inner)
    elif isinstance(value, Iterable):
        for inner in value:
            yield from _texts(inner)


@dataclass
class Answer:
    """How a call ended: the messages it answered with, and its error if it failed."""

    responses: list[object]
    error: grpc.RpcError | None

    @property
    def code(self) -> grpc.StatusCode:
        return Code.OK if self.error is None else self.error.code()


def answered(
    fuzzed: Fuzzed,
    rpc: str,
    request: object,
    metadata: Metadata,
    call: Callable[[], object],
) -> Answer:
    """Make `call` and check every invariant that holds whatever the request."""
    shown = f"request: {_shown(request)}\nmetadata: {_shown(metadata)}"
    responses: list[object] = []
    error: grpc.RpcError | None = None
    try:
        result = call()
        if isinstance(result, Iterator):
            responses.extend(result)
        else:
            responses.append(result)
    except grpc.RpcError as failed:
        error = failed
    answer = Answer(responses, error)
    event(f"{rpc}: {answer.code.name}")
    if error is not None:
        details = error.details() or ""
        assert answer.code not in UNDECIDED, f"{answer.code.name}: {details}\n{shown}"
        echoed = "\0".join(_texts([request, metadata]))
        private = [*PRIVATE_WORDS, str(fuzzed.root)]
        leaked = [word for word in private if word in details and word not in echoed]
        assert not leaked, f"{answer.code.name} leaks {leaked}: {details}\n{shown}"
    assert fuzzed.daemon.process.poll() is None, f"the daemon died\n{shown}"
    _check_health(fuzzed.channel)
    _check_disk(fuzzed)
    return answer


def blob_state(fuzzed: Fuzzed, metadata: Metadata, digest: str) -> object:
    """What Info says of `digest`: its size and labels, or the code it fails with."""
    try:
        info = fuzzed.stub.Info(
            api.InfoRequest(digest=digest), metadata=metadata, timeout=CALL_TIMEOUT
        ).info
    except grpc.RpcError as error:
        return error.code()
    return info.size, dict(info.labels)


def ingest_state(fuzzed: Fuzzed, metadata: Metadata, ref: str) -> object:
    """What Status says of `ref`: offset, total and expected digest, or the code it fails with."""
    try:
        status = fuzzed.stub.Status(
            api.StatusRequest(ref=ref), metadata=metadata, timeout=CALL_TIMEOUT
        ).status
    except grpc.RpcError as error:
        return error.code()
    return status.offset, status.total, status.expected


def restore_seeded(fuzzed: Fuzzed) -> None:
    """Put back seeded blobs, labels and ingests that an example removed or changed."""
    for seeded in SEEDED:
        metadata = _namespaced(seeded.namespace)
        state = blob_state(fuzzed, metadata, seeded.digest)
        if state == Code.NOT_FOUND:
            _store(fuzzed.stub, seeded)
        elif state != (len(seeded.data), seeded.labels):
            fuzzed.stub.Update(
                api.UpdateRequest(
                    info=api.Info(digest=seeded.digest, labels=seeded.labels),
                    update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
                ),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            )
    for namespace, refs in SEEDED_REFS.items():
        for ref in refs:
            if ingest_state(fuzzed, _namespaced(namespace), ref) != (7, 0, ""):
                _start_ingest(fuzzed.stub, namespace, ref)


# Strategies: what a hostile caller sends

ODD_TEXT = (
    "",
    ".",
    "..",
    "../",
    "../../../../etc/passwd",
    "/",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "\0",
    "a\0b",
    "\n",
    " ",
    "\t\r\x0b\x0c",
    "\x7f",
    "é",
    "\u0301",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\U0001f600" * 100,
    "%s%n%x",
    "{0}{1}",
    "'\"`",
    "*?[]",
    "$(id)",
    "x" * 10_000,
    "é" * 5000,
)
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)


def mostly(usual: st.SearchStrategy[T], unusual: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`usual` about two draws in three, `unusual` otherwise.

    one_of leans towards its later, richer branches, so the values that get
    past validation (the namespace and blobs seeded here) are drawn too
    rarely for the store's paths to see hostile input.
    """
    return st.sampled_from([True, True, False]).flatmap(
        lambda usually: usual if usually else unusual
    )


texts = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.text(max_size=30),
    st.text(min_size=1, max_size=3).map(lambda unit: unit * (10_000 // len(unit))),
)
int64s = st.one_of(
    st.sampled_from([0, 1, -1, 2, 10, 1 << 20, MAX_INT64, MIN_INT64, MAX_INT64 - 1]),
    st.integers(MIN_INT64, MAX_INT64),
    st.integers(-100, 5000),
)
hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
digests = mostly(
    st.sampled_from(SEEDED_DIGESTS),
    st.one_of(
        hex64.map(lambda value: f"sha256:{value}"),
        st.binary(min_size=64, max_size=64).map(lambda value: f"sha512:{value.hex()}"),
        st.sampled_from(
            [
                "",
                "sha256",
                "sha256:",
                ":",
                "sha256:abc",
                "sha256:" + "A" * 64,
                SEEDED_DIGESTS[0].upper(),
                SEEDED_DIGESTS[0] + "\n",
                " " + SEEDED_DIGESTS[0],
                SEEDED_DIGESTS[0][:-1] + "\0",
                "sha256:../../etc",
                "sha256:../../../../../../etc/passwd",
                "sha256:" + "0" * 62 + "/.",
                "sha256:" + "g" * 64,
                "sha256:" + "0" * 65,
                "sha256:" + "0" * 100_000,
                "md5:" + "0" * 32,
                "sha384:" + "0" * 96,
                "sha512:" + "0" * 64,
                "SHA256:" + "0" * 64,
                "sha256:\u0660" + "0" * 63,
                "sha256:" + "0" * 63 + "\u0660",
            ]
        ),
        texts,
    ),
)
refs = mostly(
    st.sampled_from([*SEEDED_REFS[NAMESPACE], "fuzz-ref", "é" * 512]),
    st.one_of(st.sampled_from(["x" * 1025, "é" * 513]), texts),
)
#: Namespace headers: gRPC metadata carries printable ASCII only.
namespaces = st.one_of(
    st.just(NAMESPACE),
    st.sampled_from(
        [
            "",
            "default",
            BOMB_NAMESPACE,
            "fuzz-other",
            "..",
            "../fuzz",
            "fuzz/..",
            "a..b",
            "-a",
            "a-",
            "a b",
            "UPPER",
            "x" * 76,
            "x" * 77,
            "x" * 7000,
            "x" * 20_000,
            "%00",
            "fuzz\\",
        ]
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
)
odd_metadatas: st.SearchStrategy[Metadata] = st.one_of(
    namespaces.map(_namespaced),
    st.just(()),
    st.tuples(namespaces, namespaces).map(
        lambda pair: (("containerd-namespace", pair[0]), ("containerd-namespace", pair[1]))
    ),
    st.just((("containerd-namespace-bin", b"fuzz"),)),
)
metadatas = mostly(st.just(_namespaced(NAMESPACE)), odd_metadatas)
label_maps = st.one_of(
    st.dictionaries(st.sampled_from(["team", "new", "a"]), st.sampled_from(["", "v", "fuzz"])),
    st.dictionaries(st.sampled_from(["team", "new", "a"]), st.sampled_from(["", "v", "fuzz"])),
    st.dictionaries(texts, texts, max_size=4),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=10),
    st.sampled_from(
        [
            {"": ""},
            {"": "value"},
            {"key": ""},
            {"k" * 4096: ""},
            {"k": "v" * 4095},
            {"k": "v" * 4096},
            {"k" * 2048: "v" * 2049},
            {"k\0": "v\0"},
            {"labels.a": "b", "a.b": "c"},
        ]
    ),
    st.integers(200, 3000).map(lambda count: {f"k{i}": "v" for i in range(count)}),
    st.integers(10, 40).map(lambda count: {f"k{i}": "v" * 4000 for i in range(count)}),
)
field_paths = st.one_of(
    st.lists(st.sampled_from(["labels", "labels.team", "labels.new", "labels.k.with.dots"])),
    st.lists(
        st.sampled_from(
            [
                "labels",
                "labels.",
                "labels.a",
                "labels.a.b",
                "labels..",
                "labels.team",
                "labels.k0",
                "labels.\0",
                "Labels",
                "labelsx",
                "digest",
                "size",
                "created_at",
                "",
                ".",
                "labels." + "k" * 5000,
            ]
        ),
        max_size=5,
    ),
    st.lists(texts, max_size=3),
    st.integers(1000, 20_000).map(lambda count: [f"labels.k{i}" for i in range(count)]),
)
#: Selectors that make a backtracking regular expression engine take exponential (or
#: high polynomial) time on the bomb namespace's labels and refs.
REGEX_BOMBS = (
    "labels.a~=^(a+)+$",
    "labels.a~=(a|a)*$",
    "labels.a~=(a|aa)+$",
    "labels.a~=(.*a){20}$",
    "labels.x~=(x+x+)+y",
    "labels.d~=(\\d+)*[a-z]",
    "labels.d~=\\d*\\d*\\d*\\d*\\d*\\d*!",
    "labels.ab~=^(ab|a|b)*$",
    "labels.ab~=(a|b|ab)*c",
    "ref~=^(a+)+$",
    "ref~=(a*)*b",
)
filter_strings = st.one_of(
    st.sampled_from(
        [
            "",
            ",",
            "labels",
            "labels.",
            "labels.team==fuzz",
            "labels.team!=fuzz",
            "labels.team~=^f",
            'labels."k.with.dots"',
            "digest==" + SEEDED_DIGESTS[0],
            "size==10,labels.team",
            "ref~=^ingest",
            "offset==7",
            "labels.a~=(",
            "labels.a~=[[:digit:]]",
            "labels.a~=x{9999999999}",
            "labels.a~=" + "(" * 300 + ")" * 300,
            "labels.a~=" + "x" * 1025,
            'labels.a=="unterminated',
            "labels.a==\0",
            "labels.a~=/(?P<n>a)(?P=n)/",
            "labels.a~=(?=a)",
            "labels.a~=(?<=a)b",
            "labels.a~=a++",
            "labels.a~=(?>a+)",
            "labels.a~=(?i)A",
            "labels.a~=\\bAA",
            "x" * (64 * 1024 + 1),
            ",".join(["labels.a"] * 20_000),
        ]
    ),
    st.sampled_from(REGEX_BOMBS),
    texts,
    st.lists(
        st.sampled_from(
            ["labels", ".", "a", ",", "==", "!=", "~=", '"', "/", "|", "\\", " ", "x", "(", "*"]
        ),
        max_size=20,
    ).map("".join),
)


def _quoted(text: str) -> str:
    """`text` as a double-quoted filter component."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\0", "\\x00") + '"'


label_keys = st.one_of(
    st.sampled_from(["team", "k.with.dots", "", "a", "x", "size", "fuzz", "k\0", 'q"uote', "é"]),
    st.text(max_size=8),
)
#: Selectors the store may hand to SQLite (label equality) or match itself.
label_selectors = st.one_of(
    st.builds(lambda key, value: f"labels.{_quoted(key)}=={_quoted(value)}", label_keys, texts),
    st.builds(lambda key: f"labels.{_quoted(key)}", label_keys),
    st.builds(lambda key, value: f"labels.{_quoted(key)}!={_quoted(value)}", label_keys, texts),
    st.builds(lambda key: f"labels.{_quoted(key)}~=.", label_keys),
)
filter_lists = st.one_of(
    st.lists(filter_strings, max_size=4),
    st.lists(st.lists(label_selectors, min_size=1, max_size=4).map(",".join), max_size=4),
    st.integers(1000, 50_000).map(lambda count: ["labels.team"] * count),
    st.integers(50, 2000).map(lambda count: ["labels.team==fuzz"] * count),
    st.integers(50, 2000).map(lambda count: [",".join(["labels.team==fuzz"] * count)]),
    st.just(["x" * 60_000] * 100),
)


# The unary RPCs and the response-streaming ones


@FUZZ
@given(digest=digests, metadata=metadatas)
@example(digest="sha256:../../etc", metadata=_namespaced(NAMESPACE))
@example(digest=SEEDED_DIGESTS[0], metadata=())
def test_info(fuzzed: Fuzzed, digest: str, metadata: Metadata) -> None:
    request = api.InfoRequest(digest=digest)
    answered(
        fuzzed,
        "Info",
        request,
        metadata,
        lambda: fuzzed.stub.Info(request, metadata=metadata, timeout=CALL_TIMEOUT),
    )


@FUZZ
@given(digest=digests, labels=label_maps, paths=field_paths, metadata=metadatas)
@example(digest=SEEDED_DIGESTS[0], labels={}, paths=["labels."], metadata=_namespaced(NAMESPACE))
@example(
    digest=SEEDED_DIGESTS[0],
    labels={"a.b": "c"},
    paths=["labels.a.b"],
    metadata=_namespaced(NAMESPACE),
)
def test_update(
    fuzzed: Fuzzed, digest: str, labels: dict[str, str], paths: list[str], metadata: Metadata
) -> None:
    request = api.UpdateRequest(
        info=api.Info(digest=digest, labels=labels),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )
    before = blob_state(fuzzed, metadata, digest)
    answer = answered(
        fuzzed,
        "Update",
        request,
        metadata,
        lambda: fuzzed.stub.Update(request, metadata=metadata, timeout=CALL_TIMEOUT),
    )
    after = blob_state(fuzzed, metadata, digest)
    if answer.error is not None:
        assert after == before, f"a refused update changed the blob\n{_shown(request)}"
    else:
        (response,) = answer.responses
        assert isinstance(response, api.UpdateResponse)
        assert after == (response.info.size, dict(response.info.labels))
    restore_seeded(fuzzed)


@FUZZ
@given(filters=filter_lists, metadata=metadatas)
@example(filters=[REGEX_BOMBS[0]], metadata=_namespaced(BOMB_NAMESPACE))
@example(filters=['labels."k.with.dots"==v'], metadata=_namespaced(NAMESPACE))
def test_list(fuzzed: Fuzzed, filters: list[str], metadata: Metadata) -> None:
    request = api.ListContentRequest(filters=filters)
    answer = answered(
        fuzzed,
        "List",
        request,
        metadata,
        lambda: fuzzed.stub.List(request, metadata=metadata, timeout=CALL_TIMEOUT),
    )
    if answer.error is not None:
        return
    # The filters select what the filter language says, whatever the store narrows in SQL.
    everything = fuzzed.stub.List(api.ListContentRequest(), metadata=metadata, timeout=CALL_TIMEOUT)
    selector = parse_all(filters)
    expected = sorted(
        info.digest
        for batch in everything
        for info in batch.info
        if selector.match(info_adaptor(info.digest, info.size, info.labels))
    )
    listed = sorted(
        info.digest
        for batch in answer.responses
        for info in batch.info  # type: ignore[attr-defined]
    )
    assert listed == expected, _shown(request)


@FUZZ
@given(digest=digests, metadata=metadatas)
def test_delete(fuzzed: Fuzzed, digest: str, metadata: Metadata) -> None:
    request = api.DeleteContentRequest(digest=digest)
    before = blob_state(fuzzed, metadata, digest)
    answer = answered(
        fuzzed,
        "Delete",
        request,
        metadata,
        lambda: fuzzed.stub.Delete(request, metadata=metadata, timeout=CALL_TIMEOUT),
    )
    after = blob_state(fuzzed, metadata, digest)
    if answer.error is not None:
        assert after == before, f"a refused delete changed the blob\n{_shown(request)}"
    else:
        assert after == Code.NOT_FOUND
    restore_seeded(fuzzed)


@FUZZ
@given(digest=digests, offset=int64s, size=int64s, metadata=metadatas)
@example(
    digest=SEEDED_DIGESTS[1], offset=MAX_INT64, size=MAX_INT64, metadata=_namespaced(NAMESPACE)
)
@example(digest=SEEDED_DIGESTS[1], offset=1, size=MAX_INT64, metadata=_namespaced(NAMESPACE))
def test_read(fuzzed: Fuzzed, digest: str, offset: int, size: int, metadata: Metadata) -> None:
    request = api.ReadContentRequest(digest=digest, offset=offset, size=size)
    answer = answered(
        fuzzed,
        "Read",
        request,
        metadata,
        lambda: fuzzed.stub.Read(request, metadata=metadata, timeout=CALL_TIMEOUT),
    )
    seeded = [item for item in SEEDED if item.digest == digest]
    if answer.error is None and seeded:
        data = seeded[0].data
        end = len(data) if size == 0 else min(len(data), offset + size)
        read = b"".join(chunk.data for chunk in answer.responses)  # type: ignore[attr-defined]
        assert read == data[offset:end], _shown(request)


@FUZZ
@given(ref=refs, metadata=metadatas)
def test_status(fuzzed: Fuzzed, ref: str, metadata: Metadata) -> None:
    request = api.StatusRequest(ref=ref)
    answered(
        fuzzed,
        "Status",
        request,
        metadata,
        lambda: fuzzed.stub.Status(request, metadata=metadata, timeout=CALL_TIMEOUT),
    )


@FUZZ
@given(filters=filter_lists, metadata=metadatas)
@example(filters=["ref~=^(a+)+$"], metadata=_namespaced(BOMB_NAMESPACE))
def test_list_statuses(fuzzed: Fuzzed, filters: list[str], metadata: Metadata) -> None:
    request = api.ListStatusesRequest(filters=filters)
    answer = answered(
        fuzzed,
        "ListStatuses",
        request,
        metadata,
        lambda: fuzzed.stub.ListStatuses(request, metadata=metadata, timeout=CALL_TIMEOUT),
    )
    if answer.error is not None:
        return
    everything = fuzzed.stub.ListStatuses(
        api.ListStatusesRequest(), metadata=metadata, timeout=CALL_TIMEOUT
    ).statuses
    selector = parse_all(filters)
    expected = sorted(
        status.ref
        for status in everything
        if selector.match(status_adaptor(status.ref, status.offset, status.total, status.expected))
    )
    (response,) = answer.responses
    listed = sorted(status.ref for status in response.statuses)  # type: ignore[attr-defined]
    assert listed == expected, _shown(request)


@FUZZ
@given(ref=refs, metadata=metadatas)
def test_abort(fuzzed: Fuzzed, ref: str, metadata: Metadata) -> None:
    request = api.AbortRequest(ref=ref)
    before = ingest_state(fuzzed, metadata, ref)
    answer = answered(
        fuzzed,
        "Abort",
        request,
        metadata,
        lambda: fuzzed.stub.Abort(request, metadata=metadata, timeout=CALL_TIMEOUT),
    )
    after = ingest_state(fuzzed, metadata, ref)
    if answer.error is not None:
        assert after == before, f"a refused abort changed the ingest\n{_shown(request)}"
    else:
        assert after == Code.NOT_FOUND
    restore_seeded(fuzzed)


# The Write stream

actions = st.one_of(
    st.sampled_from([api.STAT, api.WRITE, api.COMMIT]),
    st.sampled_from([3, 4, -1, 2**31 - 1, -(2**31)]),
)
stream_refs = st.one_of(st.sampled_from(["fuzz-w1", "fuzz-w2", "ingest-a"]), refs)


@st.composite
def write_messages(draw: st.DrawFn) -> api.WriteContentRequest:
    """One message of a Write stream, each field random or adversarial."""
    data = draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"x" * 70_000])))
    true_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return api.WriteContentRequest(
        action=draw(actions),
        ref=draw(stream_refs),
        offset=draw(int64s),
        total=draw(st.one_of(st.just(len(data)), int64s)),
        expected=draw(st.one_of(st.just(""), st.just(true_digest), digests)),
        data=data,
        labels=draw(st.one_of(st.just({}), label_maps)),
    )


@st.composite
def coherent_streams(draw: st.DrawFn) -> list[api.WriteContentRequest]:
    """An ingest that writes its bytes in order and commits, with one field perhaps lying."""
    ref = draw(st.sampled_from(["fuzz-c1", "fuzz-c2"]))
    data = draw(st.binary(min_size=1, max_size=300))
    cut = draw(st.integers(0, len(data)))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    messages = [
        api.WriteContentRequest(action=api.STAT, ref=ref, total=len(data), expected=digest),
        api.WriteContentRequest(action=api.WRITE, ref=ref, offset=0, data=data[:cut]),
        api.WriteContentRequest(
            action=api.COMMIT,
            ref=ref,
            offset=cut,
            data=data[cut:],
            total=len(data),
            expected=digest,
            labels={"fuzz": "coherent"},
        ),
    ]
    victim = draw(st.sampled_from(messages))
    lie = draw(st.sampled_from(["none", "offset", "total", "expected", "ref", "action", "labels"]))
    if lie == "offset":
        victim.offset = draw(int64s)
    elif lie == "total":
        victim.total = draw(int64s)
    elif lie == "expected":
        victim.expected = draw(digests)
    elif lie == "ref":
        victim.ref = draw(stream_refs)
    elif lie == "action":
        victim.action = draw(actions)
    elif lie == "labels":
        victim.labels.clear()
        victim.labels.update(draw(label_maps))
    return messages


write_streams = st.one_of(st.lists(write_messages(), min_size=1, max_size=5), coherent_streams())


def _out_of_order() -> list[list[api.WriteContentRequest]]:
    """Streams that break the protocol's order on purpose."""
    data = b"out of order"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return [
        # COMMIT before any WRITE, of bytes never sent.
        [commit("fuzz-o1", offset=5, total=len(data), expected=digest)],
        # WRITE after COMMIT.
        [commit("fuzz-o2", data=data, total=len(data)), write("fuzz-o2", b"more", offset=12)],
        # STAT with different refs in one stream.
        [
            api.WriteContentRequest(action=api.STAT, ref="fuzz-o3"),
            api.WriteContentRequest(action=api.STAT, ref="fuzz-o4"),
            api.WriteContentRequest(action=api.WRITE, ref="fuzz-o5", data=data, offset=0),
        ],
        # Actions outside the enum, first and later.
        [api.WriteContentRequest(action=7, ref="fuzz-o6", data=data)],
        [write("fuzz-o7", data), api.WriteContentRequest(action=-3, ref="fuzz-o7")],
        # A first message without a ref, and an empty one.
        [api.WriteContentRequest()],
        [api.WriteContentRequest(action=api.COMMIT)],
        # Offsets that go back and far ahead.
        [write("fuzz-o8", data), write("fuzz-o8", data, offset=3)],
        [write("fuzz-o9", data, offset=MAX_INT64)],
        # Totals smaller and larger than what is sent.
        [write("fuzz-o10", data), commit("fuzz-o10", offset=len(data), total=3)],
        [write("fuzz-o11", data), commit("fuzz-o11", offset=len(data), total=MAX_INT64)],
        # A commit expecting a digest of the wrong algorithm or none at all.
        [commit("fuzz-o12", data=data, expected="sha512:" + "0" * 128)],
        [commit("fuzz-o13", data=data, expected="sha256:" + "0" * 64)],
    ]


OUT_OF_ORDER = _out_of_order()


@FUZZ
@given(messages=write_streams, metadata=metadatas)
@example(messages=OUT_OF_ORDER[0], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[1], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[2], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[3], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[4], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[5], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[6], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[7], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[8], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[9], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[10], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[11], metadata=_namespaced(NAMESPACE))
@example(messages=OUT_OF_ORDER[12], metadata=_namespaced(NAMESPACE))
def test_write(fuzzed: Fuzzed, messages: list[api.WriteContentRequest], metadata: Metadata) -> None:
    # A stream refused at its first message must leave the ingest as it was.
    ref = messages[0].ref
    before = ingest_state(fuzzed, metadata, ref)
    answer = answered(
        fuzzed,
        "Write",
        messages,
        metadata,
        lambda: fuzzed.stub.Write(iter(messages), metadata=metadata, timeout=CALL_TIMEOUT),
    )
    if answer.code == Code.INVALID_ARGUMENT and not answer.responses:
        after = ingest_state(fuzzed, metadata, ref)
        assert after == before, f"a refused stream changed its ingest\n{_shown(messages)}"
    restore_seeded(fuzzed)


# Bytes that are no protobuf message

UNARY_METHODS = ("Info", "Update", "Delete", "Status", "ListStatuses", "Abort")
SERVER_STREAMING_METHODS = ("List", "Read")
#: Encodings that break protobuf's wire format in the ways parsers trip over.
MALFORMED = (
    b"\x08",  # a tag without its varint
    b"\x0a\x05ab",  # a length past the end
    b"\x0a\xff\xff\xff\xff\x0f",  # a length of 4 GiB
    b"\x0a\x02\xff\xfe",  # a string field (digest, ref, filters) that is not UTF-8
    b"\x12\x02\xc3\x28",  # field 2 the same
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
    b"\x0b" * 1000,  # groups opened and never closed
    b"\x0b" * 10 + b"\x0c" * 10,
    b"\x07",  # wire type 7 does not exist
    b"\x00",  # field number 0
    b"\xff\xff\xff\xff\x7f",
    b"\x12\x00" * 10_000,  # many empty fields
    b"\x0a\x02\x0a\x00" * 1000,
)
raw_messages = st.one_of(st.sampled_from(MALFORMED), st.binary(max_size=200))


@FUZZ
@given(
    method=st.sampled_from(UNARY_METHODS + SERVER_STREAMING_METHODS),
    payload=raw_messages,
    metadata=metadatas,
)
@example(method="Info", payload=b"\x0a\x02\xff\xfe", metadata=_namespaced(NAMESPACE))
@example(method="List", payload=b"\x0a\x02\xff\xfe", metadata=_namespaced(NAMESPACE))
def test_raw_bytes(fuzzed: Fuzzed, method: str, payload: bytes, metadata: Metadata) -> None:
    path = SERVICE + method
    if method in UNARY_METHODS:
        call: Callable[[bytes], object] = fuzzed.channel.unary_unary(path)
    else:
        call = fuzzed.channel.unary_stream(path)
    answered(
        fuzzed,
        method,
        payload,
        metadata,
        lambda: call(payload, metadata=metadata, timeout=CALL_TIMEOUT),
    )
    restore_seeded(fuzzed)


@FUZZ
@given(
    payloads=st.lists(
        st.one_of(raw_messages, write_messages().map(lambda message: message.SerializeToString())),
        min_size=1,
        max_size=4,
    ),
    metadata=metadatas,
)
@example(payloads=[b"\x0a\x02\xff\xfe"], metadata=_namespaced(NAMESPACE))
@example(
    payloads=[write("fuzz-raw", b"abc").SerializeToString(), b"\x08"],
    metadata=_namespaced(NAMESPACE),
)
def test_raw_write_stream(fuzzed: Fuzzed, payloads: list[bytes], metadata: Metadata) -> None:
    call = fuzzed.channel.stream_stream(SERVICE + "Write")
    answered(
        fuzzed,
        "Write",
        payloads,
        metadata,
        lambda: call(iter(payloads), metadata=metadata, timeout=CALL_TIMEOUT),
    )
    restore_seeded(fuzzed)
