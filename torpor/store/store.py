"""The store: SQLAlchemy 2 Core on a SQLite file in the data directory.

All writes go through one worker thread (:meth:`Store.run`), so the event loop never blocks on disk
and SQLite sees a single writer. Nothing on the request path touches the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, delete, event, insert, inspect, select, text, update

from torpor.auth import KeyRecord, Quota
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


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine: Engine = create_engine(f"sqlite:///{path}", future=True)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        tables.metadata.create_all(self.engine)
        migrate(self.engine)
        backfill_revisions(self.engine)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torpor-store")

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

    def heartbeat(self, at: float) -> None:
        t = tables.server_state
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.key == "heartbeat"))
            conn.execute(insert(t).values(key="heartbeat", value=at))

    def last_heartbeat(self) -> float | None:
        t = tables.server_state
        with self.engine.connect() as conn:
            row = conn.execute(select(t.c.value).where(t.c.key == "heartbeat")).first()
        return float(row.value) if row else None

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


def migrate(engine: Engine) -> list[str]:
    """Add the columns a newer schema has and an older database lacks; returns what was added."""
    added = []
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in tables.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=engine.dialect)
                    conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
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
