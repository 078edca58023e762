"""Isolated instances (issue 12 #3): nothing of the server's environment, an unprivileged user of
each function's own when the server is root, and ``isolation: sandbox`` under bubblewrap; on real
``torpor serve`` processes."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FUNCTIONS, TorporServer, make_function

from torpor.backends.local.isolation import Credentials, InstanceUsers, base_env
from torpor.backends.local.launch import function_env
from torpor.backends.local.sandbox import sandbox_problem
from torpor.errors import SpecError
from torpor.spec import FunctionSpec, parse_spec

PROBE = FUNCTIONS / "probe"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def instance_pid(srv: TorporServer, name: str) -> int:
    live = [i for i in srv.instances(name) if i["state"] == "ready"]
    assert len(live) == 1, live
    return int(live[0]["pid"])


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A folder other users can cross (pytest's own tmp folders are 0700): as root, instances run
    as other users and must reach their files in the data dir."""
    root = Path(tempfile.mkdtemp(prefix="torpor-isolation-", dir="/tmp"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def serve(data_root: Path) -> Iterator[Any]:
    servers: list[TorporServer] = []

    def make(deploy: list[Path] | None = None, data_dir: Path | None = None) -> TorporServer:
        srv = TorporServer(data_dir or data_root / f"data{len(servers)}", deploy)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        if srv.process.poll() is None:
            srv.stop()


def needs_isolating_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a server that is not root runs instances as its own user")
    users = InstanceUsers(Path(tempfile.gettempdir()) / "unused", "auto")
    if users.problem is not None:
        pytest.skip(users.problem)


# the environment --------------------------------------------------------------------------------

def test_function_env_holds_the_spec_and_torpor_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "abc")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    spec = spec_of({"name": "probe", "runtime": {"handler": "model:Probe"},
                    "env": {"PROBE_SETTING": "x", "OMP_NUM_THREADS": "3"}})
    env = function_env(spec, 7, home="/home/probe")
    assert "SECRET_TOKEN" not in env
    assert set(env) - set(base_env(None)) == {
        "HOME", "PROBE_SETTING", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
        "TORPOR_FUNCTION", "TORPOR_REVISION", "PYTHONUNBUFFERED", "TORPOR_SERVER_PID"}
    assert (env["PROBE_SETTING"], env["OMP_NUM_THREADS"], env["OPENBLAS_NUM_THREADS"]) == (
        "x", "3", "1")
    assert (env["HOME"], env["LANG"], env["TORPOR_REVISION"]) == ("/home/probe", "de_DE.UTF-8", "7")
    assert env["PATH"].split(":")[0] == os.path.dirname(sys.executable)


@pytest.mark.parametrize("templates", [True, False], ids=["forked", "spawned"])
def test_server_secret_does_not_reach_instances(serve: Any, tmp_path: Path, templates: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """SECRET_TOKEN=abc set on ``torpor serve`` is in no instance's or template's
    /proc/PID/environ; the spec's env is."""
    monkeypatch.setenv("SECRET_TOKEN", "abc")
    folder = make_function(tmp_path, "probe", runtime={"handler": "model:Probe",
                                                       "templates": templates})
    srv = serve([folder])
    assert environ(srv.process.pid)["SECRET_TOKEN"] == "abc"
    assert srv.invoke("probe", {"op": "none"}).json()["outcome"] == "ok"
    pids = [instance_pid(srv, "probe")]
    template = srv.function("probe").get("template")
    if templates:
        assert template is not None and template["pid"] is not None, template
        pids.append(int(template["pid"]))
    for pid in pids:
        env = environ(pid)
        assert "SECRET_TOKEN" not in env
        assert env["PROBE_SETTING"] == "from-the-spec"
        assert env["TORPOR_FUNCTION"] == "probe"


# an unprivileged user per function -------------------------------------------------------------

def test_root_server_runs_each_function_as_its_own_user(serve: Any, tmp_path: Path) -> None:
    needs_isolating_root()
    a = make_function(tmp_path, "probe", name="probe-a", model={"path": "weights.bin"})
    (a / "weights.bin").write_bytes(b"\0" * 1000)
    b = make_function(tmp_path, "probe", name="probe-b", runtime={"handler": "model:Probe",
                                                                  "templates": False})
    srv = serve([a, b])
    data = srv.data_dir.resolve()
    assert stat.S_IMODE((data / "admin.key").stat().st_mode) == 0o600  # the server's admin key

    def probe(name: str, **payload: Any) -> dict[str, Any]:
        response = srv.invoke(name, payload)
        assert response.status_code == 200, response.text
        return dict(response.json())

    who_a, who_b = probe("probe-a", op="none"), probe("probe-b", op="none")
    assert who_a["uid"] != 0 and who_b["uid"] != 0 and who_a["uid"] != who_b["uid"]
    assert who_a["loaded_as"] == who_a["uid"]  # the template imported the module as that user
    assert (who_a["gid"], who_a["groups"]) == (who_a["uid"], [])
    code_a = Path(who_a["cwd"])
    code_b = Path(who_b["cwd"])
    assert code_a != code_b and (code_a / "model.py").is_file()
    assert probe("probe-a", op="read", path=str(code_a / "model.py"))["outcome"] == "ok"
    model = probe("probe-a", op="read", path=who_a["model"])
    assert (model["outcome"], model["bytes"]) == ("ok", 1000)
    assert probe("probe-a", op="write", path=who_a["model"])["outcome"] == "EACCES"
    assert probe("probe-b", op="read", path=who_a["model"])["outcome"] == "EACCES"
    for path in (data / "torpor.db", data / "admin.key", code_b / "model.py", data / "code",
                 data / "logs"):
        assert probe("probe-a", op="read" if path.is_file() else "list",
                     path=str(path))["outcome"] == "EACCES", path
    assert probe("probe-a", op="list", path=str(data))["outcome"] == "EACCES"
    assert probe("probe-a", op="write", path=str(code_a / "model.py"))["outcome"] == "EACCES"
    assert probe("probe-a", op="write", path=str(code_a / "new.py"))["outcome"] == "EACCES"
    assert probe("probe-b", op="write", path=str(code_b / "model.py"))["outcome"] == "EACCES"
    assert probe("probe-a", op="write", path=f"/tmp/torpor-probe-{os.getpid()}")["outcome"] == "ok"
    os.unlink(f"/tmp/torpor-probe-{os.getpid()}")
    assert probe("probe-a", op="write", path=f"{who_a['home']}/notes")["outcome"] == "ok"
    assert probe("probe-b", op="list", path=who_a["home"])["outcome"] == "EACCES"
    # still in their limit cgroups (joined after the fork, as the function's user)
    if srv.http.get("/healthz").json()["limits"] != "none":
        for name in ("probe-a", "probe-b"):
            instance = next(i for i in srv.instances(name) if i["state"] == "ready")
            groups = Path(f"/proc/{instance['pid']}/cgroup").read_text().splitlines()
            memory = ([line for line in groups if line.split(":")[1] == "memory"]  # v1
                      or [line for line in groups if line.startswith("0::")])  # v2
            assert len(memory) == 1 and memory[0].endswith("/" + instance["id"]), groups
    # the server still reads their logs, and stops them
    logs = srv.http.get("/api/v1/functions/probe-a/logs").text
    assert "torpor template: model:Probe loaded" in logs
    assert stat.S_IMODE(data.stat().st_mode) == 0o711
    assert stat.S_IMODE((data / "torpor.db").stat().st_mode) == 0o600
    assert srv.stop() == 0
    # restarted on the same data dir: the same users, their files readable again
    srv = serve(data_dir=srv.data_dir)
    again = probe("probe-a", op="read", path=who_a["model"])
    assert (again["uid"], again["outcome"], again["bytes"]) == (who_a["uid"], "ok", 1000)
    assert probe("probe-b", op="read", path=str(code_b / "model.py"))["uid"] == who_b["uid"]
    assert srv.stop() == 0


# the sandbox ------------------------------------------------------------------------------------

def spec_of(data: dict[str, Any]) -> FunctionSpec:
    return parse_spec(data, source="torpor.yaml", base_dir=PROBE)


def test_spec_sandbox_fields() -> None:
    spec = spec_of({"name": "s", "runtime": {"handler": "model:Probe"}, "isolation": "sandbox"})
    assert (spec.isolation, spec.network) == ("sandbox", False)
    with pytest.raises(SpecError) as info:
        spec_of({"name": "s", "runtime": {"handler": "model:Probe"}, "network": True})
    assert info.value.errors == [
        "(top level): network: only a sandbox can be without network; it applies with "
        "isolation: sandbox (an ordinary instance always has the network)"]
    with pytest.raises(SpecError) as info:
        spec_of({"name": "s", "runtime": {"command": ["srv"]}, "isolation": "sandbox"})
    assert info.value.errors == [
        "(top level): isolation: sandbox without network: true cannot run runtime.command: torpor "
        "reaches a command's server on a TCP port, which a sandbox without network hides; set "
        "network: true or use runtime.handler"]
    with pytest.raises(SpecError) as info:
        spec_of({"name": "s", "runtime": {"handler": "model:Probe"}, "isolation": "vm"})
    assert info.value.errors == ["isolation: Input should be 'process' or 'sandbox'"]


def test_deploy_refuses_a_sandbox_without_bwrap(serve: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """No bwrap on the server's PATH: deploy says so, and nothing of the function is left."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    assert sandbox_problem() == (
        "isolation: sandbox needs bubblewrap (bwrap), which is not installed on this machine "
        "(Debian: apt-get install bubblewrap); deploy without isolation: sandbox or install it")
    srv = serve()
    folder = make_function(tmp_path, "probe", isolation="sandbox")
    from torpor.code import pack_dir
    from torpor.spec import load_spec_file

    _, raw, base_dir = load_spec_file(folder)
    archive = pack_dir(base_dir)
    assert srv.http.put(f"/api/v1/code/{archive.digest}", content=archive.data).status_code == 201
    response = srv.http.post("/api/v1/functions", json={"spec": raw, "code": archive.digest})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        "isolation: sandbox needs bubblewrap (bwrap), which is not installed on this machine "
        "(Debian: apt-get install bubblewrap); deploy without isolation: sandbox or install it"]
    assert srv.http.get("/api/v1/functions/probe").status_code == 404
    assert not (srv.data_dir / "instances" / "probe").exists()


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener of the test on 127.0.0.1; its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def test_sandboxed_function(serve: Any, tmp_path: Path, listener: int) -> None:
    problem = sandbox_problem()
    if problem is not None:
        pytest.skip(problem)
    closed = make_function(tmp_path, "probe", name="boxed", isolation="sandbox")
    open_ = make_function(tmp_path, "probe", name="boxed-net", isolation="sandbox", network=True)
    srv = serve([closed, open_])

    def probe(name: str, **payload: Any) -> dict[str, Any]:
        response = srv.invoke(name, payload)
        assert response.status_code == 200, response.text
        return dict(response.json())

    first = probe("boxed", op="none")
    assert first["outcome"] == "ok" and first["home"] == "/tmp"
    code = Path(first["cwd"])
    marker = f"/tmp/torpor-boxed-{os.getpid()}"
    assert probe("boxed", op="write", path=marker, text="inside")["outcome"] == "ok"
    assert probe("boxed", op="read", path=marker)["bytes"] == len("inside")
    assert not os.path.exists(marker)  # its /tmp is its own
    assert probe("boxed-net", op="read", path=marker)["outcome"] == "ENOENT"
    for path in (f"/var/tmp/torpor-boxed-{os.getpid()}", str(code / "new.py"), "/etc/torpor-x"):
        assert probe("boxed", op="write", path=path)["outcome"] in ("EROFS", "EACCES"), path
        assert not os.path.exists(path)
    # its 127.0.0.1 is a loopback of its own, where nothing listens
    assert probe("boxed", op="connect", port=listener)["outcome"] == "ECONNREFUSED"
    assert probe("boxed-net", op="connect", port=listener)["outcome"] == "ok"
    pid = instance_pid(srv, "boxed")
    assert "bwrap" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert srv.stop() == 0


# the server config -------------------------------------------------------------------------------

def test_isolation_config() -> None:
    from torpor.config import parse_server_config

    config = parse_server_config({"isolation": {"instance_user": "nobody",
                                                "instance_uids": "3000000-3000009"}})
    assert (config.isolation.instance_user, config.isolation.uid_range) == (
        "nobody", (3000000, 3000009))
    assert parse_server_config({}).isolation.uid_range == (2000000, 2099999)
    for bad, message in (("3-2", "must be 1000 <= FIRST <= LAST < 4294967295, got '3-2'"),
                         ("many", "must look like 'FIRST-LAST' (two uids), got 'many'")):
        with pytest.raises(SpecError) as info:
            parse_server_config({"isolation": {"instance_uids": bad}}, source="config.yaml")
        assert info.value.errors == [f"isolation.instance_uids: {message}"]


def test_uids_are_the_functions_own_and_kept(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """As root: a distinct uid per function from the range, the same one after a restart, the
    range's last uid kept for the deploy check; a full range says so."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(InstanceUsers, "_blocker", staticmethod(lambda data_dir: None))
    monkeypatch.setattr("torpor.backends.local.isolation._subordinate_ranges", lambda: [])
    users = InstanceUsers(tmp_path, "auto", (3000000, 3000002))
    a, b = users.credentials("a"), users.credentials("b")
    assert (a, b) == (Credentials(3000000, 3000000), Credentials(3000001, 3000001))
    assert users.checker == Credentials(3000002, 3000002)
    with pytest.raises(OSError) as info:
        users.credentials("c")
    assert str(info.value) == ("isolation.instance_uids 3000000-3000002: every uid is taken; "
                               "widen the range")
    again = InstanceUsers(tmp_path, "auto", (3000000, 3000002))
    assert (again.credentials("b"), again.credentials("a")) == (b, a)
    assert stat.S_IMODE((tmp_path / "instance-uids.json").stat().st_mode) == 0o600
    assert InstanceUsers(tmp_path, "off").credentials("a") is None
    with pytest.raises(ValueError) as named:
        InstanceUsers(tmp_path, "root")
    assert str(named.value) == ("isolation.instance_user: root is not an unprivileged user; use "
                                "'off' to run instances as root")


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_sandboxed_instance_freezes_whole(serve: Any, tmp_path: Path) -> None:
    """Idle mode on a sandbox: bubblewrap and the instance it forked are frozen together, and a
    request thaws them."""
    problem = sandbox_problem()
    if problem is not None:
        pytest.skip(problem)
    folder = make_function(tmp_path, "probe", name="boxed", isolation="sandbox",
                           scaling={"provisioned": 1, "idle_mode": True, "idle_after_s": 0.3,
                                    "max_instances": 1, "tick_s": 0.5})
    srv = serve([folder])
    frozen = srv.wait_for(lambda: [i for i in srv.instances("boxed") if i["state"] == "frozen"],
                          timeout_s=30, what="a frozen sandboxed instance")[0]
    inside = descendants(int(frozen["pid"]))
    assert len(inside) >= 2  # bwrap's pid-namespace init and the instance
    for pid in inside:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        assert state in ("D", "T"), (pid, state)  # frozen (cgroup) or stopped (signal)
    response = srv.invoke("boxed", {"op": "none"})
    assert response.status_code == 200
    assert response.headers["x-torpor-start"] == "thawed"
    assert srv.stop() == 0


def test_a_sandbox_sees_the_interpreter_and_torpor_under_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout (and its venv) under /tmp would be hidden by the sandbox's private /tmp: those
    folders are bound again read-only, outermost only; nothing outside /tmp is bound again."""
    from torpor.backends.local import sandbox

    monkeypatch.setattr(sandbox.sys, "prefix", "/tmp/ci/.venv")
    monkeypatch.setattr(sandbox.sys, "base_prefix", "/usr")
    monkeypatch.setattr(sandbox.sys, "executable", "/usr/bin/python3")
    monkeypatch.setattr(sandbox, "__file__", "/tmp/ci/torpor/backends/local/sandbox.py")
    assert sandbox.runtime_paths() == ["/tmp/ci"]
    argv = sandbox.sandbox_argv(["python3"], cwd="/", network=False, writable=[])
    assert argv[argv.index("--tmpfs") + 1] == "/tmp"
    assert argv.index("/tmp/ci") > argv.index("--tmpfs")  # after the private /tmp: it wins
    monkeypatch.setattr(sandbox, "__file__", "/opt/torpor/torpor/backends/local/sandbox.py")
    assert sandbox.runtime_paths() == ["/tmp/ci/.venv"]
