"""The daemon's log: text lines for people (the default), or one JSON object a line for machines.

Request lines carry their fields as the record's attributes (`REQUEST_FIELDS`):
the text format says them in its words, the JSON format gives each its own key.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

#: The fields a request line adds to its record: the call's id (made by the daemon),
#: its method (a gRPC full method, or an HTTP method and registry route), namespace,
#: status code (a gRPC code name, or an HTTP status) and duration in milliseconds.
REQUEST_FIELDS: Final = ("request_id", "method", "namespace", "code", "duration_ms")
#: The log formats `contentd serve --log-format` offers.
LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has; anything else on a record was passed in `extra`.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, RFC 3339), level, logger, message, then the
    record's extra fields (a request line's, an internal error's error_id), and the
    traceback, if any, as one string under "exception"."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a Path or a datetime in `extra` is still one line of JSON.
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """Send every record (the daemon's, the collector's, the registry's, libraries') to
    stderr at `level` and above, in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # filelock narrates every acquire at debug; ours says what matters.
    logging.getLogger("filelock").setLevel(logging.WARNING)
