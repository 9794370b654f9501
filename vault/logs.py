"""Log output: human-readable lines, or one JSON object per line for a log shipper or SIEM.

The JSON form carries ``time``, ``level``, ``logger``, ``message`` and, while an HTTP request is
being handled, its ``request_id`` (set by the API's middleware through ``REQUEST_ID``, a context
variable, so every line logged on the request's behalf carries it without being passed down).
An exception adds its class name and the traceback's frames (file, line, function: no source
text), never the exception's message:
messages of third-party exceptions may quote the input that caused them, and our own log calls
are the only text we vouch for (they never contain patient identifiers or token values).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import traceback
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")

# The id of the HTTP request being handled in this task (None outside requests).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("imagevault_request_id", default=None)


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside strings are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, object] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            # Frames as file:line in function, without the source text (which may hold literals).
            line["stack"] = "\n".join(f"{frame.filename}:{frame.lineno} in {frame.name}"
                                      for frame in traceback.extract_tb(record.exc_info[2]))
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def configure_logging(level: str, log_format: str = "text") -> None:
    """Root logging to stderr at ``level`` (an unknown name means INFO) in ``log_format``; like
    ``logging.basicConfig``, nothing changes when the root logger already has handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    number = logging.getLevelName(level.upper())
    logging.basicConfig(level=number if isinstance(number, int) else logging.INFO, handlers=[handler])
