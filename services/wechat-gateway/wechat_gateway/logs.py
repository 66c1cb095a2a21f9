"""Structured logging: one JSON (or text) line per event, never a secret or message content.

Fields passed through `extra=` become top-level JSON keys. Openids are logged only as a
short hash (`user`), enough to follow one user through the logs without exposing them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from typing import Any, cast

import orjson

from . import json_codec

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Dataclasses and datetimes go through str() as any other object: orjson would otherwise
# expand a dataclass field by field, past a __repr__ that hides secrets (AccountSettings).
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def json_line(document: dict[str, Any]) -> str:
    """`document` as compact JSON (`{"event":"request",...}`: the runbook's greps match it).

    Values that are not JSON types become str(), as with the json module before.
    """
    return json_codec.dumps(document, default=str, option=_ORJSON_OPTIONS).decode(
        "utf-8", "surrogatepass"
    )


def user_hash(openid: str) -> str:
    return hashlib.sha256(openid.encode("utf-8")).hexdigest()[:12] if openid else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = extras(record)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return self.format_fields(
            record.created, record.levelname, record.name, record.getMessage(), fields
        )

    @staticmethod
    def format_fields(
        created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> str:
        document = {
            "ts": utc_timestamp_ms(created),
            "level": level.lower(),
            "logger": logger,
            "pid": os.getpid(),
            "msg": message,
        }
        document.update(fields)
        return json_line(document)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = self.format_fields(
            record.created, record.levelname, record.name, record.getMessage(), extras(record)
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    @staticmethod
    def format_fields(
        created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        line = f"{stamp},{int(created % 1 * 1000):03d} {level:<7} {logger}: {message}"
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call passed with `extra=`."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


_second_prefix: tuple[int, str] = (-1, "")


def utc_timestamp_ms(epoch_s: float) -> str:
    """ISO 8601 in UTC with milliseconds (2026-11-29T05:23:33.247+00:00), cheaply."""
    global _second_prefix
    second = int(epoch_s)
    if _second_prefix[0] != second:
        _second_prefix = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    millis = int((epoch_s - second) * 1000)
    return f"{_second_prefix[1]}.{millis:03d}+00:00"


_handler: logging.StreamHandler | None = None


def write_info(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """An INFO line through the configured handler, without a LogRecord.

    For the one line every request writes: building and dispatching a LogRecord costs
    more than formatting the line (measured under load). Same handler, format and level;
    like logging, it never raises: a failure goes through logging, which reports it.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _handler
    if handler is None:  # configure() not called: whatever logging is set up takes it
        logger.info(message, extra=fields)
        return
    try:
        formatter = cast(JsonFormatter | TextFormatter, handler.formatter)
        line = formatter.format_fields(time.time(), "INFO", logger.name, message, fields)
        with handler.lock:  # type: ignore[union-attr]
            handler.stream.write(line + "\n")
            handler.stream.flush()
    except Exception:
        logger.info(message, extra=fields)


def configure(level: str, fmt: str) -> None:
    """Route the gateway's loggers to stderr in the chosen format (idempotent).

    Only the gateway's own loggers: the process-wide switches of the logging module stay
    as they are, since Gunicorn's own lines in the same process print `%(process)d`.
    """
    global _handler
    handler = _handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("wechat_gateway")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
