"""The connections the pools hand out: psycopg's classes plus one rule, the replay of a first
statement killed by a server shutdown.

A statement that fails because the server ended the session is re-run once on a new
connection, transparently, only when all of these hold (the test is :func:`replay_candidate`
and :func:`pgwarden.pool._core.ended_by_server`; the pool decides the rest):

* it is the first thing sent on the connection since it was checked out (any other I/O, such
  as ``commit()``, ``conn.transaction()``, ``copy()`` or a server-side cursor, clears the
  candidacy);
* the connection is not in autocommit mode, no transaction is open and no pipeline is active,
  so the statement ran inside its own new transaction, which the server rolled back when the
  session ended: nothing was committed, and no session state (``SET``, temporary tables)
  from the caller was lost;
* the error says the server ended the session (SQLSTATE 57P01 admin_shutdown or 57P02
  crash_shutdown, or the connection was lost);
* a new connection attempt made right then is refused because the server is shutting down,
  starting up or in recovery (57P03), or cannot be reached. If the server accepts it, only
  this session was ended (``pg_terminate_backend``: somebody meant to stop this statement),
  and the caller gets the error.

The statement then waits for a connection like any caller (up to the pool's ``timeout``) and
runs on it; the caller's connection object is kept (its adapters, settings and notice
handlers), only its server session changes. Pools count it in ``statements_replayed``.

Connections made with another ``connection_class`` (or cursors from another
``cursor_factory``) work as before, without replay; subclass these to keep it.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import Row

from ._core import ConnRef, Slot

__all__ = ["AsyncConnection", "AsyncCursor", "Connection", "Cursor"]

_IDLE = pq.TransactionStatus.IDLE
_BaseConnection: Any = next(c for c in psycopg.Connection.__mro__ if c.__name__ == "BaseConnection")


def replay_candidate(conn: Any) -> bool:
    """Whether a statement about to run on ``conn`` may be replayed if the server shutdown
    kills it: first I/O since checkout, not autocommit, no transaction, no pipeline."""
    return (
        conn._pgw_fresh
        and not conn.autocommit
        and conn.pgconn.transaction_status == _IDLE
        and not conn.pgconn.pipeline_status
    )


def transplant(conn: Any, fresh: Any, old: Slot, on_collected: Any) -> None:
    """Move the server session of ``fresh`` (just checked out) into ``conn`` (whose session
    the server ended) and hand ``fresh`` the dead one, so ``fresh`` can be closed. The pool's
    record of ``fresh``'s slot now points at ``conn`` and keeps the original holder, stack and
    checkout time."""
    slot = fresh._pgw_slot
    conn.pgconn, fresh.pgconn = fresh.pgconn, conn.pgconn
    # statements psycopg prepared on the old server session do not exist on the new one
    conn._prepared, fresh._prepared = fresh._prepared, conn._prepared
    for c in (conn, fresh):
        wself = weakref.ref(c)
        c.pgconn.notice_handler = partial(_BaseConnection._notice_handler, wself)
        c.pgconn.notify_handler = partial(_BaseConnection._notify_handler, wself)
    slot.holder, slot.stack, slot.out_at = old.holder, old.stack, old.out_at
    slot.leak_reported = old.leak_reported
    ref = ConnRef(conn, on_collected)
    ref.slot = slot
    slot.ref = ref
    old.ref = None  # the dead slot must not be "reclaimed" when conn is collected
    conn._pgw_slot = slot
    fresh._pgw_slot = None
    fresh._pool = None


class Connection(psycopg.Connection[Row]):
    """``psycopg.Connection`` whose first statement after a checkout survives a server restart
    (see the module docstring). The default ``connection_class`` of
    :class:`~pgwarden.pool.ConnectionPool`."""

    _pgw_fresh = False  # set at checkout, cleared by any I/O

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = Cursor

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        self._pgw_fresh = False
        return super().wait(*args, **kwargs)


class Cursor(psycopg.Cursor[Row]):
    """``psycopg.Cursor`` whose ``execute()`` applies the replay rule."""

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool | None = None) -> Any:
        conn: Any = self._conn
        if not replay_candidate(conn):
            return super().execute(query, params, prepare=prepare, binary=binary)
        try:
            return super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.OperationalError as exc:
            pool = conn._pool
            if pool is None or not pool._replace_session(conn, exc):
                raise
        self._pgconn = conn.pgconn
        return super().execute(query, params, prepare=prepare, binary=binary)


class AsyncConnection(psycopg.AsyncConnection[Row]):
    """The asyncio twin of :class:`Connection`; the default ``connection_class`` of
    :class:`~pgwarden.pool.AsyncConnectionPool`."""

    _pgw_fresh = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = AsyncCursor

    async def wait(self, *args: Any, **kwargs: Any) -> Any:
        self._pgw_fresh = False
        return await super().wait(*args, **kwargs)


class AsyncCursor(psycopg.AsyncCursor[Row]):
    """``psycopg.AsyncCursor`` whose ``execute()`` applies the replay rule."""

    async def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                      binary: bool | None = None) -> Any:
        conn: Any = self._conn
        if not replay_candidate(conn):
            return await super().execute(query, params, prepare=prepare, binary=binary)
        try:
            return await super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.OperationalError as exc:
            pool = conn._pool
            if pool is None or not await pool._replace_session(conn, exc):
                raise
        self._pgconn = conn.pgconn
        return await super().execute(query, params, prepare=prepare, binary=binary)
