"""Take one snapshot of the server: ``pg_stat_activity``, settings, our role's privileges.

:func:`take` (complete): three round trips (server facts, settings, activity; a fourth for the
session counter on PostgreSQL 14+), all parameterised, in one read-only autocommit connection.
:func:`take_summary` (the exporter's): the same in one transaction, with the activity counted on
the server and rows only for the notable sessions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .queries import load
from .queries import query as _q
from .records import (
    ActivitySummary,
    ApplicationCounts,
    ClientBrief,
    Notable,
    Server,
    Session,
    SessionGroup,
    Settings,
    Snapshot,
)

__all__ = [
    "SETTING_NAMES",
    "application_counts",
    "login_roles",
    "new_sessions",
    "role_secrets",
    "take",
    "take_summary",
]

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
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(_q("get_server", conn.info.server_version)).fetchone()
    assert row is not None
    taken_at = row.pop("taken_at")
    return Server(**row), taken_at


def read_settings(conn: psycopg.Connection[Any]) -> Settings:
    """The settings in :data:`SETTING_NAMES`, durations converted to seconds."""
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        _q("get_settings", conn.info.server_version), {"names": list(SETTING_NAMES)}
    ).fetchall()
    values: dict[str, Any] = {}
    for row in rows:
        name, setting, unit = row["name"], row["setting"], row["unit"]
        if name in ("max_connections", "superuser_reserved_connections",
                    "reserved_connections", "tcp_keepalives_count"):
            values[name] = int(setting)
        else:
            values[name] = _setting_value(setting, unit)
    return Settings(**values)


_SESSION_FIELDS = tuple(f.name for f in dataclasses.fields(Session))
_BLOCKING = _SESSION_FIELDS.index("blocking_pids")


def _session_row(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], Session]:
    """Row factory for ``get_activity``: rows bind to
    :class:`Session` fields by column name.

    The column of each field is looked up by name once per result (a missing column is a
    ``KeyError`` naming it); each row is then built positionally, which costs a third of
    psycopg's ``kwargs_row`` (two dicts a row) at a thousand sessions.
    """
    names = [c.name for c in cursor.description or ()]
    try:
        where = [names.index(field) for field in _SESSION_FIELDS]
    except ValueError as exc:
        raise KeyError(f"the activity query returns no column for a Session field: {exc}"
                       ) from None

    def make(values: Sequence[Any]) -> Session:
        args = [values[i] for i in where]
        args[_BLOCKING] = tuple(args[_BLOCKING] or ())
        return Session(*args)

    return make


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
    # binary: timestamps and floats cost the server a third less to send than as text
    cur = conn.cursor(row_factory=_session_row, binary=True)
    sessions = tuple(
        cur.execute(_q("get_activity", version),
                    {"pids": None, "query_chars": query_chars}).fetchall()
    )
    return Snapshot(
        taken_at=taken_at,
        server=server,
        settings=settings,
        sessions=sessions,
        sessions_total=_sessions_total(conn),
        duration=time.perf_counter() - started,
    )


def _sessions_total(conn: psycopg.Connection[Any]) -> int | None:
    total_sql = load("get_sessions_total", conn.info.server_version)
    if total_sql is None:
        return None
    total = conn.cursor(row_factory=dict_row).execute(total_sql.encode()).fetchone()
    return int(total["sessions_total"]) if total else None


_GROUP_FIELDS = tuple(f.name for f in dataclasses.fields(SessionGroup))


def _read_summary(conn: psycopg.Connection[Any], notable: Notable
                  ) -> tuple[ActivitySummary, list[int]]:
    """``get_activity_summary``: the summary, and the pids of the notable sessions
    (ascending)."""
    cur = conn.cursor(row_factory=dict_row, binary=True)
    rows = cur.execute(_q("get_activity_summary", conn.info.server_version), {
        "idle_in_transaction_after": notable.idle_in_transaction_after,
        "idle_after": notable.idle_after,
        "long_query_after": notable.long_query_after,
        "young_age": notable.young_age,
    }).fetchall()
    groups: list[SessionGroup] = []
    pids: list[int] = []
    briefs: list[ClientBrief] = []
    for row in rows:
        g = SessionGroup(**{f: row[f] for f in _GROUP_FIELDS})
        groups.append(g)
        pids.extend(row["notable_pids"] or ())
        if g.is_client_backend and row["brief_pids"]:
            briefs.extend(
                ClientBrief(pid, g.application, g.user, addr, g.state, backend_age, state_age)
                for pid, addr, backend_age, state_age in zip(
                    row["brief_pids"], row["brief_client_addrs"], row["brief_backend_ages"],
                    row["brief_state_ages"], strict=True))
    briefs.sort(key=lambda b: b.pid)
    summary = ActivitySummary(groups=tuple(groups), briefs=tuple(briefs), notable=notable)
    return summary, sorted(pids)


def _read_sessions(conn: psycopg.Connection[Any], pids: Sequence[int], query_chars: int
                   ) -> list[Session]:
    """``get_activity`` of these pids: their sessions, in pid order."""
    if not pids:
        return []
    cur = conn.cursor(row_factory=_session_row, binary=True)
    return cur.execute(_q("get_activity", conn.info.server_version),
                       {"pids": list(pids), "query_chars": query_chars}).fetchall()


def take_summary(conn: psycopg.Connection[Any], notable: Notable, *, query_chars: int = 200
                 ) -> Snapshot:
    """A summary snapshot through ``conn``: every backend counted on the server
    (:class:`ActivitySummary`), a :class:`Session` only for the notable ones (:class:`Notable`:
    idle in a transaction or active past a threshold, waiting on a lock or blocking one), a
    :class:`ClientBrief` for idle, young and unnamed ones. What the exporter takes at each
    scrape: its cost hardly grows with the sessions a server has, mostly with the notable
    ones.

    One transaction: PostgreSQL reads ``pg_stat_activity`` once per transaction and ``now()``
    stays put, so the counts, the rows and their ages describe one instant. Six round trips
    (begin, server facts, settings, the summary, the session counter, commit), one more when a
    session is notable and one when a notable session waits for others.

    Args:
        conn: the connection (autocommit, or idle in a transaction: a savepoint then); its own
            session is left out of the result.
        notable: which sessions to fetch as rows (the doctor's ``Thresholds.notable()``).
        query_chars: how much of each notable session's query text to keep.

    Returns:
        A :class:`Snapshot` whose ``summary`` is set (``complete`` is False).

    Raises:
        psycopg.Error: the server went away or refused a query.
    """
    started = time.perf_counter()
    with conn.transaction():
        server, taken_at = read_server(conn)
        settings = read_settings(conn)
        summary, pids = _read_summary(conn, notable)
        sessions_total = _sessions_total(conn)
        sessions = _read_sessions(conn, pids, query_chars)
        # a session that blocks a notable one is notable too (lock_blocking names it)
        blockers = {p for s in sessions for p in s.blocking_pids}.difference(pids)
        if blockers:
            sessions += _read_sessions(conn, sorted(blockers), query_chars)
            sessions.sort(key=lambda s: s.pid)
    return Snapshot(
        taken_at=taken_at,
        server=server,
        settings=settings,
        sessions=tuple(sessions),
        sessions_total=sessions_total,
        duration=time.perf_counter() - started,
        summary=summary,
    )


def new_sessions(conn: psycopg.Connection[Any], since: dt.datetime) -> dict[int, str]:
    """Client sessions started after ``since``: ``{backend pid: application_name}``.

    Cheap enough to poll every few tens of milliseconds while sampling for churn: sessions of a
    connection-per-request client live for milliseconds and a single snapshot misses them.
    """
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(_q("get_new_sessions", conn.info.server_version), {"since": since})
    return {r["pid"]: r["application_name"] or "" for r in rows.fetchall()}


def application_counts(conn: psycopg.Connection[Any]) -> ApplicationCounts:
    """Client sessions per ``application_name`` now (``""`` for none), pgwarden's own session
    left out, those hidden from a role without ``pg_monitor`` included and counted: one cheap
    query, polled while ``pgwarden budget --sample`` watches for peaks."""
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(_q("get_application_counts", conn.info.server_version)).fetchall()
    return ApplicationCounts(sessions={r["application"]: int(r["sessions"]) for r in rows},
                             hidden=sum(int(r["hidden"]) for r in rows))


def role_secrets(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, str | None]:
    """``{role: password verifier}`` (``pg_authid.rolpassword``: SCRAM secrets or md5 hashes;
    ``None``: the role has no password) of the roles in ``names`` that exist; never logged or
    printed.

    Raises:
        psycopg.errors.InsufficientPrivilege: the role is not a superuser (pg_authid).
    """
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(_q("get_role_secrets", conn.info.server_version),
                       {"names": names}).fetchall()
    return {r["name"]: r["secret"] for r in rows}


def login_roles(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, bool]:
    """``{role: may log in}`` for the roles in ``names`` that exist (any role may ask)."""
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(_q("get_login_roles", conn.info.server_version),
                       {"names": names}).fetchall()
    return {r["name"]: bool(r["can_login"]) for r in rows}
