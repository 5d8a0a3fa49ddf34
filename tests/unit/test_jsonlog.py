"""The JSON log line format (logs.py): one parseable object per record, same fields everywhere."""
from __future__ import annotations

import io
import logging
import logging.config

import orjson

from logs import JsonFormatter, dict_config


def _record(msg: str, *args, extra: dict | None = None, exc_info=None) -> logging.LogRecord:
    logger = logging.getLogger("t.jsonlog")
    return logger.makeRecord("t.jsonlog", logging.WARNING, __file__, 1, msg, args, exc_info, extra=extra)


def test_a_record_is_one_line_of_json_with_the_common_fields_and_its_extras():
    line = JsonFormatter("post").format(_record("user %s did %r", 7, "x\ny", extra={
        "event": "request", "request_id": "abc", "status": 201, "latency_ms": 1.5, "user_id": "7"}))
    assert "\n" not in line
    data = orjson.loads(line)
    assert data["msg"] == "user 7 did 'x\\ny'"
    assert (data["level"], data["service"], data["logger"]) == ("warning", "post", "t.jsonlog")
    assert data["ts"].endswith("Z") and "T" in data["ts"] and len(data["ts"]) == 24
    assert {k: data[k] for k in ("event", "request_id", "status", "latency_ms", "user_id")} == {
        "event": "request", "request_id": "abc", "status": 201, "latency_ms": 1.5, "user_id": "7"}
    for internal in ("args", "msecs", "pathname", "exc_info", "created"):
        assert internal not in data


def test_exceptions_and_values_json_cannot_hold_still_give_one_parseable_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record = _record("failed", extra={"thing": object(), "when": {1: b"x"}}, exc_info=sys.exc_info())
    data = orjson.loads(JsonFormatter("worker").format(record))
    assert "ValueError: boom" in data["exc"] and data["thing"].startswith("<object")
    assert data["when"] == {"1": "b'x'"}


def test_the_dict_config_routes_every_logger_through_the_formatter():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        config = dict_config("query", "INFO")
        config["handlers"]["default"]["stream"] = stream
        logging.config.dictConfig(config)
        logging.getLogger("uvicorn.error").info("started", extra={"event": "start", "color_message": "\x1b[1m"})
        logging.getLogger("uvicorn.access").info("GET / 200")  # replaced by the request events
        logging.getLogger("some.lib").debug("below the level")
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        assert [(d["logger"], d["msg"], d["service"], d.get("event")) for d in lines] == [
            ("uvicorn.error", "started", "query", "start")]
        assert "color_message" not in lines[0]
        assert dict_config("worker")["merge"] is True and "root" not in dict_config("worker")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
