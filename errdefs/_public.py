"""What a caller may see of an error: the one place internals are held back."""

from __future__ import annotations

import logging
import secrets

from ._classes import ContentdError, Internal, RemoteError, find

#: The reason of an unclassified failure's public error; its metadata holds the error id.
INTERNAL_ERROR_REASON = "INTERNAL_ERROR"

_log = logging.getLogger("contentd.errors")


def public_error(err: BaseException, *, passthrough_remote: bool = False) -> ContentdError:
    """The error to show a caller for `err`, which may be any exception.

    A ContentdError (or an exception caused by one) is shown as it is. Anything
    else is a bug or an unexpected failure: the caller gets an Internal error
    with a generic message and a fresh error id, and `err` is logged with that
    id; its own text, which may hold paths or internals, is never shown.

    An error decoded from another service (a RemoteError) keeps its class and
    reason but not that service's words, unless `passthrough_remote` is set.
    """
    found = find(err)
    if found is None:
        error_id = secrets.token_hex(6)
        _log.error(
            "internal error %s: %r", error_id, err, exc_info=err, extra={"error_id": error_id}
        )
        return Internal(
            f"unexpected server error (error id {error_id})",
            reason=INTERNAL_ERROR_REASON,
            metadata={"error_id": error_id},
        )
    if isinstance(found, RemoteError) and not passthrough_remote:
        return found.error_class()("remote service", reason=found.reason)
    return found
