"""The error classes: their words, wrapping, classification through cause chains."""

from __future__ import annotations

import pickle
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentd import errdefs
from contentd.errdefs import (
    ERROR_CLASSES,
    ContentdError,
    FailedPrecondition,
    NotFound,
    Unavailable,
)

DIGEST = "sha256:" + "ab" * 32


def test_taxonomy_covers_every_containerd_class() -> None:
    names = {cls.description for cls in ERROR_CLASSES}
    assert names == {
        "unknown",
        "invalid argument",
        "not found",
        "already exists",
        "permission denied",
        "resource exhausted",
        "failed precondition",
        "conflict",
        "not modified",
        "aborted",
        "out of range",
        "not implemented",
        "internal",
        "unavailable",
        "data loss",
        "unauthenticated",
        "canceled",
        "deadline exceeded",
    }


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_every_class_has_a_helper_and_a_documented_reason(cls: type[ContentdError]) -> None:
    helper = getattr(errdefs, "is_" + _snake(cls.__name__))
    assert helper(cls("x"))
    assert not helper(ValueError("x"))
    assert cls.__doc__


def test_message_reads_context_then_class() -> None:
    assert str(NotFound(f"content {DIGEST}")) == f"content {DIGEST}: not found"


def test_bare_error_reads_its_class() -> None:
    assert str(NotFound()) == "not found"


def test_reason_and_metadata_are_kept() -> None:
    err = Unavailable("ref x locked", reason="REF_LOCKED", metadata={"ref": "x"})
    assert err.reason == "REF_LOCKED"
    assert err.metadata == {"ref": "x"}
    assert str(err) == "ref x locked: unavailable"


def test_wrap_keeps_class_reason_and_cause() -> None:
    inner = Unavailable("ref x locked", reason="REF_LOCKED", metadata={"ref": "x"})
    outer = errdefs.wrap(inner, "opening writer")
    assert type(outer) is Unavailable
    assert str(outer) == "opening writer: ref x locked: unavailable"
    assert outer.reason == "REF_LOCKED"
    assert outer.metadata == {"ref": "x"}
    assert outer.__cause__ is inner


def _raised_from(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        raise outer from cause
    except BaseException as raised:
        return raised


def test_classify_looks_through_raise_from() -> None:
    err = _raised_from(RuntimeError("while reading"), NotFound(f"content {DIGEST}"))
    assert errdefs.classify(err) is NotFound
    assert errdefs.is_not_found(err)


def test_outermost_class_wins() -> None:
    err = _raised_from(Unavailable("store busy"), NotFound("content x"))
    assert errdefs.classify(err) is Unavailable
    assert not errdefs.is_not_found(err)


def test_unclassified_has_no_class() -> None:
    assert errdefs.classify(OSError("disk on fire")) is None
    assert errdefs.classify(None) is None
    assert not errdefs.is_internal(ValueError("x"))


def test_implicit_context_is_not_a_cause() -> None:
    # "During handling of X, another exception occurred" is not wrapping.
    err = ValueError("bug")
    err.__context__ = NotFound("x")
    assert errdefs.classify(err) is None


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_errors_pickle_with_reason_and_metadata(cls: type[ContentdError]) -> None:
    err = cls("doing things", reason="SOME_REASON", metadata={"k": "v"})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.message, back.reason, back.metadata) == ("doing things", "SOME_REASON", {"k": "v"})


@given(st.sampled_from(ERROR_CLASSES), st.text())
def test_rebase_undoes_str(cls: type[ContentdError], message: str) -> None:
    assert errdefs.rebase(cls, str(cls(message))) == message.removesuffix(": " + cls.description)


def test_rebase_strips_one_class_suffix_only() -> None:
    assert errdefs.rebase(FailedPrecondition, "a: failed precondition") == "a"
    assert errdefs.rebase(FailedPrecondition, "failed precondition") == ""
    assert errdefs.rebase(NotFound, "a: not found: not found") == "a: not found"
