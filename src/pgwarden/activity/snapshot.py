"""Take one snapshot of the server: ``pg_stat_activity``, settings, our role's privileges.

Three round trips (server facts, settings, activity; a fourth for the session counter on
PostgreSQL 14+), all parameterised, in one read-only autocommit connection.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import psycopg

from .queries import load
from .queries import query as _q
from .records import Server, Session, Settings, Snapshot

__all__ = ["SETTING_NAMES", "new_sessions", "take"]

#: Settings read into :class:`Settings`; those a server lacks keep their defaults.
SETTING_NAMES = (
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "statement_timeout",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
    "client_connection_check_interval",
)

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _setting_value(setting: str, unit: str | None) -> float:
    value = float(setting)
    return value * _UNIT_SECONDS.get(unit or "", 1.0)


def read_server(conn: psycopg.Connection[Any]) -> tuple[Server, dt.datetime]:
    """Facts about the server and the connected role, and the server's ``now()``."""
    row = conn.execute(_q("get_server", conn.info.server_version)).fetchone()
    assert row is not None
    return Server(
        version_num=row[0],
        version=row[1],
        self_pid=row[2],
        role=row[4],
        is_superuser=bool(row[5]),
        has_pg_monitor=bool(row[6]),
        has_pg_signal_backend=bool(row[7]),
        has_pg_use_reserved_connections=bool(row[8]),
        in_recovery=bool(row[9]),
    ), row[3]


def read_settings(conn: psycopg.Connection[Any]) -> Settings:
    """The settings in :data:`SETTING_NAMES`, durations converted to seconds."""
    rows = conn.execute(
        _q("get_settings", conn.info.server_version), {"names": list(SETTING_NAMES)}
    ).fetchall()
    values: dict[str, Any] = {}
    for name, setting, unit in rows:
        if name in ("max_connections", "superuser_reserved_connections",
                    "reserved_connections", "tcp_keepalives_count"):
            values[name] = int(setting)
        else:
            values[name] = _setting_value(setting, unit)
    return Settings(**values)


def take(conn: psycopg.Connection[Any], *, query_chars: int = 200) -> Snapshot:
    """One snapshot through ``conn`` (an autocommit connection pgwarden opened).

    Args:
        conn: the connection; its own session is left out of the result.
        query_chars: how much of each session's query text to keep.

    Returns:
        A :class:`Snapshot`.

    Raises:
        psycopg.Error: the server went away or refused a query.
    """
    started = time.perf_counter()
    version = conn.info.server_version
    server, taken_at = read_server(conn)
    settings = read_settings(conn)
    cur = conn.execute(_q("get_activity", version), {"query_chars": query_chars})
    sessions = tuple(
        Session(
            pid=r[0],
            database=r[1],
            user=r[2],
            application=r[3] or "",
            client_addr=r[4],
            client_port=r[5],
            backend_type=r[6],
            state=r[7],
            backend_start=r[8],
            xact_start=r[9],
            query_start=r[10],
            state_change=r[11],
            backend_age=r[12],
            xact_age=r[13],
            query_age=r[14],
            state_age=r[15],
            wait_event_type=r[16],
            wait_event=r[17],
            query=r[18],
            blocking_pids=tuple(r[19] or ()),
            is_superuser=r[20],
            is_replication_role=r[21],
        )
        for r in cur.fetchall()
    )
    total_sql = load("get_sessions_total", version)
    sessions_total = None
    if total_sql is not None:
        row = conn.execute(total_sql.encode()).fetchone()
        sessions_total = int(row[0]) if row else None
    return Snapshot(
        taken_at=taken_at,
        server=server,
        settings=settings,
        sessions=sessions,
        sessions_total=sessions_total,
        duration=time.perf_counter() - started,
    )


def new_sessions(conn: psycopg.Connection[Any], since: dt.datetime) -> dict[int, str]:
    """Client sessions started after ``since``: ``{backend pid: application_name}``.

    Cheap enough to poll every few tens of milliseconds while sampling for churn: sessions of a
    connection-per-request client live for milliseconds and a single snapshot misses them.
    """
    rows = conn.execute(_q("get_new_sessions", conn.info.server_version), {"since": since})
    return {pid: app or "" for pid, app in rows.fetchall()}
