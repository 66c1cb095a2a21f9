"""Structured logging: one JSON (or text) line per event, never a secret or message content.

Fields passed through `extra=` become top-level JSON keys. Openids are logged only as a
short hash (`user`), enough to follow one user through the logs without exposing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time

import orjson

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def user_hash(openid: str) -> str:
    return hashlib.sha256(openid.encode("utf-8")).hexdigest()[:12] if openid else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line. orjson: the request line is written for every callback."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": utc_timestamp_ms(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD:
                document[name] = value
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:  # e.g. a lone surrogate, which the json module escapes
            return json.dumps(document, ensure_ascii=False, default=str)


_second_prefix: tuple[int, str] = (-1, "")


def utc_timestamp_ms(epoch_s: float) -> str:
    """ISO 8601 in UTC with milliseconds (2026-11-29T05:23:33.247+00:00), cheaply."""
    global _second_prefix
    second = int(epoch_s)
    if _second_prefix[0] != second:
        _second_prefix = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    millis = int((epoch_s - second) * 1000)
    return f"{_second_prefix[1]}.{millis:03d}+00:00"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        line = (
            f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        line = f"{line} {extras}" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str, fmt: str) -> None:
    """Route the gateway's loggers to stderr in the chosen format (idempotent).

    Every callback writes a line, so the record skips what no line prints: the caller's
    file and line, thread and process names (the logging HOWTO's "Optimization").
    """
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("wechat_gateway")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
