"""The store: SQLAlchemy 2 Core on a SQLite file in the data directory (the default), or on a
PostgreSQL database shared by the servers that follow one another (``torpor serve --store
postgresql://...``).

The same tables (:mod:`torpor.store.tables`) through the same additive migration on both; the only
per-dialect parts are SQLite's pragmas and, on PostgreSQL, the session lock that keeps a second
server off a database one is using (:meth:`Store.lock`). On a shared store the uploaded code and
the cached models are kept in the database too (``blobs``), so that a server on another machine
can bring them back (:mod:`torpor.store.blobs`).

All writes go through one worker thread (:meth:`Store.run`), so the event loop never blocks on disk
and the database sees a single writer. Nothing on the request path touches the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from torpor.auth import KeyRecord, Quota
from torpor.errors import TorporError
from torpor.store import tables

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FunctionRecord:
    name: str
    revision: int
    spec: dict[str, Any]
    base_dir: str
    source: str
    created_at: float
    updated_at: float
    model_digest: str | None = None
    code_digest: str | None = None
    traffic: dict[str, Any] | None = None  # {"weights": {"3": 90, ...}, "tags": {...}}
    owner: str | None = None  # the tenant whose function it is (None: written before tenants)


@dataclass(frozen=True)
class RevisionRecord:
    """One deploy, immutable: what ran (spec, code, model), who deployed it and when."""

    function: str
    number: int
    spec: dict[str, Any]
    source: str
    created_at: float
    code_digest: str | None = None
    model_digest: str | None = None
    created_by: str | None = None


class StoreError(TorporError):
    """The store cannot be opened: a bad ``--store`` URL, or a database that cannot be reached."""


POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
CONNECT_TIMEOUT_S = 10
# the PostgreSQL advisory lock a serving torpor holds on its store (an arbitrary, fixed number)
SERVE_LOCK_KEY = 0x746F72706F72  # "torpor"
# how soon PostgreSQL notices that the holder of the lock is gone when its machine is lost without
# closing the connection (keepalive probes; a SIGKILLed process's socket closes at once)
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 10, 5, 3
KEEPALIVE_TOTAL_S = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT
# A holder whose heartbeat (every second) is older than this is presumed lost with its machine: a
# new server waits up to LOST_HOLDER_WAIT_S for PostgreSQL to let go of its lock instead of refusing.
HOLDER_SILENT_S = 5.0
LOST_HOLDER_WAIT_S = KEEPALIVE_TOTAL_S + 15.0


def store_url(raw: str, what: str = "--store") -> URL:
    """``postgresql://user[:password]@host[:port]/db`` as SQLAlchemy's URL for psycopg 3.

    ``what`` names where the URL came from (the option or the config file's field) in the error.
    """
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        raise StoreError(f"{what}: {_hide_password(raw)!r} is not a database URL; give "
                         "postgresql://USER@HOST[:PORT]/DATABASE") from None
    if url.drivername not in POSTGRES_SCHEMES:
        raise StoreError(f"{what}: {url.render_as_string(hide_password=True)!r} is not a "
                         "PostgreSQL URL (postgresql://USER@HOST[:PORT]/DATABASE); without "
                         "--store torpor keeps its store in DATA_DIR/torpor.db")
    if not url.database:
        raise StoreError(f"{what}: {url.render_as_string(hide_password=True)!r} names no "
                         "database; give postgresql://USER@HOST[:PORT]/DATABASE")
    return url.set(drivername="postgresql+psycopg")


def _hide_password(raw: str) -> str:
    """``raw`` with whatever sits between ``user:`` and ``@`` replaced by ``***``."""
    scheme, sep, rest = raw.partition("://")
    if not sep or "@" not in rest:
        return raw
    credentials, _, host = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


class Store:
    """``Store(path)``: a SQLite file; ``Store("postgresql://...")``: a PostgreSQL database.

    ``what`` names where a URL came from (``--store``, or the config file's ``store``) in errors.
    ``holder`` (a server's name, PostgreSQL only): hold the store's lock for as long as this store
    is open, taken before any table is touched, so that a second server cannot start on a database
    a server is using (on SQLite the data directory's lock covers the file in it).
    """

    def __init__(self, target: Path | str, what: str = "--store", holder: str | None = None) -> None:
        self.path: Path | None = None
        self._lock_conn: Connection | None = None
        self._holder: tuple[str, str] | None = None
        if isinstance(target, Path):
            self.path = target
            self.shown = str(target)
            self.url = make_url(f"sqlite:///{target}")
            self.engine: Engine = create_engine(self.url)
            event.listen(self.engine, "connect", _sqlite_pragmas)
            _create(self.engine)
        else:
            self.url = store_url(target, what)
            shown = self.url.set(drivername="postgresql").render_as_string(hide_password=True)
            self.shown = shown
            try:
                self.engine = create_engine(
                    self.url, pool_pre_ping=True,
                    connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                                  "application_name": "torpor"})
                if holder is not None:
                    self._holder = (holder, what)
                    self._lock(holder, what)
                _create(self.engine)
            except StoreError:
                self.engine.dispose()
                raise
            except NoSuchModuleError:
                raise StoreError(f"{what} {shown}: PostgreSQL needs psycopg; pip install "
                                 "'torpor[postgres]'") from None
            except ModuleNotFoundError as exc:
                raise StoreError(f"{what} {shown}: PostgreSQL needs {exc.name}; pip install "
                                 "'torpor[postgres]'") from None
            except SQLAlchemyError as exc:
                raise StoreError(f"{what} {shown}: cannot open the database: "
                                 f"{_reason(exc)}") from None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torpor-store")

    def _lock(self, holder: str, what: str, wait: bool = True) -> None:
        """Hold PostgreSQL's session lock on the store for the life of this server, or raise
        :class:`StoreError` naming the server that holds it.

        The lock goes with the connection: a server that stops or is killed frees it at once; one
        whose machine is lost frees it when PostgreSQL's keepalive probes go unanswered (about
        ``KEEPALIVE_TOTAL_S``). When the holder's heartbeat has been silent for
        ``HOLDER_SILENT_S`` (``wait``), it is presumed lost and this waits up to
        ``LOST_HOLDER_WAIT_S`` for the lock; a holder that is alive is refused at once.
        """
        conn = self.engine.connect()
        try:
            conn.execute(text("SELECT set_config('application_name', :name, false)"),
                         {"name": holder[:63]})
            for setting, value in (("tcp_keepalives_idle", KEEPALIVE_IDLE_S),
                                   ("tcp_keepalives_interval", KEEPALIVE_INTERVAL_S),
                                   ("tcp_keepalives_count", KEEPALIVE_COUNT)):
                conn.execute(text("SELECT set_config(:setting, :value, false)"),
                             {"setting": setting, "value": str(value)})
            got = _try_lock(conn)
            deadline = time.monotonic() + LOST_HOLDER_WAIT_S
            silent = _silent_for(conn) if not got and wait else None
            if silent is not None:
                log.warning("%s %s: the server holding it has not written a heartbeat for %.0f s; "
                            "waiting up to %.0f s for PostgreSQL to let go of its lock",
                            what, self.shown, silent, LOST_HOLDER_WAIT_S)
                while not got and time.monotonic() < deadline:
                    time.sleep(0.5)
                    got = _try_lock(conn)
            if not got:
                who = conn.execute(text(
                    "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN "
                    "pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND "
                    "l.granted AND (l.classid::bigint << 32) + l.objid::bigint = :key"),
                    {"key": SERVE_LOCK_KEY}).first()
                conn.commit()
                holder_text = (f"{who.application_name} from {who.client_addr or 'a local socket'}"
                               if who else "another server")
                raise StoreError(
                    f"{what} {self.shown}: another torpor serve ({holder_text}) is using this "
                    "database; two servers on one store at once are not supported (if its machine "
                    f"is lost, PostgreSQL lets go within about {KEEPALIVE_TOTAL_S} s)")
        except BaseException:
            conn.close()
            raise
        self._lock_conn = conn

    @property
    def shared(self) -> bool:
        """True on a database that outlives this machine (PostgreSQL): code and models go in it."""
        return self.engine.dialect.name != "sqlite"

    def describe(self) -> str:
        """Where the store is, for the log (never the password)."""
        if self.path is not None:
            return str(self.path)
        return self.shown


    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store method on the store's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a write without waiting for it; writes keep their order."""
        self._executor.submit(_logged, fn, *args)

    def run_now(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the store's thread and wait (for shutdown, after queued writes)."""
        return self._executor.submit(fn, *args).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._lock_conn is not None:
            self._lock_conn.close()
            self._lock_conn = None
        self.engine.dispose()

    # functions -----------------------------------------------------------------------------

    def list_functions(self) -> list[FunctionRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tables.functions).order_by(tables.functions.c.name))
            return [_function_record(row._mapping) for row in rows]

    def get_function(self, name: str) -> FunctionRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tables.functions).where(tables.functions.c.name == name)
            ).first()
            return _function_record(row._mapping) if row else None

    def put_function(
        self, name: str, spec: dict[str, Any], base_dir: str, source: str, now: float,
        model_digest: str | None = None, code_digest: str | None = None,
        created_by: str | None = None, traffic: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> FunctionRecord:
        """Insert or replace a function; the revision goes up by one on every deploy and is kept,
        immutable, in ``revisions``. ``traffic``: the split to store with it (see :meth:`put_traffic`)."""
        t = tables.functions
        with self.engine.begin() as conn:
            row = conn.execute(select(t.c.revision, t.c.created_at).where(t.c.name == name)).first()
            values = {"spec_json": json.dumps(spec), "base_dir": base_dir, "source": source,
                      "model_digest": model_digest, "code_digest": code_digest}
            if owner is not None:
                values["owner"] = owner
            number = 1 if row is None else row.revision + 1
            if row is None:
                conn.execute(
                    insert(t).values(name=name, revision=1, created_at=now, updated_at=now, **values)
                )
            else:
                conn.execute(
                    update(t)
                    .where(t.c.name == name)
                    .values(revision=number, updated_at=now, **values)
                )
            conn.execute(insert(tables.revisions).values(
                function=name, number=number, spec_json=values["spec_json"], source=source,
                code_digest=code_digest, model_digest=model_digest, created_at=now,
                created_by=created_by))
            if traffic is not None:
                conn.execute(update(t).where(t.c.name == name)
                             .values(traffic_json=json.dumps(_numbered(traffic, number))))
        record = self.get_function(name)
        assert record is not None
        return record

    def delete_function(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(tables.functions).where(tables.functions.c.name == name))
            conn.execute(delete(tables.revisions).where(tables.revisions.c.function == name))
            conn.execute(
                delete(tables.provision_configs).where(tables.provision_configs.c.function == name)
            )

    # revisions and traffic ---------------------------------------------------------------------

    def list_revisions(self, function: str) -> list[RevisionRecord]:
        t = tables.revisions
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.function == function).order_by(t.c.number))
            return [_revision_record(row._mapping) for row in rows]

    def get_revision(self, function: str, number: int) -> RevisionRecord | None:
        t = tables.revisions
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t).where(t.c.function == function, t.c.number == number)).first()
            return _revision_record(row._mapping) if row else None

    def put_traffic(self, function: str, traffic: dict[str, Any], now: float) -> None:
        """Store a function's split: ``{"weights": {"3": 90, "4": 10}, "tags": {"canary": 4}}``."""
        t = tables.functions
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.name == function)
                         .values(traffic_json=json.dumps(traffic), updated_at=now))

    # provisioning configs (set through the API; they outlive redeploys) --------------------------

    def put_provision(self, function: str, config: dict[str, Any], now: float) -> None:
        t = tables.provision_configs
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.function == function))
            conn.execute(
                insert(t).values(function=function, config_json=json.dumps(config), updated_at=now)
            )

    def get_provision(self, function: str) -> dict[str, Any] | None:
        t = tables.provision_configs
        with self.engine.connect() as conn:
            row = conn.execute(select(t.c.config_json).where(t.c.function == function)).first()
        return dict(json.loads(row.config_json)) if row else None

    # instances -----------------------------------------------------------------------------

    def save_instance(self, values: dict[str, Any]) -> None:
        t = tables.instances
        with self.engine.begin() as conn:
            found = conn.execute(select(t.c.id).where(t.c.id == values["id"])).first()
            if found is None:
                conn.execute(insert(t).values(**values))
            else:
                conn.execute(update(t).where(t.c.id == values["id"]).values(**values))

    def list_instances(self, function: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        t = tables.instances
        query = select(t).order_by(t.c.started_at.desc()).limit(limit)
        if function is not None:
            query = query.where(t.c.function == function)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # ledger -------------------------------------------------------------------------------------

    def ledger_transition(self, info: dict[str, Any], state: str | None, at: float) -> None:
        """Close the instance's open interval at ``at`` and, unless ``state`` is None, open the next.

        One transaction, so an interval is never lost between the two.
        """
        t = tables.ledger
        with self.engine.begin() as conn:
            conn.execute(
                update(t)
                .where(t.c.instance_id == info["instance_id"], t.c.end.is_(None))
                .values(end=at)
            )
            if state is not None:
                conn.execute(insert(t).values(**info, state=state, start=at, end=None))

    def close_open_intervals(self, at: float) -> int:
        t = tables.ledger
        with self.engine.begin() as conn:
            result = conn.execute(update(t).where(t.c.end.is_(None)).values(end=at))
            return int(result.rowcount or 0)

    def ledger_rows(self, since: float, until: float, function: str | None = None) -> list[dict[str, Any]]:
        t = tables.ledger
        query = select(t).where(t.c.start < until, (t.c.end.is_(None)) | (t.c.end > since))
        if function is not None:
            query = query.where(t.c.function == function)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query.order_by(t.c.id))]

    def keep_lock(self) -> bool:
        """Check that this server still holds the store's lock (a database restart ends the
        session that held it) and take it again if it was lost; False, logged, if another server
        has it now. True on SQLite and on a store opened without a holder."""
        if self._holder is None:
            return True
        if self._lock_conn is not None:
            try:
                held = self._lock_conn.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                    "pid = pg_backend_pid()")).scalar_one()
                self._lock_conn.commit()
                if held:
                    return True
            except SQLAlchemyError:
                pass
            self._lock_conn.invalidate()
            self._lock_conn.close()
            self._lock_conn = None
        try:
            self._lock(*self._holder, wait=False)
        except (StoreError, SQLAlchemyError) as exc:
            log.error("store: this server lost the store's lock and cannot take it again: %s", exc)
            return False
        log.warning("store: the store's lock was lost (did the database restart?) and is held "
                    "again")
        return True

    def heartbeat(self, at: float) -> None:
        self.keep_lock()
        t = tables.server_state
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.key == "heartbeat"))
            conn.execute(insert(t).values(key="heartbeat", value=at))

    def last_heartbeat(self) -> float | None:
        t = tables.server_state
        with self.engine.connect() as conn:
            row = conn.execute(select(t.c.value).where(t.c.key == "heartbeat")).first()
        return float(row.value) if row else None

    def last_alive(self) -> float | None:
        """The last moment the previous server is known to have been alive: its last heartbeat,
        or a later ledger write (a transition written after the last heartbeat proves it was
        alive then; closing its interval at the heartbeat would end it before it started)."""
        t = tables.ledger
        heartbeat = self.last_heartbeat()
        with self.engine.connect() as conn:
            latest_start, latest_end = conn.execute(select(func.max(t.c.start), func.max(t.c.end))).one()
        known = [value for value in (heartbeat, latest_start, latest_end) if value is not None]
        return max(known) if known else None

    def close_open_instances(self, now: float) -> int:
        """Instances left live by a server that died are stopped as of ``now``; returns how many."""
        t = tables.instances
        with self.engine.begin() as conn:
            result = conn.execute(
                update(t)
                .where(t.c.exited_at.is_(None))
                .values(exited_at=now, state="stopped", failure="server stopped")
            )
            return int(result.rowcount or 0)

    # events --------------------------------------------------------------------------------

    def add_event(self, function: str, at: float, kind: str, message: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(tables.events).values(function=function, at=at, kind=kind, message=message)
            )

    def list_events(self, function: str, limit: int = 50) -> list[dict[str, Any]]:
        t = tables.events
        query = select(t).where(t.c.function == function).order_by(t.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # API keys and quotas (torpor.auth) -----------------------------------------------------------

    def list_keys(self) -> list[KeyRecord]:
        t = tables.api_keys
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).order_by(t.c.created_at, t.c.id))
            return [KeyRecord(row.id, row.tenant, bool(row.admin), row.key_hash, row.created_at,
                              row.revoked_at) for row in rows]

    def add_key(self, record: KeyRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(tables.api_keys).values(
                id=record.id, key_hash=record.key_hash, tenant=record.tenant,
                admin=int(record.admin), created_at=record.created_at, revoked_at=None))

    def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark the key revoked; False when there is no such key not yet revoked."""
        t = tables.api_keys
        with self.engine.begin() as conn:
            result = conn.execute(update(t).where(t.c.id == key_id, t.c.revoked_at.is_(None))
                                  .values(revoked_at=now))
            return bool(result.rowcount)

    def list_quotas(self) -> list[Quota]:
        t = tables.tenant_quotas
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).order_by(t.c.tenant))
            return [Quota(row.tenant, row.max_functions, row.max_instances, row.max_gpus)
                    for row in rows]

    def put_quota(self, quota: Quota, now: float) -> None:
        t = tables.tenant_quotas
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.tenant == quota.tenant))
            conn.execute(insert(t).values(
                tenant=quota.tenant, max_functions=quota.max_functions,
                max_instances=quota.max_instances, max_gpus=quota.max_gpus, updated_at=now))


def _logged(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("store write %s failed", getattr(fn, "__name__", fn))


def _function_record(row: Any) -> FunctionRecord:
    return FunctionRecord(
        name=row["name"],
        revision=row["revision"],
        spec=json.loads(row["spec_json"]),
        base_dir=row["base_dir"],
        source=row["source"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        model_digest=row["model_digest"],
        code_digest=row["code_digest"],
        traffic=json.loads(row["traffic_json"]) if row["traffic_json"] else None,
        owner=row["owner"],
    )


def _revision_record(row: Any) -> RevisionRecord:
    return RevisionRecord(
        function=row["function"], number=row["number"], spec=json.loads(row["spec_json"]),
        source=row["source"], created_at=row["created_at"], code_digest=row["code_digest"],
        model_digest=row["model_digest"], created_by=row["created_by"],
    )


def _numbered(traffic: dict[str, Any], number: int) -> dict[str, Any]:
    """``traffic`` with the key ``"new"`` (the revision being written) replaced by its number."""
    weights = {(str(number) if k == "new" else k): v for k, v in traffic.get("weights", {}).items()}
    tags = {k: (number if v == "new" else v) for k, v in traffic.get("tags", {}).items()}
    return {"weights": weights, "tags": tags}


def backfill_revisions(engine: Engine) -> int:
    """A database written before revisions were kept: record each function's current revision
    (the only one it still knows) so that every function has its revision row."""
    f, r = tables.functions, tables.revisions
    with engine.begin() as conn:
        known = {(row.function, row.number) for row in conn.execute(select(r.c.function, r.c.number))}
        missing = [row for row in conn.execute(select(f)) if (row.name, row.revision) not in known]
        for row in missing:
            conn.execute(insert(r).values(
                function=row.name, number=row.revision, spec_json=row.spec_json, source=row.source,
                code_digest=row.code_digest, model_digest=row.model_digest,
                created_at=row.updated_at, created_by=None))
    return len(missing)


def _try_lock(conn: Connection) -> bool:
    got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                            {"key": SERVE_LOCK_KEY}).scalar_one())
    conn.commit()
    return got


def _silent_for(conn: Connection) -> float | None:
    """Seconds since the store's last heartbeat when longer than ``HOLDER_SILENT_S``; None when
    it is recent, or there is none yet (a server that is starting)."""
    t = tables.server_state
    try:
        value = conn.execute(select(t.c.value).where(t.c.key == "heartbeat")).scalar()
        conn.commit()
    except SQLAlchemyError:  # no table yet: its holder is creating it
        conn.rollback()
        return None
    if value is None:
        return None
    silent = time.time() - float(value)
    return silent if silent > HOLDER_SILENT_S else None


def _create(engine: Engine) -> None:
    """Create the tables a database lacks, then migrate and backfill: the same on every dialect."""
    tables.metadata.create_all(engine)
    migrate(engine)
    backfill_revisions(engine)


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's first line, without SQLAlchemy's wrapping (it never holds the password)."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else type(original).__name__


def migrate(engine: Engine) -> list[str]:
    """Add the columns a newer schema has and an older database lacks; returns what was added."""
    added = []
    inspector = inspect(engine)
    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        for table in tables.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=engine.dialect)
                    conn.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN "
                                      f"{quote(column.name)} {kind}"))
                    added.append(f"{table.name}.{column.name}")
    if added:
        log.info("store: added columns %s", ", ".join(added))
    return added


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
