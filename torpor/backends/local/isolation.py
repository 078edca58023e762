"""What separates an instance from the server and from other functions (docs/isolation.md).

- **Environment**: an instance (or template) gets :func:`base_env` (a few variables the interpreter
  needs, nothing else of the server's), then its spec's ``env`` and torpor's own variables.
- **User**: when the server runs as root, each function's processes run as a uid of their own
  (:class:`InstanceUsers`, ``isolation.instance_user`` in the server config), dropped before
  anything of the user's is imported. The same uid for two functions would let one signal, ptrace
  or read ``/proc/PID/environ`` (its secrets) of the other, so ``auto`` gives every function a
  distinct uid from a range no account uses.
- **Files** (:class:`InstanceFiles`): the data directory stays root's (0711: it can be crossed, not
  listed; its files 0600, its folders 0700). What a function may read lives in
  ``DATA_DIR/instances/<function>/`` (``root:<its gid>`` 0750): a root-owned read-only copy of its
  code, hard links to its cached model files (made 0644), and its ``home`` (its own, 0700).
  Its Unix sockets go in ``<run dir>/<uid>/`` (its own, 0700). Forked instances receive their
  log files as open descriptors from the server, so the logs stay root's.

When the server does not run as root, instances run as its user with its files, as before: only the
environment is cleaned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from torpor.datadir import SHARED_DIRNAME

log = logging.getLogger(__name__)

INSTANCES_DIRNAME = SHARED_DIRNAME
UIDS_FILENAME = "instance-uids.json"
DEFAULT_UIDS = (2_000_000, 2_099_999)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# passed through from the server: what the interpreter and native libraries need to run
BASE_VARS = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH", "PYTHONPATH",
             "PYTHONHOME")


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int


@dataclass(frozen=True)
class CheckProcess:
    """How the deploy check runs, as the function's instances would: ``code_dir`` (a copy its
    user can read), ``home``, ``preexec`` (become its user), ``wrap`` (its sandbox's argv)."""

    code_dir: Path
    home: str | None = None
    preexec: Callable[[], None] | None = None
    wrap: Callable[[list[str]], list[str]] | None = None


def base_env(home: str | None) -> dict[str, str]:
    """The environment every instance starts from: ``BASE_VARS`` that the server has (``PATH``
    with the server's interpreter's folder first, so a command's ``python3`` is torpor's), ``LANG``
    (``C.UTF-8`` by default) and ``HOME``. Nothing else of the server's environment."""
    env = {name: os.environ[name] for name in BASE_VARS if name in os.environ}
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH") or DEFAULT_PATH
    env["PATH"] = path if bindir in path.split(":") else f"{bindir}:{path}"
    env.setdefault("LANG", "C.UTF-8")
    if home is not None:
        env["HOME"] = home
    return env


def parse_uid_range(value: str) -> tuple[int, int]:
    """``"2000000-2099999"`` → (2000000, 2099999); ValueError naming what is wrong."""
    first, sep, last = value.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"must look like 'FIRST-LAST' (two uids), got {value!r}")
    low, high = int(first), int(last)
    if not 1000 <= low <= high < 2**32 - 1:
        raise ValueError(f"must be 1000 <= FIRST <= LAST < 4294967295, got {value!r}")
    return low, high


def _subordinate_ranges() -> list[tuple[int, int]]:
    """uids delegated to users' containers (``/etc/subuid``, ``/etc/subgid``): not ours to use."""
    ranges = []
    for name in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    ranges.append((int(parts[1]), int(parts[1]) + int(parts[2]) - 1))
    return ranges


def _taken(uid: int, subordinate: list[tuple[int, int]]) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return any(low <= uid <= high for low, high in subordinate)


def reachable_by_others(path: Path) -> str | None:
    """None when a user in no group of ours can read ``path`` (every folder above it crossable by
    others); otherwise the folder or file that stops them."""
    path = Path(os.path.realpath(path))
    for folder in reversed(path.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return str(folder)
    mode = path.stat().st_mode
    needed = stat.S_IXOTH if path.is_dir() else stat.S_IROTH
    return None if mode & needed else str(path)


class InstanceUsers:
    """Who a function's processes run as: ``None`` (the server's user) or its :class:`Credentials`.

    ``mode``: ``auto`` (root: a uid of each function's own from ``uids``, recorded in
    ``DATA_DIR/instance-uids.json`` so it stays the function's; not root: the server's user),
    ``off`` (the server's user), or a user name or uid that every function runs as.
    """

    def __init__(self, data_dir: Path, mode: str = "auto",
                 uids: tuple[int, int] = DEFAULT_UIDS) -> None:
        self.data_dir = data_dir
        self.mode = mode
        self.uids = uids
        self.fixed: Credentials | None = None
        self.problem: str | None = None  # why instances run as root although we are root
        self.enabled = os.geteuid() == 0 and mode != "off"
        if self.enabled and mode != "auto":
            self.fixed = self._named(mode)
        if self.enabled:
            blocker = self._blocker(data_dir)
            if blocker is not None:
                self.problem = (f"instances run as root: another user cannot reach {blocker[0]} "
                                f"({blocker[1]} is not readable or crossable by others); make it "
                                "so (e.g. chmod o+x on that folder) or move it")
                if mode != "auto":
                    raise ValueError(f"isolation.instance_user {mode!r}: {self.problem}")
                log.warning("%s", self.problem)
                self.enabled = False
        self._path = data_dir / UIDS_FILENAME
        self._allocated: dict[str, int] = {}
        if self.enabled and self.fixed is None and self._path.is_file():
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(self._path.read_text())
                self._allocated = {str(k): int(v) for k, v in loaded.items()}

    @staticmethod
    def _named(name: str) -> Credentials:
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            if name.isdigit():
                return Credentials(int(name), int(name))
            raise ValueError(f"isolation.instance_user: no user {name!r} on this machine") from None
        if entry.pw_uid == 0:
            raise ValueError("isolation.instance_user: root is not an unprivileged user; "
                             "use 'off' to run instances as root")
        return Credentials(entry.pw_uid, entry.pw_gid)

    @staticmethod
    def _blocker(data_dir: Path) -> tuple[str, str] | None:
        """(what, the folder in the way) when an instance's user could not reach the interpreter,
        torpor's package or the data dir's folder; None when it can."""
        import torpor

        for what, path in (("the interpreter", Path(sys.executable)),
                           ("torpor's package", Path(torpor.__file__).parent),
                           ("the data dir", data_dir.resolve().parent)):
            try:
                blocker = reachable_by_others(path)
            except OSError as exc:
                return f"{what} {path}", exc.strerror or str(exc)
            if blocker is not None:
                return f"{what} {path}", blocker
        return None

    def describe(self) -> str:
        if not self.enabled:
            return "server" if self.problem is None else "server (interpreter unreachable)"
        if self.fixed is not None:
            return f"uid {self.fixed.uid}"
        return f"per function, uids {self.uids[0]}-{self.uids[1]}"

    @property
    def checker(self) -> Credentials | None:
        """Who runs a deploy's handler check (None: the server's user): the fixed user, or the
        range's last uid, which no function gets."""
        if not self.enabled:
            return None
        return self.fixed or Credentials(self.uids[1], self.uids[1])

    def credentials(self, function: str) -> Credentials | None:
        if not self.enabled:
            return None
        if self.fixed is not None:
            return self.fixed
        uid = self._allocated.get(function)
        if uid is None:
            uid = self._allocate()
            self._allocated[function] = uid
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._allocated, sort_keys=True))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path)
        return Credentials(uid, uid)

    def _allocate(self) -> int:
        used = set(self._allocated.values())
        subordinate = _subordinate_ranges()
        for uid in range(self.uids[0], self.uids[1]):  # the last one is the deploy check's
            if uid not in used and not _taken(uid, subordinate):
                return uid
        raise OSError(f"isolation.instance_uids {self.uids[0]}-{self.uids[1]}: every uid is "
                      "taken; widen the range")


class InstanceFiles:
    """Where a function's processes find their code, model, home and socket folder."""

    def __init__(self, data_dir: Path, run_dir: Path, users: InstanceUsers) -> None:
        self.data_dir = data_dir
        self.run_dir = run_dir
        self.users = users
        self.root = data_dir / INSTANCES_DIRNAME
        self._staged: dict[tuple[str, Path], Path] = {}
        if users.enabled:
            os.chmod(data_dir, 0o711)  # crossable to reach instances/<function>, not listable
            os.chmod(run_dir, 0o711)
            self.root.mkdir(mode=0o711, exist_ok=True)
            os.chmod(self.root, 0o711)

    def owner(self, function: str) -> Credentials | None:
        return self.users.credentials(function)

    def socket_dir(self, function: str) -> Path:
        """The folder its Unix sockets go in (the run dir itself when not isolated)."""
        owner = self.owner(function)
        if owner is None:
            return self.run_dir
        folder = self.run_dir / str(owner.uid)
        _own_dir(folder, owner)
        return folder

    def home(self, function: str) -> str | None:
        owner = self.owner(function)
        if owner is None:
            return os.environ.get("HOME")
        folder = self._gate(function, owner) / "home"
        _own_dir(folder, owner)
        return str(folder)

    def _gate(self, function: str, owner: Credentials) -> Path:
        gate = self.root / function
        gate.mkdir(mode=0o750, exist_ok=True)
        os.chown(gate, 0, owner.gid)
        os.chmod(gate, 0o750)
        return gate

    @contextlib.contextmanager
    def check_copy(self, code_dir: Path) -> Iterator[Path]:
        """A copy of ``code_dir`` that the deploy check's user alone can read, removed after."""
        checker = self.users.checker
        if checker is None:
            yield code_dir
            return
        gate = self.root / f".check-{secrets.token_hex(6)}"
        gate.mkdir(mode=0o750)
        try:
            os.chown(gate, 0, checker.gid)
            os.chmod(gate, 0o750)  # mkdir's mode passed through the server's umask (077)
            code = gate / "code"
            _publish(code, lambda tmp: shutil.copytree(code_dir, tmp, symlinks=True))
            yield code
        finally:
            shutil.rmtree(gate, ignore_errors=True)

    def staged(self, function: str, code_dir: Path, model_path: Path | None) -> bool:
        """Whether :meth:`stage` has nothing to copy (it answers from memory)."""
        return self.owner(function) is None or (
            (function, code_dir) in self._staged
            and (model_path is None or (function, model_path) in self._staged))

    def stage(self, function: str, code_dir: Path, model_path: Path | None
              ) -> tuple[Path, Path | None]:
        """The function's view of its code and model: read-only copies only it can reach."""
        owner = self.owner(function)
        if owner is None:
            return code_dir, model_path
        gate = self._gate(function, owner)
        code = self._staged.get((function, code_dir))
        if code is None:  # first time in this server's life: made, or its modes made right again
            code = gate / "code" / code_dir.name
            if code.is_dir():
                _read_only(code)
            else:
                _publish(code, lambda tmp: shutil.copytree(code_dir, tmp, symlinks=True))
            self._staged[(function, code_dir)] = code
        if model_path is None:
            return code, None
        model = self._staged.get((function, model_path))
        if model is None:
            model = gate / "model" / model_path.parent.name / model_path.name
            if model.exists():  # hard links: the cache's make_private() made the files 0600
                _read_only(model)
            else:
                _publish(model, lambda tmp: _link_tree(model_path, tmp))
            self._staged[(function, model_path)] = model
        return code, model


def _own_dir(folder: Path, owner: Credentials) -> None:
    folder.mkdir(mode=0o700, exist_ok=True)
    st = folder.stat()
    if (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
        os.chown(folder, owner.uid, owner.gid)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(folder, 0o700)


def _publish(target: Path, build: Callable[[Path], object]) -> None:
    """Build ``target`` beside itself and rename it into place: never half there."""
    missing = [folder for folder in [target.parent, *target.parent.parents] if not folder.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    for folder in missing:  # made under the server's umask (077)
        os.chmod(folder, 0o755)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    if tmp.exists() or tmp.is_symlink():
        _remove(tmp)
    build(tmp)
    _read_only(tmp)
    try:
        os.rename(tmp, target)
    except OSError:
        _remove(tmp)
        if not target.exists():
            raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _link_tree(source: Path, target: Path) -> None:
    """Hard links to ``source``'s files (copies across file systems)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, symlinks=True, copy_function=link)
    else:
        link(str(source), str(target))


def _read_only(path: Path) -> None:
    """root-owned, readable by all who can reach it (the gate above decides who), writable by
    none but root: folders 0755, files 0644 (0755 when executable)."""
    paths = [path]
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            paths += [Path(root, name) for name in dirs + files]
    for item in paths:
        if item.is_symlink():
            continue
        st = item.stat()
        if st.st_uid != 0 or st.st_gid != 0:
            os.chown(item, 0, 0)
        executable = stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR
        os.chmod(item, 0o755 if executable else 0o644)
