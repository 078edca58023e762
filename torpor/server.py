"""``torpor serve``: gateway, control API, reconciler and store in one process on one port.

``/fn/{name}/...`` goes to the gateway (raw ASGI, no framework on the hot path), ``/v1/...`` to the
OpenAI front door and ``/v2/...`` to the Open Inference Protocol's; everything else to the FastAPI
control app. ``/fn/...`` and the front doors of an ``auth: key`` function need an API key of its
tenant or an admin's (:mod:`torpor.auth`; checked in memory, no store read per request).
SIGINT/SIGTERM stop every instance before the process exits; a lock file keeps a
second server off the same data directory.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path
from typing import IO, Any

import yaml

from torpor import __version__
from torpor.api import console
from torpor.api.app import create_api
from torpor.api.metrics import LlmCollector
from torpor.api.sampler import Sampler
from torpor.backends import InstanceBackend
from torpor.config import HttpConfig, load_server_config
from torpor.datadir import PRIVATE_UMASK, make_private
from torpor.error_shape import error_json
from torpor.errors import DataDirLocked, SpecError, TorporError
from torpor.gateway.frontdoor import AUTHENTICATE, UNAUTHORIZED, reply, request_id_of
from torpor.gateway.oip import OipFrontDoor
from torpor.gateway.openai import OpenAIFrontDoor
from torpor.gateway.proxy import Gateway
from torpor.httpserver import HttpServer, Limits, default_max_connections, raise_fd_limit
from torpor.log_format import JsonFormatter
from torpor.platform import CONFIG_FILENAME, Platform
from torpor.safe_yaml import read_yaml
from torpor.spec import load_spec_file
from torpor.store.store import store_url
from torpor.types import Receive, Scope, Send

log = logging.getLogger("torpor")
LOCK_FILENAME = "serve.lock"
FD_RESERVE = 256  # file descriptors http.max_connections must leave to instances, the store, logs


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data dir for the life of the process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / LOCK_FILENAME, "a+")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DataDirLocked(
            f"another torpor serve (pid {holder}) is already using data dir {data_dir}; "
            "stop it or choose another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class InvokeAccess:
    """May a request invoke a function: it is ``auth: public``, or the request's key is its
    tenant's or an admin's (the platform's in-memory key table and owners)."""

    def __init__(self, platform: Platform) -> None:
        self.keys = platform.keys
        self.functions = platform.functions
        self.owners = platform.owners

    def may_invoke(self, scope: Scope, name: str) -> bool:
        fn = self.functions.get(name)
        if fn is None:
            return False
        return self.keys.may_invoke(scope["headers"], fn.spec.auth, self.owners.get(name))

    def admit(self, scope: Scope, name: str) -> bool:
        """``may_invoke``; a request let in by its key loses its ``Authorization`` header (an admin's
        key would otherwise reach a tenant's code). A public function gets the header as sent: it
        may be the function's own scheme."""
        if not self.may_invoke(scope, name):
            return False
        if self.keys.enabled and self.functions[name].spec.auth == "key":
            scope["headers"] = [h for h in scope["headers"] if h[0] != b"authorization"]
        return True


class RootApp:
    def __init__(self, platform: Platform, deploy: list[Path]) -> None:
        self.platform = platform
        self.deploy_paths = deploy
        metrics = platform.metrics
        self.gateway = Gateway(platform.reconciler.routes, platform.clock, observer=metrics.requests,
                               max_body_bytes=platform.config.http.max_body_bytes)
        self.sampler = Sampler(platform, metrics.requests)
        self.api = create_api(platform)
        console.install(self.api, platform, self.sampler)
        # protocol front doors: OpenAI's API under /v1/, the Open Inference Protocol under /v2
        self.access = InvokeAccess(platform)
        self.openai = OpenAIFrontDoor(self.gateway, platform.functions, platform.clock,
                                      access=self.access)
        self.oip = OipFrontDoor(self.gateway, platform.functions, self.access)
        metrics.registry.register(LlmCollector(self.openai.stats))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/fn/"):
            if self.platform.keys.enabled:
                name = scope["path"][4:].partition("/")[0].partition("@")[0]
                if name in self.platform.functions and not self.access.admit(scope, name):
                    request_id = request_id_of(scope)
                    await reply(send, 401, error_json(UNAUTHORIZED, "unauthorized", name, request_id),
                                request_id, [AUTHENTICATE])
                    return
            await self.gateway(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.openai(scope, receive, send)
        elif scope["type"] == "http" and (scope["path"] == "/v2" or scope["path"].startswith("/v2/")):
            await self.oip(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.platform.startup()
                    for path in self.deploy_paths:
                        fn = await self.platform.deploy_folder(path)
                        log.info("deployed %s from %s", fn.name, path)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.sampler.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.sampler.stop()
                await self.platform.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OverflowError:
            raise TorporError(f"port {port} is out of range; choose --port from 1 to 65535") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TorporError(f"port {port} on {host} is already in use; choose --port") from None
            raise TorporError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def is_loopback(host: str) -> bool:
    """Is ``host`` an address only this machine reaches (127.0.0.0/8, ::1, localhost)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_setting(auth: str | None, host: str, config_enabled: bool) -> bool:
    """Whether API keys are asked for: ``--auth on|off`` wins over the config's ``auth``; off is
    refused unless the server listens on a loopback address only."""
    if auth is not None and auth not in ("on", "off"):
        raise TorporError(f"--auth must be on or off, not {auth!r}")
    enabled = config_enabled if auth is None else auth == "on"
    if not enabled and not is_loopback(host):
        how = "--auth off" if auth == "off" else "auth: off in the server config"
        raise TorporError(
            f"{how} is refused on {host}: without API keys anyone who reaches the port could "
            "deploy and run code on this machine, so auth may be off only on a loopback address "
            "(--host 127.0.0.1)")
    return enabled


def ray_backend(data_dir: Path, config: Path | None, ray_address: str | None
                ) -> InstanceBackend | None:
    """The Ray backend when ``--ray`` is given or the server config says ``backend: ray``; None for
    the local one. Ray is imported only in the first case."""
    from torpor.backends.ray.config import BackendConfigError, ray_config

    path = config if config is not None else data_dir / CONFIG_FILENAME
    raw: Any = None
    if path.is_file():
        try:
            raw = read_yaml(path)
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            raw = None  # Platform's own read of the file reports it
    try:
        settings = ray_config(raw if isinstance(raw, dict) else None, ray_address)
    except BackendConfigError as exc:
        raise SpecError(str(path) if ray_address is None else "--ray", [str(exc)]) from None
    if settings is None:
        return None
    try:
        from torpor.backends.ray import RayBackend
    except ImportError:
        raise TorporError("the Ray backend needs Ray: pip install 'torpor[ray]'") from None
    return RayBackend(settings)


def http_limits(config: HttpConfig, fd_limit: int, source: str = "config") -> Limits:
    """The HTTP server's bounds from the config's ``http:`` section; connection caps default to
    what ``fd_limit`` (the soft RLIMIT_NOFILE, already raised to the hard one) allows."""
    total = config.max_connections
    if total is None:
        total = default_max_connections(fd_limit)
    elif total > fd_limit - FD_RESERVE:
        raise SpecError(source, [
            f"http.max_connections: {total} needs more file descriptors than this process may open "
            f"({fd_limit} (RLIMIT_NOFILE) less {FD_RESERVE} for instances and the store); lower it "
            f"to at most {max(1, fd_limit - FD_RESERVE)} or raise the hard limit (ulimit -Hn)"])
    per_client = config.max_connections_per_client
    if per_client is None:
        per_client = max(1, total // 4)
    return Limits(max_header_bytes=config.max_header_bytes, header_timeout_s=config.header_timeout_s,
                  keep_alive_s=config.keep_alive_s, max_connections=total,
                  max_connections_per_client=per_client)


def serve(host: str, port: int, data_dir: Path, deploy: list[Path], log_level: str = "info",
          config: Path | None = None, log_format: str = "text",
          ray_address: str | None = None, store: str | None = None,
          auth: str | None = None) -> None:
    if log_format not in ("text", "json"):
        raise TorporError(f"--log-format must be text or json, not {log_format!r}")
    data_dir = data_dir.resolve()
    if store is not None:
        store_url(store)  # a malformed --store fails before anything starts; reaching it, below
    for path in deploy:  # fail before starting anything
        load_spec_file(path)
    config_path = config if config is not None else data_dir / CONFIG_FILENAME
    auth_enabled = auth_setting(auth, host, load_server_config(
        config_path if config_path.is_file() or config is not None else None).auth.enabled)
    backend = ray_backend(data_dir, config, ray_address)
    os.umask(PRIVATE_UMASK)  # everything under the data directory is the server user's alone
    make_private(data_dir)
    lock = lock_data_dir(data_dir)
    _check_port(host, port)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), handlers=[handler])
    holder = f"torpor serve pid {os.getpid()} on {socket.gethostname()}"
    platform = Platform(data_dir, config_path=config, backend=backend, store=store, holder=holder,
                        auth=auth_enabled)
    fd_limit = raise_fd_limit()
    limits = http_limits(platform.config.http, fd_limit, str(config or data_dir / CONFIG_FILENAME))
    log.info("connections: at most %d (%d per client address) of %d file descriptors",
             limits.max_connections, limits.max_connections_per_client, fd_limit)
    if not auth_enabled:
        log.warning("auth is off: no API key is asked for (allowed only on loopback %s)", host)
    # torpor's own lean HTTP/1.1 server (uvloop + httptools): the gateway's cost is part of the
    # product (bench/gateway.py); a finished graceful shutdown on SIGINT/SIGTERM exits with 0
    server = HttpServer(RootApp(platform, deploy), lifespan=True, graceful_timeout_s=10, limits=limits)
    log.info("torpor %s serving on http://%s:%d (data dir %s, store %s)", __version__, host, port,
             data_dir, platform.store.describe())
    try:
        server.run(host=host, port=port)
    finally:
        lock.close()
    if not server.started:
        raise TorporError("torpor serve failed to start; see the log above")


