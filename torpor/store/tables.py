"""Schema. Created on start; timestamps are epoch seconds (floats).

A column added later must be nullable (or have a server default): :func:`torpor.store.store.migrate`
adds the missing columns to a data directory written by an older torpor.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text

metadata = MetaData()

functions = Table(
    "functions",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("revision", Integer, nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("base_dir", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("model_digest", String(64)),  # model.path's content in the model cache
    Column("code_digest", String(64)),  # the uploaded code (DATA_DIR/code/<digest>)
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # {"weights": {"3": 90, "4": 10}, "tags": {"canary": 4}}; NULL: all to the newest revision
    Column("traffic_json", Text),
    Column("owner", String(63)),  # the tenant whose function it is; NULL (older data dirs): default
)

# Every deploy, kept as it was: a revision is never changed after it is written.
revisions = Table(
    "revisions",
    metadata,
    Column("function", String(63), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("spec_json", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("code_digest", String(64)),
    Column("model_digest", String(64)),
    Column("created_at", Float, nullable=False),
    # who deployed it, as the client said: free text of any length (Text, not VARCHAR(255):
    # PostgreSQL enforces a VARCHAR's length where SQLite does not)
    Column("created_by", Text),
)

instances = Table(
    "instances",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("function", String(63), nullable=False, index=True),
    Column("revision", Integer, nullable=False),
    Column("pid", Integer),
    Column("address", Text),
    Column("node", String(100)),
    Column("pool", String(63)),
    Column("started_at", Float, nullable=False),
    Column("listening_at", Float),
    Column("ready_at", Float),
    Column("draining_at", Float),
    Column("exited_at", Float),
    Column("exit_code", Integer),
    Column("failure", Text),
    Column("state", String(16), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("function", String(63), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message", Text, nullable=False),
)

# Metering: one row per instance state interval [start, end); end is NULL while open.
ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance_id", String(100), nullable=False, index=True),
    Column("function", String(63), nullable=False, index=True),
    Column("revision", Integer, nullable=False),
    Column("pool", String(63), nullable=False),
    Column("node", String(100)),
    Column("device", String(63), nullable=False),
    Column("gpu_memory_mb", Integer, nullable=False),
    Column("cpus", Float, nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("start", Float, nullable=False, index=True),
    Column("end", Float),
)

# Small facts about the server itself, e.g. its last heartbeat (what a crash is closed at).
server_state = Table(
    "server_state",
    metadata,
    Column("key", String(63), primary_key=True),
    Column("value", Float, nullable=False),
)

provision_configs = Table(
    "provision_configs",
    metadata,
    Column("function", String(63), primary_key=True),
    Column("config_json", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# The console's history (torpor.store.history): one row per function per sample, compacted.
samples = Table(
    "samples",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("function", String(63), nullable=False),
    Column("at", Float, nullable=False),
    Column("resolution_s", Float, nullable=False),
    Column("data_json", Text, nullable=False),
    Index("samples_function_at", "function", "at"),
)

# On a shared store (PostgreSQL) the files a function needs, so that a server on another machine can
# bring them back (torpor.store.blobs): "code" archives by their sha256, "model" cache entries by
# their cache digest (a tar of the entry), each in parts of at most blobs.PART_BYTES, written in one
# transaction. Empty on SQLite: the data directory holds the files and the database alike.
blobs = Table(
    "blobs",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("digest", String(64), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

# API keys (torpor.auth): only the key's sha256 is kept, never the key.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # the key's public id (tp_<id>_...)
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("tenant", String(63), nullable=False),
    Column("admin", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

# Per-tenant quotas; a tenant without a row has the defaults (torpor.auth.Quota).
tenant_quotas = Table(
    "tenant_quotas",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("max_functions", Integer),
    Column("max_instances", Integer),
    Column("max_gpus", Float),
    Column("updated_at", Float, nullable=False),
)
