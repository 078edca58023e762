"""Any HTTP server can be a torpor function: this one uses only the standard library.

torpor passes the port to listen on in PORT, calls POST /initialize once before sending traffic
(Function Compute's custom-container convention), then forwards /fn/http-server/<path> here.
"""

from __future__ import annotations

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()
state = {"initialized": False, "requests": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path == "/initialize":
            state["initialized"] = True
            self._send(200, {"initialized": True})
        elif self.path.startswith("/invoke"):
            state["requests"] += 1
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                self._send(400, {"error": "body is not JSON"})
                return
            self._send(200, {"received": payload, "initialized": state["initialized"],
                             "requests": state["requests"], "pid": os.getpid()})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"status": "ok", "uptime_s": round(time.time() - STARTED, 3)})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the instance log for errors


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
