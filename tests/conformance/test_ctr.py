"""containerd's own `ctr content ...` (containerd 1.6) against `contentd serve`.

Every test starts a fresh daemon and drives it only through `ctr`, the way an operator
would: ingest, ls, get, label, active, rm, namespaces, and what ctr prints when a call
fails. A few tests run against a private containerd too, where the expectation is
containerd's own behaviour rather than something ctr alone decides.

Facts about ctr 1.6 the tests rely on:
- `ls` and `active` print tables padded with tabs, sizes in go-units' HumanSize (decimal
  units, four significant digits: 5243003 bytes is `5.243MB`); there is no `content info`.
- Extra arguments to `ls` and `active` are filters (`active`'s help calls its argument a
  regexp, but it is sent as a filter); filters in one argument must all match, separate
  arguments match if any does.
- `ingest` reads stdin in 1 MiB blocks and sends each once it is full. It resumes an
  existing ingest by seeking stdin to the ingest's offset, which a pipe cannot do.
- `get`, `rm` and `label` parse the digest before calling the server; a malformed digest
  never reaches it. `rm` of an absent blob is not an error.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from support.containerd import start_containerd
from support.ctr import Ctr, CtrError, parse_table, run_with_stdin_file, start, table
from support.daemon import DaemonProcess, running_daemon
from support.tools import require_tool

pytestmark = pytest.mark.conformance

MiB = 1 << 20
# Every byte value, then bytes without a period, so a chunk delivered out of order or twice
# cannot compare equal; 5 MiB and a ragged tail cross several of ctr's 1 MiB reads.
BLOB = bytes(range(256)) + random.Random(20240601).randbytes(5 * MiB + 123 - 256)
BLOB_SIZE_SHOWN = "5.243MB"
SMALL = bytes(range(256))
SMALL_SIZE_SHOWN = "256B"
OTHER = b"some other content"

WAIT_TIMEOUT = 30.0
POLL_INTERVAL = 0.05

T = TypeVar("T")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def wait_until(observe: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    """Observe until `done` holds, for at most WAIT_TIMEOUT seconds; the last observation."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        seen = observe()
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {WAIT_TIMEOUT:g} s; last saw {seen!r}")
        time.sleep(POLL_INTERVAL)


def assert_names_no_store_path(message: str, daemon: DaemonProcess) -> None:
    for path in {str(daemon.root), str(daemon.root.resolve())}:
        assert path not in message
    for fragment in ("blobs/", "ingest/", "metadata.db"):
        assert fragment not in message


@pytest.fixture(autouse=True)
def _ctr_installed() -> None:
    require_tool("ctr", "containerd")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path / "root") as process:
        yield process


@pytest.fixture
def ctr(daemon: DaemonProcess) -> Ctr:
    return Ctr(daemon.address, namespace="ctr-a")


@pytest.fixture
def other_ctr(daemon: DaemonProcess) -> Ctr:
    """ctr on the same daemon, in another namespace."""
    return Ctr(daemon.address, namespace="ctr-b")


@pytest.fixture(params=["contentd", "containerd"])
def any_ctr(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ctr]:
    """ctr against a fresh contentd, or against a fresh private containerd."""
    if request.param == "contentd":
        with running_daemon(tmp_path / "root") as process:
            yield Ctr(process.address, namespace="ctr-a")
    else:
        require_tool("containerd", "containerd")
        with start_containerd(tmp_path / "containerd") as process:
            yield Ctr(process.address, namespace="ctr-a")


# ingest, ls, get


def test_ls_lists_each_ingested_blob_with_its_digest_and_size(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)
    ctr.content_ingest("big", BLOB)

    rows = table(ctr, "content", "ls")

    assert sorted((row["DIGEST"], row["SIZE"], row["LABELS"]) for row in rows) == sorted(
        [(digest_of(SMALL), SMALL_SIZE_SHOWN, "-"), (digest_of(BLOB), BLOB_SIZE_SHOWN, "-")]
    )


def test_ls_quiet_lists_only_digests(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)

    assert ctr.run("content", "ls", "--quiet") == f"{digest_of(SMALL)}\n".encode()


def test_get_returns_the_ingested_bytes_across_read_chunks(ctr: Ctr) -> None:
    ctr.content_ingest("big", BLOB)

    assert ctr.content_get(digest_of(BLOB)) == BLOB


def test_ingest_with_the_right_expected_size_and_digest_succeeds(ctr: Ctr) -> None:
    ctr.run(
        "content",
        "ingest",
        "--expected-size",
        str(len(BLOB)),
        "--expected-digest",
        digest_of(BLOB),
        "expected",
        stdin=BLOB,
    )

    assert ctr.content_ls() == [digest_of(BLOB)]
    assert ctr.content_get(digest_of(BLOB)) == BLOB


def test_ingest_with_a_wrong_expected_digest_fails_and_stores_nothing(ctr: Ctr) -> None:
    with pytest.raises(CtrError) as raised:
        ctr.run("content", "ingest", "--expected-digest", digest_of(OTHER), "wrong", stdin=SMALL)

    message = raised.value.stderr
    assert 'failed commit on ref "wrong"' in message
    assert digest_of(OTHER) in message
    assert "failed precondition" in message
    assert ctr.content_ls() == []


def test_ingest_with_a_smaller_expected_size_fails_and_stores_nothing(ctr: Ctr) -> None:
    with pytest.raises(CtrError) as raised:
        ctr.run("content", "ingest", "--expected-size", "255", "short", stdin=SMALL)

    message = raised.value.stderr
    assert 'failed commit on ref "short"' in message
    assert "255" in message
    assert "failed precondition" in message
    assert ctr.content_ls() == []


def test_ingest_with_a_larger_expected_size_fails_and_stores_nothing(ctr: Ctr) -> None:
    # ctr itself notices the input ran out before the expected size; it never commits.
    with pytest.raises(CtrError, match="failed to read expected number of bytes"):
        ctr.run("content", "ingest", "--expected-size", "257", "long", stdin=SMALL)

    assert ctr.content_ls() == []


def test_failed_ingest_stays_active_with_the_bytes_it_received(ctr: Ctr) -> None:
    # containerd keeps a failed ingest for its writer to resume or abort; so must we.
    with pytest.raises(CtrError):
        ctr.run("content", "ingest", "--expected-digest", digest_of(OTHER), "kept", stdin=SMALL)

    rows = table(ctr, "content", "active")

    assert [(row["REF"], row["SIZE"]) for row in rows] == [("kept", SMALL_SIZE_SHOWN)]


def test_ingest_resumes_a_truncated_ingest_on_the_same_ref(ctr: Ctr, tmp_path: Path) -> None:
    # The first attempt loses its tail; its commit fails on the digest, its bytes stay.
    with pytest.raises(CtrError, match="failed precondition"):
        ctr.run(
            "content",
            "ingest",
            "--expected-digest",
            digest_of(BLOB),
            "resumed",
            stdin=BLOB[: 2 * MiB + 7],
        )
    source = tmp_path / "blob"
    source.write_bytes(BLOB)

    run_with_stdin_file(
        ctr, str(source), "content", "ingest", "--expected-digest", digest_of(BLOB), "resumed"
    )

    assert ctr.content_ls() == [digest_of(BLOB)]
    assert ctr.content_get(digest_of(BLOB)) == BLOB
    assert table(ctr, "content", "active") == []


@pytest.mark.parametrize("wrong_size", [len(SMALL) - 1, len(SMALL) + 1], ids=["smaller", "larger"])
@pytest.mark.parametrize(
    "any_ctr",
    ["contentd", "containerd"],
    indirect=True,
)
def test_ingest_after_a_wrong_expected_size_starts_over_on_the_same_ref(
    any_ctr: Ctr, wrong_size: int
) -> None:
    with pytest.raises(CtrError):
        any_ctr.run("content", "ingest", "--expected-size", str(wrong_size), "resized", stdin=SMALL)

    # From a pipe: ctr can only succeed if the server starts the ingest over at offset 0.
    any_ctr.run("content", "ingest", "--expected-size", str(len(SMALL)), "resized", stdin=SMALL)

    assert any_ctr.content_ls() == [digest_of(SMALL)]
    assert any_ctr.content_get(digest_of(SMALL)) == SMALL


# label


def test_label_sets_labels_that_ls_shows(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)

    printed = ctr.run("content", "label", digest_of(SMALL), "k=v", "team=storage")

    assert sorted(printed.decode().strip().split(",")) == ["k=v", "team=storage"]
    [row] = table(ctr, "content", "ls")
    assert sorted(row["LABELS"].split(",")) == ["k=v", "team=storage"]


def test_label_without_labels_prints_the_current_ones(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)
    ctr.run("content", "label", digest_of(SMALL), "k=v")

    assert ctr.run("content", "label", digest_of(SMALL)) == b"k=v\n"


def test_label_with_an_empty_value_removes_the_label(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)
    ctr.run("content", "label", digest_of(SMALL), "k=v", "team=storage")

    printed = ctr.run("content", "label", digest_of(SMALL), "k=")

    assert printed == b"team=storage\n"
    [row] = table(ctr, "content", "ls")
    assert row["LABELS"] == "team=storage"


def test_removing_the_last_label_shows_none_in_ls(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)
    ctr.run("content", "label", digest_of(SMALL), "k=v")

    ctr.run("content", "label", digest_of(SMALL), "k=")

    [row] = table(ctr, "content", "ls")
    assert row["LABELS"] == "-"


def test_label_of_a_missing_blob_reports_not_found(ctr: Ctr, daemon: DaemonProcess) -> None:
    with pytest.raises(CtrError) as raised:
        ctr.run("content", "label", digest_of(SMALL), "k=v")

    message = raised.value.stderr
    assert digest_of(SMALL) in message
    assert "not found" in message
    assert_names_no_store_path(message, daemon)


# ls filters


def test_ls_filter_selects_blobs_by_label(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)
    ctr.content_ingest("other", OTHER)
    ctr.run("content", "label", digest_of(SMALL), "k=v")

    assert ctr.run("content", "ls", "--quiet", "labels.k==v").split() == [digest_of(SMALL).encode()]
    assert ctr.run("content", "ls", "--quiet", "labels.k!=v").split() == [digest_of(OTHER).encode()]
    assert ctr.run("content", "ls", "--quiet", "labels.k==w") == b""


def test_ls_filters_in_one_argument_must_all_match(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)
    ctr.run("content", "label", digest_of(SMALL), "k=v", "team=storage")

    assert ctr.run("content", "ls", "--quiet", "labels.k==v,labels.team==other") == b""
    assert ctr.run("content", "ls", "--quiet", "labels.k==v,labels.team==storage").split() == [
        digest_of(SMALL).encode()
    ]


def test_ls_filters_in_separate_arguments_match_if_any_does(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)
    ctr.content_ingest("other", OTHER)
    ctr.run("content", "label", digest_of(SMALL), "k=v")

    listed = ctr.run("content", "ls", "--quiet", "labels.k==v", f"digest=={digest_of(OTHER)}")

    assert sorted(listed.split()) == sorted([digest_of(SMALL).encode(), digest_of(OTHER).encode()])


# active


def test_active_lists_an_ingest_while_it_is_in_flight(ctr: Ctr) -> None:
    ingest = start(ctr, "content", "ingest", "in-flight")
    assert ingest.stdin is not None
    try:
        # Exactly two of ctr's 1 MiB reads: it sends both, then waits on the open pipe.
        ingest.stdin.write(BLOB[: 2 * MiB])
        ingest.stdin.flush()

        wait_until(
            lambda: table(ctr, "content", "active"),
            lambda rows: [(row["REF"], row["SIZE"]) for row in rows] == [("in-flight", "2.097MB")],
            "active did not show in-flight at 2 MiB",
        )
        assert ctr.content_ls() == []

        ingest.stdin.write(BLOB[2 * MiB :])
        _, stderr = ingest.communicate(timeout=WAIT_TIMEOUT)
    finally:
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait()

    assert ingest.returncode == 0, stderr.decode(errors="replace")
    assert ctr.content_ls() == [digest_of(BLOB)]
    assert table(ctr, "content", "active") == []


def test_active_filter_selects_ingests_by_ref(ctr: Ctr) -> None:
    for ref in ("first", "second"):
        with pytest.raises(CtrError):
            ctr.run("content", "ingest", "--expected-size", "1000", ref, stdin=SMALL)

    rows = table(ctr, "content", "active", "ref==second")

    assert [row["REF"] for row in rows] == ["second"]


# rm


def test_rm_removes_the_blob_and_prints_its_digest(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)

    printed = ctr.run("content", "rm", digest_of(SMALL))

    assert printed == f"{digest_of(SMALL)}\n".encode()
    assert ctr.content_ls() == []
    with pytest.raises(CtrError, match="not found"):
        ctr.content_get(digest_of(SMALL))


def test_rm_of_a_missing_blob_succeeds_quietly(ctr: Ctr) -> None:
    # ctr ignores NotFound from the server, and only NotFound.
    assert ctr.run("content", "rm", digest_of(SMALL)) == b""


def test_rm_removes_only_the_named_blob(ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)
    ctr.content_ingest("other", OTHER)

    ctr.run("content", "rm", digest_of(SMALL))

    assert ctr.content_ls() == [digest_of(OTHER)]
    assert ctr.content_get(digest_of(OTHER)) == OTHER


# namespaces


def test_blob_is_neither_listed_nor_readable_in_another_namespace(ctr: Ctr, other_ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)

    assert other_ctr.content_ls() == []
    with pytest.raises(CtrError, match="not found"):
        other_ctr.content_get(digest_of(SMALL))


def test_same_content_can_be_ingested_in_two_namespaces(ctr: Ctr, other_ctr: Ctr) -> None:
    ctr.content_ingest("big", BLOB)

    other_ctr.content_ingest("big", BLOB)

    assert other_ctr.content_ls() == [digest_of(BLOB)]
    assert other_ctr.content_get(digest_of(BLOB)) == BLOB


def test_rm_in_one_namespace_leaves_the_other_copy_readable(ctr: Ctr, other_ctr: Ctr) -> None:
    ctr.content_ingest("big", BLOB)
    other_ctr.content_ingest("big", BLOB)

    ctr.run("content", "rm", digest_of(BLOB))

    assert ctr.content_ls() == []
    assert other_ctr.content_ls() == [digest_of(BLOB)]
    assert other_ctr.content_get(digest_of(BLOB)) == BLOB


def test_labels_belong_to_one_namespace(ctr: Ctr, other_ctr: Ctr) -> None:
    ctr.content_ingest("small", SMALL)
    other_ctr.content_ingest("small", SMALL)

    ctr.run("content", "label", digest_of(SMALL), "k=v")

    [row] = table(other_ctr, "content", "ls")
    assert row["LABELS"] == "-"


def test_ingest_by_expected_digest_shares_content_from_another_namespace(
    ctr: Ctr, other_ctr: Ctr, tmp_path: Path
) -> None:
    # containerd's shared policy: the writer starts complete, at the blob's size, and ctr
    # seeks its input past it (from a pipe it could not, on containerd as here).
    ctr.content_ingest("big", BLOB)
    source = tmp_path / "blob"
    source.write_bytes(BLOB)

    run_with_stdin_file(
        other_ctr, str(source), "content", "ingest", "--expected-digest", digest_of(BLOB), "big"
    )

    assert other_ctr.content_ls() == [digest_of(BLOB)]
    assert other_ctr.content_get(digest_of(BLOB)) == BLOB


# errors


def test_get_of_a_missing_blob_reports_not_found(ctr: Ctr, daemon: DaemonProcess) -> None:
    with pytest.raises(CtrError) as raised:
        ctr.content_get(digest_of(SMALL))

    message = raised.value.stderr
    assert f"{digest_of(SMALL)}: not found" in message
    assert_names_no_store_path(message, daemon)


@pytest.mark.parametrize(
    ("argument", "words"),
    [
        ("not-a-digest", "invalid checksum digest format"),
        ("sha256:abc", "invalid checksum digest length"),
    ],
)
def test_get_of_a_malformed_digest_is_refused_by_ctr(ctr: Ctr, argument: str, words: str) -> None:
    # ctr parses the digest before it dials: these words are ctr's, not the daemon's.
    with pytest.raises(CtrError, match=words):
        ctr.content_get(argument)


@pytest.mark.parametrize("expression", ["==", "labels.k==", "labels.k==v,"])
def test_malformed_filter_reports_invalid_argument(
    ctr: Ctr, daemon: DaemonProcess, expression: str
) -> None:
    with pytest.raises(CtrError) as raised:
        ctr.run("content", "ls", expression)

    message = raised.value.stderr
    assert "filter" in message
    assert "invalid argument" in message
    assert_names_no_store_path(message, daemon)


def test_overlong_label_reports_invalid_argument(ctr: Ctr, daemon: DaemonProcess) -> None:
    ctr.content_ingest("small", SMALL)

    with pytest.raises(CtrError) as raised:
        ctr.run("content", "label", digest_of(SMALL), "k=" + "v" * 4096)

    message = raised.value.stderr
    assert "invalid argument" in message
    assert "4096" in message
    assert_names_no_store_path(message, daemon)
    [row] = table(ctr, "content", "ls")
    assert row["LABELS"] == "-"


# contentd beside containerd


def test_contentd_and_containerd_list_an_ingested_blob_alike(ctr: Ctr, tmp_path: Path) -> None:
    require_tool("containerd", "containerd")
    with start_containerd(tmp_path / "containerd") as containerd:
        reference = Ctr(containerd.address, namespace=ctr.namespace)
        reference.content_ingest("big", BLOB)
        ctr.content_ingest("big", BLOB)

        expected = parse_table(reference.run("content", "ls"))
        listed = parse_table(ctr.run("content", "ls"))
        expected_active = reference.run("content", "active")
        active = ctr.run("content", "active")

    # Every column, and every cell but the age, which depends on when each listing ran.
    assert [list(row) for row in listed] == [list(row) for row in expected]
    assert [row | {"AGE": ""} for row in listed] == [row | {"AGE": ""} for row in expected]
    assert listed[0]["DIGEST"] == digest_of(BLOB)
    assert listed[0]["SIZE"] == BLOB_SIZE_SHOWN
    assert active == expected_active
