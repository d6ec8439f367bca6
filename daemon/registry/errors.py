"""Registry errors: the ones handlers raise, and how every error is answered.

An error is an errdefs class with a reason; the errdefs table turns it into
the spec's code, status and ``{"errors": [...]}`` body. Here are the errors
more than one handler raises, the headers some answers add, the answer
itself, and the log that puts requests aiohttp's parser refuses in their place.
"""

from __future__ import annotations

import logging
import re
import weakref
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from contentd.errdefs import ContentdError, InvalidArgument, NotFound, to_http

_log = logging.getLogger("contentd.daemon")


def registry_error(
    cls: type[ContentdError], message: str, code: str, **metadata: str
) -> ContentdError:
    """An error of class `cls` whose reason is `code`, which the errdefs table answers by."""
    return cls(message, reason=code, metadata=metadata)


# What some errors add to their answer: headers (the upload's Range on a 416).
# Statuses are the errdefs table's alone.
_ANSWER_HEADERS: weakref.WeakKeyDictionary[ContentdError, dict[str, str]] = (
    weakref.WeakKeyDictionary()
)


def answered_with(error: ContentdError, *, headers: dict[str, str]) -> ContentdError:
    """`error`, whose answer will carry `headers` too."""
    _ANSWER_HEADERS[error] = headers
    return error


def blob_unknown(digest: str) -> ContentdError:
    """BLOB_UNKNOWN: the repository has no blob `digest`."""
    return registry_error(NotFound, f"blob {digest}", "BLOB_UNKNOWN", digest=digest)


def upload_unknown(session: str) -> ContentdError:
    """BLOB_UPLOAD_UNKNOWN: no upload session `session` (completed, canceled or never started)."""
    return registry_error(NotFound, f"upload {session}", "BLOB_UPLOAD_UNKNOWN")


def manifest_unknown(reference: str) -> ContentdError:
    """MANIFEST_UNKNOWN: the repository has no manifest by `reference` (a tag or digest)."""
    return registry_error(
        NotFound, f"manifest {reference}", "MANIFEST_UNKNOWN", reference=reference
    )


def digest_invalid(message: str) -> ContentdError:
    """DIGEST_INVALID: a digest that is no digest, or bytes that are not what it names."""
    return registry_error(InvalidArgument, message, "DIGEST_INVALID")


def error_answer(request: web.Request, exc: Exception) -> web.Response:
    """The registry's answer to `exc`: the errdefs table's status and body, and any headers."""
    answer = to_http(exc)
    status = answer.status
    headers: dict[str, str] = {"Content-Type": answer.content_type}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="contentd"'
    if isinstance(exc, ContentdError) and exc in _ANSWER_HEADERS:
        headers.update(_ANSWER_HEADERS.pop(exc))
    response = web.Response(status=status, body=answer.body, headers=headers)
    _log.debug("%s %s: %d %s", request.method, request.path, answer.status, exc)
    return response


def one_line(error: BaseException, limit: int = 200) -> str:
    """An error's words on one line, cut short: parser errors quote what the client sent."""
    # aiohttp's parser errors start with their status: "400, message: ...".
    text = re.sub(r"^\d{3}, message:\s*", "", " ".join(str(error).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """The log aiohttp's connection handler writes to, with malformed requests put in their place.

    aiohttp logs every request its parser refuses (a URL past its line
    limit, a malformed header) at ERROR with a traceback, then answers it
    400 before any handler sees it, and logs a body that fails to decode
    again as it drains it after the answer. That is the client's mistake,
    not the server's: it becomes one INFO line. Anything else stays as
    aiohttp logs it.
    """

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(error, (HttpProcessingError, web.RequestPayloadError)):
            # aiohttp passes the client's address as the one argument, when it has it.
            origin = f" from {args[0]}" if args else ""
            self.logger.info("refused a malformed request%s: %s", origin, one_line(error))
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)
