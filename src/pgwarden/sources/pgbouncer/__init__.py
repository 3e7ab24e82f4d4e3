"""PgBouncer as a source: its admin console (``SHOW POOLS / STATS / CLIENTS / SERVERS /
DATABASES / CONFIG / VERSION``) read into frozen records, and the join of its server
connections with PostgreSQL's sessions (``SHOW SERVERS.remote_pid`` = ``pg_stat_activity.pid``).

``take(connect(target))`` returns a :class:`BouncerSnapshot`; the doctor's PgBouncer rules,
``pgwarden status --pgbouncer`` and (later) the exporter are pure functions of it.
"""

from __future__ import annotations

from .join import ServerSession, server_sessions
from .records import ADMIN_DATABASE, BouncerSnapshot, Connection, Database, Pool, Stats
from .snapshot import command, connect, read_version, record_row, take

__all__ = [
    "ADMIN_DATABASE",
    "BouncerSnapshot",
    "Connection",
    "Database",
    "Pool",
    "ServerSession",
    "Stats",
    "command",
    "connect",
    "read_version",
    "record_row",
    "server_sessions",
    "take",
]
