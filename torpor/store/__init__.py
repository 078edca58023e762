"""Durable state: functions, revisions, instance records, events and the ledger, in SQLite or
PostgreSQL (SQLAlchemy 2)."""

from torpor.store.store import Store

__all__ = ["Store"]
