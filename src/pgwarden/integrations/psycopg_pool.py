"""psycopg_pool: ``ConnectionPool`` and ``AsyncConnectionPool``.

psycopg_pool has no event hooks (``configure``, ``check`` and ``reset`` are constructor
arguments, so an existing pool cannot be given them). The instrumentation sets instance
attributes over three methods of the pool object (the class is untouched; :meth:`remove` deletes
them):

- ``getconn`` (public; ``connection()`` calls ``self.getconn``, so both are covered): counts the
  waiting callers, records the checkout, turns ``PoolTimeout`` into
  :class:`ExplainedPoolTimeout`;
- ``putconn`` (public; ``connection()`` and Django call it): records the return *before* the
  pool can hand the connection to a waiting caller;
- ``_connect`` (PRIVATE API, :func:`_wrap_connect`): times each new connection and reads its
  backend pid once (``conn.info.backend_pid``).

The tracker's record of a connection is an attribute of the psycopg connection object
(``_pgwarden_tracked``, set when it opens, deleted by :meth:`remove`): a checkout and a return
find it without a lookup table. The record keeps the connection as a weak reference with a
callback, made once per connection: when psycopg_pool drops a connection it closed, the record
goes; when the application drops one it never returned (psycopg_pool keeps no reference to a
checked-out connection), it is reported as collected by the next leak scan (psycopg_pool cannot
take that slot back: it stays counted in the pool's size until the pool is closed, as without
pgwarden). Tested with psycopg_pool 3.2.0 and 3.3.3 (pyproject pins
``psycopg_pool>=3.2,<3.4``).
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import psycopg_pool
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from ..observe import Sizes, TrackedConnection
from ..pgbouncer.detect import adetect_psycopg, detect_psycopg
from ..pgbouncer.drivers import Setting
from ._base import (
    WAITED_AFTER,
    ExplainedError,
    Instrumentation,
    backend_pid,
    stack_from,
    task_or_thread,
)
from ._base import skip_library as _skip_library

__all__ = ["ExplainedPoolTimeout", "PsycopgPoolInstrumentation", "instrument",
           "instrumentation_of"]

_skip_library(psycopg_pool)

_ATTR = "_pgwarden_instrumentation"
_WRAPPED = ("getconn", "putconn", "_connect")
#: the tracker's record of a connection, set on the psycopg connection object (psycopg's
#: connections have a ``__dict__``; psycopg_pool sets ``_pool`` on them the same way)
_REC = "_pgwarden_tracked"

_getframe = sys._getframe
_monotonic = time.monotonic
_current_thread = threading.current_thread


class ExplainedPoolTimeout(PoolTimeout, ExplainedError):
    """``psycopg_pool.PoolTimeout`` ("couldn't get a connection after 30.00 sec") followed by
    the pool's state and its longest holders (:class:`~pgwarden.integrations.ExplainedError`)."""


class PsycopgPoolInstrumentation(Instrumentation):
    """The handle of an instrumented psycopg_pool pool (see the module docstring)."""

    library = "psycopg_pool"
    driver = "psycopg"

    def __init__(self, pool: Any, *, name: str, leak_threshold: float | None,
                 reclaim: bool) -> None:
        self.pool = pool
        self.is_async = isinstance(pool, AsyncConnectionPool)
        super().__init__(pool, name=name, leak_threshold=leak_threshold, sizes=self._sizes,
                         reclaim=reclaim)
        _wrap(self, pool)
        self._start()

    def _sizes(self) -> Sizes:
        s = self.pool.get_stats()
        size, idle = s.get("pool_size", 0), s.get("pool_available", 0)
        return Sizes(open=size, idle=idle, in_use=max(0, size - idle),
                     min_size=self.pool.min_size, max_size=self.pool.max_size)

    def _closed(self) -> bool:
        return bool(self.pool.closed)

    def _record(self, conn: Any, elapsed: float | None) -> TrackedConnection:
        """Track a connection (``elapsed``: seconds it took to open; ``None``: it was open
        before the pool was instrumented)."""
        rec = TrackedConnection(backend_pid(conn))
        rec.connection = weakref.ref(conn, self._collector(rec))
        setattr(conn, _REC, rec)
        return self._begin_tracking(rec, elapsed)

    def _collector(self, rec: TrackedConnection) -> Callable[[Any], None]:
        wself = weakref.ref(self)

        def gone(_ref: Any) -> None:
            handle = wself()
            if handle is not None and not handle.removed:
                handle._gone.append(rec)  # reported by the next leak scan

        return gone

    def _gave_up(self, exc: BaseException, t0: float) -> BaseException | None:
        err = None
        with self.lock:
            if isinstance(exc, PoolTimeout):
                self.tracker.timed_out(_monotonic() - t0)
                if not isinstance(exc, ExplainedPoolTimeout):
                    # explained while this caller still counts as waiting
                    err = self._explained(ExplainedPoolTimeout, exc)
            elif isinstance(exc, Exception):
                self.tracker.failed()
            self.tracker.requests_waiting -= 1
        return err

    # -- behind PgBouncer (connect time) ----------------------------------------------------

    def _pool_settings(self) -> dict[str, Any] | None:
        kwargs = self.pool.kwargs
        if callable(kwargs):
            return None
        kwargs = kwargs or {}
        return {"prepare_threshold": kwargs.get("prepare_threshold", 5),
                "prepared_max": kwargs.get("prepared_max", 100)}

    @staticmethod
    def _settings_of(conn: Any) -> dict[str, Any]:
        return {"prepare_threshold": conn.prepare_threshold, "prepared_max": conn.prepared_max}

    def _check_pooler(self, conn: Any) -> None:
        """On a connection psycopg_pool has just opened (before it serves anyone)."""
        self._detect_on(detect_psycopg, conn, self._settings_of(conn))

    async def _acheck_pooler(self, conn: Any) -> None:
        await self._adetect_on(adetect_psycopg, conn, self._settings_of(conn))

    def _how(self, settings: tuple[Setting, ...]) -> str:
        kwargs = ", ".join(f'"{s.name}": {s.value}' for s in settings)
        cls = "AsyncConnectionPool" if self.is_async else "ConnectionPool"
        return f"{cls}(..., kwargs={{{kwargs}}})"

    def _undo(self) -> None:
        for attr in _WRAPPED:
            fn = self.pool.__dict__.get(attr)
            if fn is not None and getattr(fn, "__pgwarden__", False):
                del self.pool.__dict__[attr]
        self.pool.__dict__.pop(_ATTR, None)
        with self.lock:
            for rec in list(self.tracker.records):
                conn = self._driver_connection(rec)
                if conn is not None and conn.__dict__.get(_REC) is rec:
                    del conn.__dict__[_REC]


def _wrap(handle: PsycopgPoolInstrumentation, pool: Any) -> None:
    """Set ``getconn`` and ``putconn`` (and ``_connect``) over the pool's own on the instance.

    The hot path: one wrapper layer each way, two clock reads, the record read from the
    connection object, the stack, no lock (module docstring of ``_base``). The sync and the
    async wrappers are the same lines around a call or an await."""
    getconn, putconn = pool.getconn, pool.putconn
    tracker, capture = handle.tracker, handle.capture
    checkout, checkin, records = tracker.checkout, tracker.checkin, tracker.records
    holder_of: Callable[[], Any] = task_or_thread if handle.is_async else _current_thread

    if handle.is_async:
        async def wrapped_getconn(timeout: float | None = None) -> Any:
            tracker.requests_waiting += 1
            t0 = _monotonic()
            try:
                conn = await getconn(timeout)
            except BaseException as e:
                err = handle._gave_up(e, t0)
                if err is not None:
                    raise err from None
                raise
            stack = stack_from(_getframe(1), handle.stack_depth) if capture else ()
            now = _monotonic()
            tracker.requests_waiting -= 1
            try:
                rec = conn._pgwarden_tracked
            except AttributeError:  # open before the pool was instrumented
                rec = handle._record(conn, None)
            checkout(rec, holder_of(), stack, now)
            if now - t0 > WAITED_AFTER:
                handle._waited(now - t0)
            return conn

        async def wrapped_putconn(conn: Any) -> None:
            try:
                rec = conn._pgwarden_tracked
            except AttributeError:  # not a connection of the pool: psycopg_pool says so
                rec = None
            if rec is not None and rec.out and rec in records:  # (another pool's: it says so)
                checkin(rec, _monotonic())
            await putconn(conn)

    else:
        def wrapped_getconn(timeout: float | None = None) -> Any:  # type: ignore[misc]
            tracker.requests_waiting += 1
            t0 = _monotonic()
            try:
                conn = getconn(timeout)
            except BaseException as e:
                err = handle._gave_up(e, t0)
                if err is not None:
                    raise err from None
                raise
            stack = stack_from(_getframe(1), handle.stack_depth) if capture else ()
            now = _monotonic()
            tracker.requests_waiting -= 1
            try:
                rec = conn._pgwarden_tracked
            except AttributeError:  # open before the pool was instrumented
                rec = handle._record(conn, None)
            checkout(rec, holder_of(), stack, now)
            if now - t0 > WAITED_AFTER:
                handle._waited(now - t0)
            return conn

        def wrapped_putconn(conn: Any) -> None:  # type: ignore[misc]
            try:
                rec = conn._pgwarden_tracked
            except AttributeError:  # not a connection of the pool: psycopg_pool says so
                rec = None
            if rec is not None and rec.out and rec in records:  # (another pool's: it says so)
                checkin(rec, _monotonic())
            putconn(conn)

    _set(pool, "getconn", wrapped_getconn)
    _set(pool, "putconn", wrapped_putconn)
    _wrap_connect(handle, pool)


def _wrap_connect(handle: PsycopgPoolInstrumentation, pool: Any) -> None:
    """PRIVATE API: wrap the pool instance's ``_connect(timeout=None)`` (psycopg_pool opens
    every connection through it, in its worker threads or tasks) to time new connections and
    track them from the start."""
    original = pool._connect

    async def wrapped_async(timeout: float | None = None) -> Any:
        t0 = _monotonic()
        try:
            conn = await original(timeout)
        except BaseException:
            with handle.lock:
                handle.tracker.connect_failed()
            raise
        handle._record(conn, _monotonic() - t0)
        await handle._acheck_pooler(conn)
        return conn

    def wrapped(timeout: float | None = None) -> Any:
        t0 = _monotonic()
        try:
            conn = original(timeout)
        except BaseException:
            with handle.lock:
                handle.tracker.connect_failed()
            raise
        handle._record(conn, _monotonic() - t0)
        handle._check_pooler(conn)
        return conn

    _set(pool, "_connect", wrapped_async if handle.is_async else wrapped)


def _set(pool: Any, attr: str, fn: Any) -> None:
    fn.__pgwarden__ = True
    setattr(pool, attr, fn)


def instrumentation_of(pool: Any) -> PsycopgPoolInstrumentation | None:
    """The active instrumentation of a psycopg_pool pool, or ``None``."""
    handle = getattr(pool, "__dict__", {}).get(_ATTR)
    return handle if isinstance(handle, PsycopgPoolInstrumentation) and not handle.removed \
        else None


def instrument(pool: Any, *, name: str | None = None, leak_threshold: float | None = 60.0,
               reclaim: bool = True) -> PsycopgPoolInstrumentation:
    """Instrument a psycopg_pool ``ConnectionPool`` or ``AsyncConnectionPool`` (see
    :func:`pgwarden.instrument`); an instrumented one returns its handle.

    Raises:
        TypeError: ``pool`` is not a psycopg_pool pool (the null pools are pools too).
    """
    if not isinstance(pool, (ConnectionPool, AsyncConnectionPool)):
        raise TypeError(f"pgwarden.instrument(): {type(pool).__qualname__} is not a psycopg_pool "
                        "ConnectionPool or AsyncConnectionPool")
    existing = instrumentation_of(pool)
    if existing is not None:
        return existing
    handle = PsycopgPoolInstrumentation(pool, name=name or pool.name,
                                        leak_threshold=leak_threshold, reclaim=reclaim)
    setattr(pool, _ATTR, handle)
    return handle
