"""Logging: stderr or syslog, text or JSON, and the one line written per finished session.

Session records carry their fields in ``extra={"fields": {...}}`` so that the JSON formatter
emits them as keys and the text formatter as ``key=value`` pairs; nothing is formatted unless
the record is actually emitted.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "logger", "setup_logging"]

logger = logging.getLogger("socksx")


#: (whole second, its strftime): formatted once per second, not once per line; one tuple, so a
#: reader in another thread never sees a second paired with another second's text
_second_stamp: tuple[int, str] = (-1, "")


def _utc(created: float) -> str:
    global _second_stamp
    second = int(created)
    cached = _second_stamp
    if cached[0] != second:
        cached = _second_stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(created % 1 * 1000):03d}Z"


#: characters that would make a bare value ambiguous in a key=value line
_NEEDS_QUOTES = re.compile(r'[ "=\\]')


def _quote(value: Any) -> str:
    # Client-chosen text (user names, host names) must not forge lines or reach a terminal as
    # control sequences: anything but plain printable text is JSON-escaped.
    if type(value) is int:
        return str(value)  # the byte counts and ids of every session line: always plain
    text = str(value)
    if not text or not text.isprintable() or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


def _printable(text: str) -> str:
    return text if text.isprintable() else json.dumps(text)[1:-1]


class TextFormatter(logging.Formatter):
    """``TIME LEVEL message key=value ...``; values with spaces are JSON-quoted."""

    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        """Render one record on one line (tracebacks follow on their own lines)."""
        parts = [_utc(record.created)] if self.with_time else []
        parts += [record.levelname.lower(), _printable(record.getMessage())]
        fields = getattr(record, "fields", None)
        if fields:
            parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, msg and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as JSON."""
        out: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(
    fmt: str = "text",
    target: str = "stderr",
    level: str = "info",
    syslog_address: str = "/dev/log",
) -> None:
    """Install one handler on the ``socksx`` logger (replacing any earlier one)."""
    handler: logging.Handler
    if target == "syslog":
        address: str | tuple[str, int] = syslog_address
        if not syslog_address.startswith("/"):
            # HOST:PORT of a UDP receiver ([v6]:port allowed); a path is a Unix socket.
            host, _, port = syslog_address.rpartition(":")
            address = (host.strip("[]"), int(port))
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        formatter: logging.Formatter = (
            JsonFormatter() if fmt == "json" else TextFormatter(with_time=False)
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(formatter)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
