"""``torpor serve --log-format json``: one JSON object a line, for log shippers.

``{"time", "level", "logger", "message"}``, plus ``exc_info`` as text when there is one. The gateway's
lines carry ``request_id=...`` in their message, so a request can be found by its id in either format.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data)
