"""API keys, tenants and quotas: what a key is, how it is checked, and who may see what.

A key is ``tp_<id>_<secret>``: ``id`` (12 hex digits) is public and names the key in ``torpor keys
ls`` and ``revoke``; ``secret`` is 32 random bytes (urlsafe base64). The store keeps only the
key's sha256, never the key itself. Every key belongs to a tenant; an admin key sees and changes
everything, a tenant's key only its tenant's functions.

The gateway checks a key on every request to a ``auth: key`` function, so the check is a dict
lookup: :class:`KeyTable` holds every live key by its hash, in memory, kept in step with the store
by the platform (it changes the table when it changes the store), never read per request.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

KEY_PREFIX = "tp_"
ADMIN_KEY_FILENAME = "admin.key"
DEFAULT_TENANT = "default"  # the first admin key's tenant; functions from an older data dir
DEFAULT_MAX_GPUS = 30.0  # seed 001: 30 GPUs per account and region by default
_TENANT = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class KeyRecord:
    """A key as the store keeps it: its public id, its hash, whose it is."""

    id: str
    tenant: str
    admin: bool
    key_hash: str
    created_at: float
    revoked_at: float | None = None

    def to_api(self) -> dict[str, object]:
        return {"id": self.id, "tenant": self.tenant, "admin": self.admin,
                "created_at": self.created_at, "revoked_at": self.revoked_at}


@dataclass(frozen=True)
class Quota:
    """A tenant's limits; None: no limit of torpor's own (``max_gpus`` defaults to seed 001's 30)."""

    tenant: str
    max_functions: int | None = None
    max_instances: int | None = None
    max_gpus: float | None = DEFAULT_MAX_GPUS

    def to_api(self) -> dict[str, object]:
        return {"tenant": self.tenant, "max_functions": self.max_functions,
                "max_instances": self.max_instances, "max_gpus": self.max_gpus}


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: a tenant, admin or not. ``key_id`` None: auth is off."""

    tenant: str
    admin: bool
    key_id: str | None = None

    def owns(self, owner: str | None) -> bool:
        """May this caller see and change something owned by ``owner``?"""
        return self.admin or (owner or DEFAULT_TENANT) == self.tenant


NOBODY_CHECKS = Caller(DEFAULT_TENANT, admin=True)  # what every request is when auth is off


def new_key() -> tuple[str, str]:
    """A fresh key: ``(id, key)``."""
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}"


def hash_key(key: str | bytes) -> str:
    data = key.encode("latin-1") if isinstance(key, str) else key
    return hashlib.sha256(data).hexdigest()


def check_tenant(name: str) -> str:
    if not _TENANT.match(name):
        raise ValueError(f"tenant: {name!r} is not a tenant name: 1-63 lowercase letters, digits "
                         "or '-', starting and ending with a letter or digit")
    return name


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (ASGI headers), or None."""
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token:
                return token.strip()
            return None
    return None


class KeyTable:
    """Live (not revoked) keys by hash, in memory: the per-request check costs one sha256 and one
    dict lookup. ``enabled`` False (``--auth off``): every request is admin."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._by_hash: dict[str, KeyRecord] = {}

    def load(self, records: Iterable[KeyRecord]) -> None:
        self._by_hash = {r.key_hash: r for r in records if r.revoked_at is None}

    def add(self, record: KeyRecord) -> None:
        if record.revoked_at is None:
            self._by_hash[record.key_hash] = record

    def remove(self, key_id: str) -> None:
        self._by_hash = {h: r for h, r in self._by_hash.items() if r.id != key_id}

    def __len__(self) -> int:
        return len(self._by_hash)

    def find(self, token: bytes | None) -> KeyRecord | None:
        if token is None:
            return None
        return self._by_hash.get(hashlib.sha256(token).hexdigest())

    def caller(self, headers: Iterable[tuple[bytes, bytes]]) -> Caller | None:
        """Who sent these request headers: None when the key is missing, unknown or revoked."""
        if not self.enabled:
            return NOBODY_CHECKS
        record = self.find(bearer(headers))
        if record is None:
            return None
        return Caller(record.tenant, record.admin, record.id)

    def may_invoke(self, headers: Iterable[tuple[bytes, bytes]], auth: str,
                   owner: str | None) -> bool:
        """May a request with these headers invoke a function (its spec's ``auth``, its owner)?"""
        if auth == "public" or not self.enabled:
            return True
        record = self.find(bearer(headers))  # the hot path: no Caller built
        return record is not None and (record.admin or record.tenant == (owner or DEFAULT_TENANT))
