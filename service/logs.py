"""Logging setup: readable text by default, one JSON object per line when configured.

A JSON line carries ``ts`` (IST, ms), ``level``, ``logger``, ``message`` and every structured
field passed with ``extra={...}`` (e.g. ``phase``, ``covered``, ``connection``), so the
lifecycle can be followed by a log query as well as read. Text lines show only the message:
call sites put what matters in it too.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys

import orjson

from feeds.model import IST


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": dt.datetime.fromtimestamp(record.created, IST).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # default=str: an extra orjson cannot encode (an enum member, a path) is still logged.
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str = "INFO", json_format: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every connection failure with a traceback at INFO; ours are enough.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
