"""Logs a person can search: one JSON object per line, the same format from every process
(the Post service, the query service, the stream worker).

Every line has ``ts`` (ISO-8601 UTC, milliseconds), ``level``, ``service``, ``logger`` and
``msg`` (the log message, as before); an exception adds ``exc`` (its traceback).
Events of interest carry their fields as well, given as ``extra``::

    log.info("request", extra={"event": "request", "request_id": ..., "status": 201, ...})

The fields of the events the project logs (``grep '"event":"request"'``, or ``jq``):

* ``request`` (both HTTP services, ``api.common.ObserveMiddleware``): ``request_id``
  (the client's ``X-Request-Id`` or a new one, echoed in the response), ``method``,
  ``route`` (the template, e.g. ``/v1/users/{user_id}/following``), ``status``,
  ``latency_ms`` and ``user_id`` once the request was authenticated;
* ``batch`` (the worker, ``agents.metrics.BatchTimer``): ``stage``, ``events``, ``ms``;
* ``store_retry`` (the worker, ``agents.sinks.with_retry``): ``store_op``, ``attempt``,
  ``error``, ``retry_in_s``; ``batch_retry`` and ``batch_isolate`` (``agents.failures``).

Configured once per process by :func:`dict_config`: uvicorn's ``log_config`` (the HTTP
services, ``api.common.serve``), the Faust app's ``logging_config`` (the worker), or
:func:`configure`.
"""
from __future__ import annotations

import logging
import logging.config
from datetime import datetime, timezone
from typing import Any

import orjson

# What every LogRecord has; anything else on a record came from ``extra`` (but uvicorn's
# ``color_message``, the message with terminal colours).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName", "color_message"}


def _iso(created: float) -> str:
    dt = datetime.fromtimestamp(created, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON (orjson; values it cannot encode become strings)."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exc"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def dict_config(service: str, level: str | int | None = None, stream: str = "ext://sys.stdout") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` that sends every record to ``stream`` as JSON lines.
    With ``level`` None it is ``"merge"``-able into mode's (Faust's) own configuration, which
    keeps the worker's ``-l`` level."""
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "service": service}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": stream}},
        # uvicorn's own access lines are replaced by the services' request events (and
        # switched off: ``api.common.serve``).
        # NOTSET: the root's level decides, whatever an earlier uvicorn in this process set
        # (uvicorn sets its loggers' levels from --log-level after applying this config).
        "loggers": {"uvicorn.access": {"level": "WARNING"},
                    "uvicorn": {"level": "NOTSET", "handlers": [], "propagate": True},
                    "uvicorn.error": {"level": "NOTSET", "handlers": [], "propagate": True}},
    }
    if level is None:
        config["merge"] = True
    else:
        config["root"] = {"level": level if isinstance(level, int) else level.upper(), "handlers": ["default"]}
    return config


def configure(service: str, level: str | int = "INFO") -> None:
    """JSON lines on stderr for this process."""
    logging.config.dictConfig(dict_config(service, level, stream="ext://sys.stderr"))
