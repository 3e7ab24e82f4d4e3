"""psycopg2: ``psycopg2.pool.SimpleConnectionPool`` and ``ThreadedConnectionPool``.

psycopg2's pools have no hooks. The instrumentation sets instance attributes over four methods
of the pool object (the class is untouched; :meth:`remove` deletes them):

- ``getconn(key=None)`` (public): records the checkout, turns ``PoolError("connection pool
  exhausted")`` (raised at once: psycopg2's pools never wait) into :class:`ExplainedPoolError`;
- ``putconn(conn=None, key=None, close=False)`` (public): records the return before the pool
  can hand the connection on, and the close when psycopg2 closes it;
- ``closeall()`` (public): every record goes;
- ``_connect(key=None)`` (PRIVATE API): times new connections and reads their backend pid once
  (``conn.get_backend_pid()``, no round trip).

psycopg2 keeps a checked-out connection in its ``_used`` dictionary, so a connection the
application dropped is never garbage-collected: the leak scanner finds it (its reference count
is the pool's own reference: PRIVATE reads of ``_rused`` / ``_used``), reports it as collected and,
with ``reclaim=True``, returns it with the public ``putconn`` on the next ``getconn`` or
``putconn`` call (in the application's thread: ``SimpleConnectionPool`` is not thread-safe).
Tested with psycopg2 2.9.5 and 2.9.13 (pyproject pins ``psycopg2-binary>=2.9.5,<2.10``; older
2.9 releases have no wheels for Python 3.11).
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import weakref
from typing import Any

import psycopg2
from psycopg2.pool import AbstractConnectionPool, PoolError

from ..observe import Sizes, TrackedConnection
from ._base import ExplainedError, Instrumentation, backend_pid, stack_from
from ._base import skip_library as _skip_library

__all__ = ["ExplainedPoolError", "Psycopg2Instrumentation", "instrument", "instrumentation_of"]

_skip_library(psycopg2)

_ATTR = "_pgwarden_instrumentation"
_WRAPPED = ("getconn", "putconn", "closeall", "_connect")
_numbers = itertools.count(1)

_getframe = sys._getframe
_monotonic = time.monotonic
_current_thread = threading.current_thread


class ExplainedPoolError(PoolError, ExplainedError):
    """``psycopg2.pool.PoolError`` ("connection pool exhausted") followed by the pool's state and
    its longest holders (:class:`~pgwarden.integrations.ExplainedError`)."""


class Psycopg2Instrumentation(Instrumentation):
    """The handle of an instrumented psycopg2 pool (see the module docstring)."""

    library = "psycopg2"

    def __init__(self, pool: AbstractConnectionPool, *, name: str,
                 leak_threshold: float | None, reclaim: bool) -> None:
        self.pool = pool
        #: ``id(connection) -> record`` (psycopg2's connections take no attributes); an entry
        #: goes when psycopg2 closes its connection
        self._recs: dict[int, TrackedConnection] = {}
        self._to_reclaim: list[Any] = []
        super().__init__(pool, name=name, leak_threshold=leak_threshold, sizes=self._sizes,
                         reclaim=reclaim)
        for conn in list(pool._pool) + list(pool._used.values()):
            self._record(conn, None)
        _wrap(self, pool)
        self._start()

    def _sizes(self) -> Sizes:
        pool: Any = self.pool
        idle, used = len(pool._pool), len(pool._used)
        return Sizes(open=idle + used, idle=idle, in_use=used, min_size=pool.minconn,
                     max_size=pool.maxconn)

    def _closed(self) -> bool:
        return bool(self.pool.closed)

    def _record(self, conn: Any, elapsed: float | None) -> TrackedConnection:
        rec = TrackedConnection(backend_pid(conn), weakref.ref(conn))
        self._recs[id(conn)] = rec
        return self._begin_tracking(rec, elapsed)

    def _forget(self, conn: Any) -> None:
        rec = self._recs.pop(id(conn), None)
        if rec is not None:
            with self.lock:
                self.tracker.closed(rec)

    def _candidates(self) -> list[tuple[int, TrackedConnection, Any]]:
        """The checked-out connections (psycopg2's ``_used`` holds them strongly)."""
        return [(id(conn), rec, conn) for rec in list(self.tracker.records)
                if rec.out and (conn := self._driver_connection(rec)) is not None]

    def _internal_refs(self, conn: Any) -> int | None:
        """PRIVATE reads: the pool's own reference to a checked-out connection (``_used``)."""
        pool: Any = self.pool
        key = pool._rused.get(id(conn))
        return None if key is None or pool._used.get(key) is not conn else 1

    def _reclaim(self, key: int, rec: TrackedConnection, conn: Any) -> None:
        with self.lock:
            self._to_reclaim.append(conn)

    def _reclaim_pending(self, putconn: Any) -> None:
        while self._to_reclaim:
            with self.lock:
                if not self._to_reclaim:
                    return
                conn = self._to_reclaim.pop()
            try:
                putconn(conn)
            except Exception as e:
                _logger().warning("pool %r: could not return the dropped connection backend "
                                  "pid %d: %s", self.name, backend_pid(conn), e)
            else:
                _logger().warning("pool %r: returned the dropped connection backend pid %d to "
                                  "the pool (putconn)", self.name, backend_pid(conn))
            if getattr(conn, "closed", 0):
                self._forget(conn)

    def _explain_exhausted(self, e: PoolError) -> BaseException:
        with self.lock:
            self.tracker.timed_out(0.0)
        return self._explained(ExplainedPoolError, e)

    def _undo(self) -> None:
        for attr in _WRAPPED:
            fn = self.pool.__dict__.get(attr)
            if fn is not None and getattr(fn, "__pgwarden__", False):
                del self.pool.__dict__[attr]
        self.pool.__dict__.pop(_ATTR, None)


def _logger() -> Any:
    from ._base import logger

    return logger


def _wrap(handle: Psycopg2Instrumentation, pool: Any) -> None:
    """Set the four methods over the pool's own on the instance. The hot path (``getconn``,
    ``putconn``): one wrapper layer each way, the record found by ``id``, one clock read each,
    the stack, no lock (module docstring of ``_base``)."""
    getconn, putconn, closeall, connect = pool.getconn, pool.putconn, pool.closeall, \
        pool._connect
    tracker, capture, to_reclaim = handle.tracker, handle.capture, handle._to_reclaim
    checkout, checkin = tracker.checkout, tracker.checkin
    recs_get = handle._recs.get

    def wrapped_getconn(key: Any = None) -> Any:
        if to_reclaim:
            handle._reclaim_pending(putconn)
        try:
            conn = getconn(key)
        except PoolError as e:
            if "exhausted" not in str(e):
                raise
            raise handle._explain_exhausted(e) from None
        rec = recs_get(id(conn))
        if rec is None:
            rec = handle._record(conn, None)
        elif rec.out:  # getconn(key) of a key that holds it already
            return conn
        checkout(rec, _current_thread(),
                 stack_from(_getframe(1), handle.stack_depth) if capture else (), _monotonic())
        return conn

    def wrapped_putconn(conn: Any = None, key: Any = None, close: bool = False) -> None:
        if to_reclaim:
            handle._reclaim_pending(putconn)
        if conn is None and key is not None:
            conn = pool._used.get(key)  # PRIVATE read: putconn(key=...) names no connection
        rec = recs_get(id(conn))
        if rec is not None and rec.out:
            checkin(rec, _monotonic())
        putconn(conn, key, close)
        if rec is not None and conn.closed:
            handle._forget(conn)

    def wrapped_closeall() -> None:
        closeall()
        with handle.lock:
            for rec_key in list(handle._recs):
                tracker.closed(handle._recs.pop(rec_key))

    def wrapped_connect(key: Any = None) -> Any:  # PRIVATE API: psycopg2 opens through it
        t0 = _monotonic()
        try:
            conn = connect(key)
        except BaseException:
            with handle.lock:
                tracker.connect_failed()
            raise
        handle._record(conn, _monotonic() - t0)
        return conn

    wrappers: dict[str, Any] = {"getconn": wrapped_getconn, "putconn": wrapped_putconn,
                                "closeall": wrapped_closeall, "_connect": wrapped_connect}
    for attr, fn in wrappers.items():
        fn.__pgwarden__ = True
        setattr(pool, attr, fn)


def instrumentation_of(pool: Any) -> Psycopg2Instrumentation | None:
    """The active instrumentation of a psycopg2 pool, or ``None``."""
    handle = getattr(pool, "__dict__", {}).get(_ATTR)
    return handle if isinstance(handle, Psycopg2Instrumentation) and not handle.removed \
        else None


def instrument(pool: Any, *, name: str | None = None, leak_threshold: float | None = 60.0,
               reclaim: bool = True) -> Psycopg2Instrumentation:
    """Instrument a psycopg2 ``SimpleConnectionPool`` or ``ThreadedConnectionPool`` (see
    :func:`pgwarden.instrument`); an instrumented one returns its handle.

    Raises:
        TypeError: ``pool`` is not a psycopg2 pool.
    """
    if not isinstance(pool, AbstractConnectionPool):
        raise TypeError(f"pgwarden.instrument(): {type(pool).__qualname__} is not a psycopg2 "
                        "connection pool")
    if not all(callable(getattr(pool, attr, None)) for attr in ("getconn", "putconn")):
        raise TypeError(f"pgwarden.instrument(): {type(pool).__qualname__} has no getconn() / "
                        "putconn(); instrument a SimpleConnectionPool or ThreadedConnectionPool "
                        "(or a subclass of AbstractConnectionPool that defines them)")
    existing = instrumentation_of(pool)
    if existing is not None:
        return existing
    handle = Psycopg2Instrumentation(pool, name=name or f"psycopg2-{next(_numbers)}",
                                     leak_threshold=leak_threshold, reclaim=reclaim)
    setattr(pool, _ATTR, handle)
    return handle
