"""``log_format = "json"``: one JSON object per line with time, level, logger, message and the
request id where there is one; exceptions by class and stack, never by message."""

from __future__ import annotations

import json
import logging
import re
import urllib.request

import pytest

from tests.infra.daemon import Daemon, cli
from vault.config import ConfigError, load_config
from vault.logs import REQUEST_ID, JsonLineFormatter


def record(message: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("vault.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_line_has_the_documented_keys_and_no_request_id_outside_requests():
    line = json.loads(JsonLineFormatter().format(record("stored %d of %s", 3, "x\ny")))
    assert set(line) == {"time", "level", "logger", "message"}
    assert line["level"] == "WARNING" and line["logger"] == "vault.test" and line["message"] == "stored 3 of x\ny"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_the_request_id_of_the_current_request_is_added():
    token = REQUEST_ID.set("req-12345678")
    try:
        text = JsonLineFormatter().format(record("failed"))
    finally:
        REQUEST_ID.reset(token)
    assert "\n" not in text and json.loads(text)["request_id"] == "req-12345678"


def test_an_exception_gives_its_class_and_stack_but_not_its_message():
    try:
        raise ValueError("patient 943 476 5919 did something")
    except ValueError:
        import sys

        line = json.loads(JsonLineFormatter().format(record("unexpected", exc_info=sys.exc_info())))
    assert line["exc_type"] == "ValueError" and "test_json_logs.py" in line["stack"]
    assert "943" not in json.dumps(line)


def test_an_unknown_format_is_a_configuration_error():
    assert load_config(environ={"IMAGEVAULT_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format must be 'text' or 'json'"):
        load_config(environ={"IMAGEVAULT_LOG_FORMAT": "xml"})


def test_the_daemon_writes_only_json_lines_and_names_each_request(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    daemon = Daemon(data_dir, tmp_path / "daemon.log", env={"IMAGEVAULT_LOG_FORMAT": "json"})
    try:
        request = urllib.request.Request(daemon.url + "/healthz", headers={"X-Request-Id": "probe-0000001"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        assert daemon.stop() == 0
    lines = [json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines()]
    assert len(lines) >= 3 and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "aiohttp.access"]
    assert [line.get("request_id") for line in access] == ["probe-0000001"]
    assert all("request_id" not in line for line in lines if line["logger"] != "aiohttp.access")
