"""Durable state: functions, instance records and events, in SQLite (SQLAlchemy 2)."""

from torpor.store.store import Store

__all__ = ["Store"]
