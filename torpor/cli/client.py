"""A thin client for the control API; every failure becomes one sentence (:class:`CliError`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from torpor.auth import ADMIN_KEY_FILENAME
from torpor.constants import DEFAULT_DATA_DIR

api_key_option: str | None = None  # torpor --api-key KEY (also TORPOR_API_KEY)


class CliError(Exception):
    """Printed as one line on stderr; the command exits with code 1."""


def find_api_key(explicit: str | None = None) -> str | None:
    """The key to send: ``--api-key``, else TORPOR_API_KEY, else the admin key that ``torpor
    serve`` wrote into this machine's data dir (TORPOR_HOME, default ``.torpor``)."""
    for value in (explicit, api_key_option, os.environ.get("TORPOR_API_KEY")):
        if value and value.strip():
            return value.strip()
    path = Path(os.environ.get("TORPOR_HOME") or DEFAULT_DATA_DIR) / ADMIN_KEY_FILENAME
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class ApiClient:
    def __init__(self, server: str, timeout_s: float = 60.0, api_key: str | None = None) -> None:
        self.server = server.rstrip("/")
        key = find_api_key(api_key)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.server, timeout=timeout_s, headers=headers)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise CliError(
                f"cannot reach the torpor server at {self.server}: is `torpor serve` running? "
                "(set --server or TORPOR_SERVER)"
            ) from None
        except httpx.TimeoutException:
            raise CliError(f"the torpor server at {self.server} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise CliError(f"request to {self.server}{path} failed: {exc}") from None

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise CliError(error_sentence(response))
        return response.json()


    def lines(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        """The response's lines as they arrive (no read timeout: a followed log may stay quiet)."""
        try:
            with self._http.stream("GET", path, params=params,
                                   timeout=httpx.Timeout(10.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CliError(error_sentence(response))
                yield from response.iter_lines()
        except httpx.ConnectError:
            raise CliError(f"cannot reach the torpor server at {self.server}: is `torpor serve` "
                           "running? (set --server or TORPOR_SERVER)") from None
        except httpx.RemoteProtocolError:
            raise CliError(f"the torpor server at {self.server} closed the log stream") from None


def error_sentence(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip() or response.reason_phrase
        return f"server answered {response.status_code}: {text}"
    if isinstance(body, dict) and "error" in body:  # torpor's one error shape
        return str(body["error"])
    if isinstance(body, dict) and "detail" in body:  # FastAPI request validation
        return f"server rejected the request: {body['detail']}"
    return f"server answered {response.status_code}: {body}"
