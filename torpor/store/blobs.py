"""Files kept in a shared store (``blobs``): bytes in parts, written in one transaction.

A blob is ``(kind, digest)``: ``code`` (an uploaded archive, by its sha256) or ``model`` (a model
cache entry, by its cache digest). It exists whole or not at all. Parts keep each value well under
PostgreSQL's 1 GB limit for a ``bytea`` and let a reader stream a large model to disk.
"""

from __future__ import annotations

from typing import BinaryIO

from sqlalchemy import func, insert, select

from torpor.store import tables
from torpor.store.store import Store

PART_BYTES = 8 << 20
KINDS = ("code", "model")


def has(store: Store, kind: str, digest: str) -> bool:
    t = tables.blobs
    with store.engine.connect() as conn:
        return conn.execute(select(t.c.part).where(t.c.kind == kind, t.c.digest == digest,
                                                   t.c.part == 0)).first() is not None


def put(store: Store, kind: str, digest: str, source: BinaryIO) -> bool:
    """Keep ``source``'s bytes (read from its position to its end) as ``(kind, digest)``; False
    when the blob was there already (the bytes are not read)."""
    if kind not in KINDS:
        raise ValueError(f"blob kind {kind!r} is not one of {', '.join(KINDS)}")
    t = tables.blobs
    with store.engine.begin() as conn:
        if conn.execute(select(t.c.part).where(t.c.kind == kind, t.c.digest == digest,
                                               t.c.part == 0)).first() is not None:
            return False
        part = 0
        while True:
            data = source.read(PART_BYTES)
            if not data and part > 0:
                break
            conn.execute(insert(t).values(kind=kind, digest=digest, part=part, data=data))
            part += 1
            if len(data) < PART_BYTES:
                break
    return True


def read(store: Store, kind: str, digest: str, dest: BinaryIO) -> int | None:
    """Write the blob's bytes to ``dest`` one part at a time; its size, or None if there is none."""
    t = tables.blobs
    size = 0
    with store.engine.connect() as conn:
        parts = conn.execute(select(func.count()).where(t.c.kind == kind,
                                                        t.c.digest == digest)).scalar_one()
        if not parts:
            return None
        for part in range(parts):
            data = conn.execute(select(t.c.data).where(t.c.kind == kind, t.c.digest == digest,
                                                       t.c.part == part)).scalar_one()
            dest.write(data)
            size += len(data)
    return size
