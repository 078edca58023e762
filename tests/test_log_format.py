"""``torpor serve --log-format json``: one JSON object a line."""

from __future__ import annotations

import json
import logging
import sys

from torpor.log_format import JsonFormatter


class TestJsonFormatter:
    def test_one_object_a_line(self) -> None:
        """time (UTC, ms), level, logger and the formatted message."""
        record = logging.LogRecord("torpor.gateway", logging.WARNING, __file__, 1,
                                   "request_id=%s status=%d", ("abc", 502), None)
        record.created = 1_800_000_000.25
        line = JsonFormatter().format(record)
        assert "\n" not in line
        assert json.loads(line) == {"time": "2027-01-15T08:00:00.250+00:00", "level": "warning",
                                    "logger": "torpor.gateway", "message": "request_id=abc status=502"}

    def test_exception_text(self) -> None:
        """A logged exception travels as text inside the object."""
        try:
            raise ValueError("boom")
        except ValueError:
            record = logging.LogRecord("torpor", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
        data = json.loads(JsonFormatter().format(record))
        assert data["message"] == "failed" and "ValueError: boom" in data["exc_info"]
