"""HTTP mapping: statuses, registry-style bodies and the descriptor table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentd import errdefs
from contentd.errdefs import DESCRIPTORS, ERROR_CLASSES, ContentdError
from contentd.errdefs._doc import render_markdown

REPO = Path(__file__).resolve().parent.parent

reasons = st.none() | st.from_regex(r"[A-Z][A-Z0-9_]{0,30}", fullmatch=True)
metadatas = st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=30), max_size=4)


@given(
    cls=st.sampled_from(ERROR_CLASSES),
    message=st.text(max_size=200),
    reason=reasons,
    metadata=metadatas,
)
def test_every_class_round_trips_through_status_and_body(
    cls: type[ContentdError], message: str, reason: str | None, metadata: dict[str, str]
) -> None:
    answer = errdefs.to_http(cls(message, reason=reason, metadata=metadata))
    chosen = errdefs.REASONS.get(reason or "")
    if chosen is not None and chosen.error_class is cls:
        assert answer.status == chosen.http_status
    else:
        assert answer.status == cls.http_status
    decoded = errdefs.from_http(answer.status, answer.body)
    assert decoded.error_class() is cls
    assert str(decoded) == str(cls(message))
    assert decoded.metadata == metadata
    if reason is None or reason not in DESCRIPTORS:
        assert decoded.reason == reason


def test_body_is_registry_shaped() -> None:
    err = errdefs.Unavailable("ref r locked", reason="REF_LOCKED", metadata={"ref": "r"})
    answer = errdefs.to_http(err)
    assert answer.status == 503
    assert json.loads(answer.body) == {
        "errors": [
            {
                "code": "UNAVAILABLE",
                "message": "ref r locked: unavailable",
                "detail": {"reason": "REF_LOCKED", "metadata": {"ref": "r"}},
            }
        ]
    }


def test_handler_chooses_a_registry_code_of_the_same_class() -> None:
    answer = errdefs.to_http(errdefs.NotFound("blob sha256:00"), code="BLOB_UNKNOWN")
    assert answer.status == 404
    assert json.loads(answer.body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    decoded = errdefs.from_http(answer.status, answer.body)
    assert decoded.error_class() is errdefs.NotFound
    assert decoded.reason == "BLOB_UNKNOWN"
    assert decoded.message == "blob sha256:00"


def test_registry_code_of_another_class_is_not_used() -> None:
    answer = errdefs.to_http(errdefs.Unavailable("busy"), code="BLOB_UNKNOWN")
    assert answer.status == 503
    assert answer.descriptor.code == "UNAVAILABLE"


def test_reason_naming_a_descriptor_selects_it() -> None:
    answer = errdefs.to_http(errdefs.InvalidArgument("sha256:zz", reason="DIGEST_INVALID"))
    assert (answer.status, answer.descriptor.code) == (400, "DIGEST_INVALID")


OCI_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
}


def test_out_of_order_chunk_is_416_blob_upload_invalid_and_decodes_back() -> None:
    err = errdefs.OutOfRange("chunk at 10, upload at 4", reason="RANGE_INVALID")
    answer = errdefs.to_http(err)
    assert answer.status == 416
    entry = json.loads(answer.body)["errors"][0]
    assert entry["code"] == "BLOB_UPLOAD_INVALID"
    assert entry["detail"]["reason"] == "RANGE_INVALID"
    decoded = errdefs.from_http(answer.status, answer.body)
    assert decoded.error_class() is errdefs.OutOfRange
    assert decoded.reason == "RANGE_INVALID"


def test_bad_page_size_is_400_unsupported_and_decodes_to_invalid_argument() -> None:
    err = errdefs.InvalidArgument("n='many'", reason="PAGINATION_NUMBER_INVALID")
    answer = errdefs.to_http(err)
    assert (answer.status, answer.descriptor.code) == (400, "UNSUPPORTED")
    assert errdefs.from_http(answer.status, answer.body).error_class() is errdefs.InvalidArgument


def test_a_reason_entry_decodes_by_code_and_status_without_a_detail() -> None:
    body = b'{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"bad range"}]}'
    decoded = errdefs.from_http(416, body)
    assert decoded.error_class() is errdefs.OutOfRange
    assert decoded.reason == "RANGE_INVALID"
    assert errdefs.from_http(400, body).error_class() is errdefs.InvalidArgument


def test_reason_entries_answer_with_codes_of_the_distribution_spec() -> None:
    for descriptor in errdefs.REASON_DESCRIPTORS:
        assert descriptor.code in OCI_CODES, descriptor
        assert descriptor.reason not in DESCRIPTORS, descriptor
        general = DESCRIPTORS[descriptor.code]
        assert descriptor.http_status != general.http_status, descriptor
    pairs = [(d.code, d.http_status) for d in errdefs.REASON_DESCRIPTORS]
    assert len(pairs) == len(set(pairs))


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errdefs.InvalidArgument),
        (401, errdefs.Unauthenticated),
        (403, errdefs.PermissionDenied),
        (404, errdefs.NotFound),
        (409, errdefs.Conflict),
        (412, errdefs.FailedPrecondition),
        (304, errdefs.NotModified),
        (416, errdefs.OutOfRange),
        (429, errdefs.ResourceExhausted),
        (500, errdefs.Internal),
        (501, errdefs.Unimplemented),
        (503, errdefs.Unavailable),
        (504, errdefs.DeadlineExceeded),
    ],
)
def test_bare_status_decodes_like_containerd_errhttp(status: int, cls: type[ContentdError]) -> None:
    assert errdefs.from_http(status).error_class() is cls


def test_unmapped_status_is_unknown_and_remembers_it() -> None:
    decoded = errdefs.from_http(418, b"not json")
    assert decoded.error_class() is errdefs.Unknown
    assert decoded.metadata == {"http_status": "418"}


def test_foreign_registry_body_decodes() -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":"v1"}]}'
    decoded = errdefs.from_http(404, body)
    assert decoded.error_class() is errdefs.NotFound
    assert decoded.reason == "MANIFEST_UNKNOWN"
    assert decoded.message == "manifest unknown"


def test_unclassified_is_a_generic_500_with_an_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="contentd.errors"):
        answer = errdefs.to_http(FileNotFoundError(2, "No such file", "/srv/contentd/ingest/x"))
    assert answer.status == 500
    assert b"/srv" not in answer.body
    entry = json.loads(answer.body)["errors"][0]
    assert entry["code"] == "INTERNAL"
    assert entry["detail"]["metadata"]["error_id"] in caplog.text


def test_descriptor_codes_are_unique_and_belong_to_a_class() -> None:
    codes = [d.code for d in (*errdefs.CLASS_DESCRIPTORS, *errdefs.REGISTRY_DESCRIPTORS)]
    assert len(codes) == len(set(codes))
    for descriptor in DESCRIPTORS.values():
        assert descriptor.error_class in ERROR_CLASSES


def test_oci_distribution_codes_are_all_present() -> None:
    assert DESCRIPTORS.keys() >= OCI_CODES


def test_documentation_table_is_generated_from_the_code() -> None:
    committed = (REPO / "docs" / "errors.md").read_text()
    assert committed == render_markdown(), "regenerate: python -m contentd.errdefs > docs/errors.md"
