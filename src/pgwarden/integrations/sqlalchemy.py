"""SQLAlchemy: ``Engine``, ``AsyncEngine`` (through its ``sync_engine``) and ``Pool``.

The checkout and the return are seen by wrapping two methods of the pool instance (instance
attributes; the class is untouched and :meth:`remove` deletes them), not by SQLAlchemy's
``checkout`` and ``checkin`` events: any ``checkout`` listener sends every checkout through
SQLAlchemy's slower path (its reconnect loop and the event dispatch), and the two listeners cost
more than the whole bookkeeping (docs/instrument.md, "Cost").

=============================  ================================================================
hook                           what the tracker hears
=============================  ================================================================
``Pool.connect`` (public)      a checkout by the current thread or task, once SQLAlchemy has
                               the DBAPI connection (after a reconnect or a pre-ping); the
                               fairy's weak reference (PRIVATE reads of ``_connection_record``
                               and its ``fairy_ref``) is kept, to tell a fairy the garbage
                               collector finalized from a close; a ``TimeoutError`` becomes
                               :class:`ExplainedTimeoutError`
``Pool._do_return_conn``       the connection came back (PRIVATE API: every return, a detach
                               and SQLAlchemy's finalizer of a dropped fairy come through it);
                               when the fairy is dead this is the finalizer returning a
                               connection the application dropped: "collected"
``Pool.recreate`` (public)     ``engine.dispose()`` makes a new pool: it is wrapped at once
``connect`` event              a DBAPI connection opened (its backend pid read once, here)
``detach`` event               the connection left the pool (``Connection.detach()``, or an
                               asyncio dialect's finalizer, which detaches a dropped connection
                               rather than reset it outside the event loop)
``close`` event                the DBAPI connection was closed (invalidated, recycled,
                               overflow, disposed)
=============================  ================================================================

The tracker's record of a DBAPI connection lives in ``ConnectionPoolEntry.info`` (public; also
``PoolProxiedConnection.info``), which SQLAlchemy clears whenever the entry gets a new DBAPI
connection. The ``QueuePool`` size is read with ``size()``, ``checkedin()``, ``checkedout()``
and the private ``_max_overflow``. Tested with SQLAlchemy 2.0.0 and 2.1.9 (pyproject pins
``sqlalchemy>=2.0,<2.2``).
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy
from sqlalchemy import event, exc
from sqlalchemy.pool import Pool, QueuePool

from ..observe import Sizes, TrackedConnection
from ..observe.holders import skip_files
from ..pgbouncer.detect import adetect_asyncpg, adetect_psycopg, detect_psycopg
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

__all__ = ["ExplainedTimeoutError", "SQLAlchemyInstrumentation", "instrument",
           "instrumentation_of"]

_skip_library(sqlalchemy)
# SQLAlchemy compiles some wrappers (``_go()`` of the ORM's state decorators) from strings: named
# "<sqlalchemy generated ...>" since 2.0.x, "<string>" before (code compiled from a string has no
# file to point at anyway)
skip_files("<sqlalchemy generated", "<string>")

#: where the tracker's record of a DBAPI connection lives: the ``ConnectionPoolEntry.info``
#: dictionary, which SQLAlchemy clears whenever the entry gets a new DBAPI connection
_KEY = "pgwarden.tracked"
_ATTR = "_pgwarden_instrumentation"
#: the pool methods set on the instance
_WRAPPED = ("connect", "_do_return_conn", "recreate")
_numbers = itertools.count(1)
#: SQLAlchemy's driver name -> :data:`pgwarden.pgbouncer.drivers.DRIVERS` (psycopg2 never
#: prepares on the server: nothing to check)
_DRIVERS = {"psycopg": "sqlalchemy+psycopg", "psycopg_async": "sqlalchemy+psycopg",
            "asyncpg": "sqlalchemy+asyncpg"}

_getframe = sys._getframe
_monotonic = time.monotonic
_current_thread = threading.current_thread


class ExplainedTimeoutError(exc.TimeoutError, ExplainedError):
    """``sqlalchemy.exc.TimeoutError`` ("QueuePool limit of size 5 overflow 10 reached,
    connection timed out, timeout 30.00") followed by the pool's state and its longest holders
    (:class:`~pgwarden.integrations.ExplainedError`)."""


class SQLAlchemyInstrumentation(Instrumentation):
    """The handle of an instrumented SQLAlchemy engine or pool (see the module docstring)."""

    library = "sqlalchemy"

    def __init__(self, target: Any, engine: Any, pool: Pool, *, name: str,
                 leak_threshold: float | None, reclaim: bool) -> None:
        self.engine = engine
        self._pool = pool
        #: every pool wrapped (the engine's, and the ones ``dispose()`` replaced it with while
        #: connections checked out of them may still come back)
        self._wrapped: weakref.WeakSet[Pool] = weakref.WeakSet()
        super().__init__(target, name=name, leak_threshold=leak_threshold, sizes=self._sizes,
                         reclaim=reclaim)
        dialect = engine.dialect if engine is not None else getattr(pool, "_dialect", None)
        self.is_async = bool(getattr(dialect, "is_async", False))
        self.driver = _DRIVERS.get(str(getattr(dialect, "driver", "")), "")
        self._listeners = (
            ("connect", self._on_connect),
            ("detach", self._on_detach),
            ("close", self._on_close),
        )
        #: where the listeners were registered: removing them there also removes the copies
        #: ``Pool.recreate()`` made for later pools
        self._listened = pool
        for identifier, fn in self._listeners:
            event.listen(pool, identifier, fn)
        _wrap(self, pool)
        self._start()

    @property
    def pool(self) -> Pool:
        """The pool now (an engine's ``dispose()`` replaces it)."""
        return self.engine.pool if self.engine is not None else self._pool

    def _sizes(self) -> Sizes | None:
        pool = self.pool
        if not isinstance(pool, QueuePool):
            return None  # NullPool, StaticPool...: the tracker counts its own records
        idle, out = pool.checkedin(), pool.checkedout()
        max_overflow = int(getattr(pool, "_max_overflow", -1))
        return Sizes(open=idle + out, idle=idle, in_use=out, min_size=None,
                     max_size=None if max_overflow < 0 else pool.size() + max_overflow)

    def _driver_connection(self, rec: TrackedConnection) -> Any:
        entry = rec.connection
        dbapi = getattr(entry, "dbapi_connection", None)
        return getattr(dbapi, "driver_connection", dbapi)

    # -- events ------------------------------------------------------------------------------

    def _track(self, dbapi_connection: Any, entry: Any) -> TrackedConnection:
        driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        rec = TrackedConnection(backend_pid(driver), entry)
        entry.info[_KEY] = rec
        return rec

    def _on_connect(self, dbapi_connection: Any, entry: Any) -> None:
        if self.engine is not None and self.engine.pool is not self._pool:
            self._new_pool(self.engine.pool)  # replaced without recreate(): wrap it now
        started = getattr(entry, "last_connect_time", None)
        elapsed = max(0.0, time.time() - started) if started else 0.0
        self._begin_tracking(self._track(dbapi_connection, entry), elapsed)
        if self.driver and self.pooler is None:
            self._check_pooler(dbapi_connection)

    # -- behind PgBouncer (connect time) ----------------------------------------------------

    def _settings_of(self, dbapi_connection: Any) -> dict[str, Any]:
        driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        if self.driver == "sqlalchemy+psycopg":
            return {"prepare_threshold": driver.prepare_threshold,
                    "prepared_max": driver.prepared_max}
        # PRIVATE reads: the asyncpg dialect's adapted connection keeps its prepared statement
        # cache (None when prepared_statement_cache_size=0) and name function; asyncpg its
        # statement cache
        cache = getattr(dbapi_connection, "_prepared_statement_cache", None)
        name_func = getattr(dbapi_connection, "_prepared_statement_name_func", None)
        default = getattr(dbapi_connection, "_default_name_func", None)
        stmt_cache = getattr(driver, "_stmt_cache", None)
        return {
            "statement_cache_size": stmt_cache.get_max_size() if stmt_cache is not None else 0,
            "prepared_statement_cache_size": getattr(cache, "capacity", 100) if cache else 0,
            "prepared_statement_name_func": None if name_func == default else name_func,
        }

    def _check_pooler(self, dbapi_connection: Any) -> None:
        """On a connection the pool has just opened (SQLAlchemy's ``connect`` event, before it
        serves anyone): detect what is in between when the dialect's settings would break
        behind PgBouncer, and judge. asyncio dialects run the probe through the adapted
        connection's ``run_async()`` (SQLAlchemy's public API for awaitable driver calls in
        pool events)."""
        try:
            current = self._settings_of(dbapi_connection)
        except Exception as exc:  # an adapted connection of another shape: leave it
            self._probe_failed(exc)
            return
        if not self._needs_probe(current):
            return
        self._pooler_busy = True
        try:
            if self.driver == "sqlalchemy+asyncpg":
                pooler = dbapi_connection.run_async(adetect_asyncpg)
            elif self.is_async:
                pooler = dbapi_connection.run_async(adetect_psycopg)
            else:
                driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
                pooler = detect_psycopg(driver)
        except Exception as exc:
            self._probe_failed(exc)
        else:
            self._detected(pooler, current)

    def _how(self, settings: tuple[Setting, ...]) -> str:
        args = ", ".join(f'"{s.name}": {s.value}' for s in settings)
        make = "create_async_engine" if self.is_async else "create_engine"
        return f"{make}(url, connect_args={{{args}}})"

    def _untracked(self, fairy: Any) -> TrackedConnection:
        """A checkout of a connection opened before the pool was instrumented."""
        return self._begin_tracking(
            self._track(fairy.dbapi_connection, fairy._connection_record), None)

    def _returned(self, rec: TrackedConnection) -> None:
        handle = rec.handle
        with self.lock:
            if handle is not None and handle() is None:
                # SQLAlchemy's finalizer of a fairy the application dropped
                self.tracker.collected(rec)
            else:
                self.tracker.checkin(rec, _monotonic())

    def _left_pool(self, entry: Any) -> None:
        rec = entry.info.pop(_KEY, None)
        if rec is None:
            return
        if rec.out:
            self._returned(rec)
        with self.lock:
            self.tracker.closed(rec)

    def _on_detach(self, dbapi_connection: Any, entry: Any) -> None:
        self._left_pool(entry)

    def _on_close(self, dbapi_connection: Any, entry: Any) -> None:
        self._left_pool(entry)

    def _timed_out(self, e: exc.TimeoutError, t0: float) -> BaseException:
        with self.lock:
            self.tracker.timed_out(_monotonic() - t0)
            # explained while this caller still counts as waiting
            err = self._explained(ExplainedTimeoutError, e)
            self.tracker.requests_waiting -= 1
        return err

    def _new_pool(self, pool: Pool) -> None:
        """``engine.dispose()`` replaced the pool (``Pool.recreate()`` copied the listeners):
        wrap the new one. (An ``engine_disposed`` listener would do too, but any engine-level
        listener makes SQLAlchemy dispatch connection events on every ``Connection``: +3 µs per
        checkout.) Connections still checked out of the old pool come back to it, still
        wrapped."""
        if pool in self._wrapped:
            return
        _wrap(self, pool)
        if self.engine is not None:  # (a pool instrumented by itself stays the target)
            old, self._pool = self._pool, pool
            setattr(pool, _ATTR, self)
            old.__dict__.pop(_ATTR, None)

    def _undo(self) -> None:
        for identifier, fn in self._listeners:
            if event.contains(self._listened, identifier, fn):
                event.remove(self._listened, identifier, fn)
        pools = [*self._wrapped, self._pool]
        if self.engine is not None:
            pools.append(self.engine.pool)
            self.engine.__dict__.pop(_ATTR, None)
        for pool in pools:
            _unwrap(pool)
            pool.__dict__.pop(_ATTR, None)
        with self.lock:
            for rec in list(self.tracker.records):
                entry = rec.connection
                info = getattr(entry, "info", None)
                if info is not None and info.get(_KEY) is rec:
                    del info[_KEY]


def _greenlet_stack() -> Callable[[int], Any]:
    """The checkout stack under an asyncio dialect: the pool runs in a greenlet whose frames are
    SQLAlchemy's down to its bridge; the application's coroutine is on the asyncio side, above
    the suspended ``greenlet_spawn`` (the parent greenlet's frame). Outside the bridge (no
    parent): the caller's frames. (A checkout inside ``run_sync(fn)`` is located at the line
    awaiting ``run_sync``.)"""
    from greenlet import getcurrent  # asyncio dialects require it

    def stack(depth: int) -> Any:
        parent = getcurrent().parent
        return stack_from(parent.gr_frame if parent is not None else _getframe(2), depth)

    return stack


def _wrap(handle: SQLAlchemyInstrumentation, pool: Pool) -> None:
    """Set ``connect``, ``_do_return_conn`` (PRIVATE API) and ``recreate`` over the pool's own,
    on the instance.

    The hot path: one wrapper layer each way, two clock reads at a checkout and one at a
    return, the record read from the entry's ``info``, SQLAlchemy's weak reference to the fairy
    kept, the stack, no lock (module docstring of ``_base``)."""
    connect, do_return_conn, recreate = pool.connect, pool._do_return_conn, pool.recreate
    tracker, capture = handle.tracker, handle.capture
    checkout, checkin = tracker.checkout, tracker.checkin
    holder_of: Callable[[], Any] = task_or_thread if handle.is_async else _current_thread
    greenlet_stack = _greenlet_stack() if handle.is_async else None

    def wrapped_connect() -> Any:
        tracker.requests_waiting += 1
        t0 = _monotonic()
        try:
            fairy = connect()
        except exc.TimeoutError as e:
            raise handle._timed_out(e, t0) from None
        except BaseException as e:
            handle._failed(e)
            raise
        now = _monotonic()
        tracker.requests_waiting -= 1
        entry = fairy._connection_record  # PRIVATE read (PoolProxiedConnection.info is the
        rec = entry.info.get(_KEY)        # same dict, through a property made per checkout)
        # PRIVATE read: SQLAlchemy's own weak reference to the fairy (cleared before its
        # finalizer runs); a weak reference of ours would cost one more object per checkout
        fairy_ref = entry.fairy_ref or weakref.ref(fairy)
        if rec is None:
            rec = handle._untracked(fairy)
        elif rec.out and rec.handle is fairy_ref:
            return fairy  # the same fairy again (SingletonThreadPool: the thread's own)
        if not capture:
            stack: Any = ()
        elif greenlet_stack is not None:
            stack = greenlet_stack(handle.stack_depth)
        else:
            stack = stack_from(_getframe(1), handle.stack_depth)
        checkout(rec, holder_of(), stack, now)
        rec.handle = fairy_ref
        if now - t0 > WAITED_AFTER:
            handle._waited(now - t0)
        return fairy

    def wrapped_do_return_conn(record: Any) -> None:  # PRIVATE API
        rec = record.info.get(_KEY)
        if rec is not None and rec.out:
            fairy_ref = rec.handle
            if fairy_ref is not None and fairy_ref() is None:
                handle._returned(rec)  # SQLAlchemy's finalizer of a dropped fairy
            else:
                checkin(rec, _monotonic())
        do_return_conn(record)

    def wrapped_recreate() -> Any:
        new = recreate()
        if not handle.removed:
            handle._new_pool(new)
        return new

    wrappers: dict[str, Any] = {"connect": wrapped_connect,
                                "_do_return_conn": wrapped_do_return_conn,
                                "recreate": wrapped_recreate}
    for attr, fn in wrappers.items():
        fn.__pgwarden__ = True
        setattr(pool, attr, fn)
    handle._wrapped.add(pool)


def _unwrap(pool: Pool) -> None:
    for attr in _WRAPPED:
        fn = pool.__dict__.get(attr)
        if fn is not None and getattr(fn, "__pgwarden__", False):
            del pool.__dict__[attr]


def _resolve(target: Any) -> tuple[Any, Pool]:
    """``(engine or None, pool)`` of a target."""
    from sqlalchemy.engine import Engine

    sync_engine = getattr(target, "sync_engine", None)  # AsyncEngine
    if isinstance(sync_engine, Engine):
        return sync_engine, sync_engine.pool
    if isinstance(target, Engine):
        return target, target.pool
    if isinstance(target, Pool):
        return None, target
    raise TypeError(f"pgwarden.instrument(): {type(target).__qualname__} is not a SQLAlchemy "
                    "Engine, AsyncEngine or Pool")


def instrumentation_of(target: Any) -> SQLAlchemyInstrumentation | None:
    """The active instrumentation of an engine or pool, or ``None``."""
    engine, pool = _resolve(target)
    for obj in (engine, pool):
        handle = obj.__dict__.get(_ATTR) if obj is not None else None
        if isinstance(handle, SQLAlchemyInstrumentation) and not handle.removed:
            return handle
    return None


def _default_name(engine: Any) -> str:
    if engine is None:
        return f"sqlalchemy-{next(_numbers)}"
    url = engine.url
    port = f":{url.port}" if url.port else ""
    return f"{url.username or ''}@{url.host or ''}{port}/{url.database or ''}"


def instrument(target: Any, *, name: str | None = None, leak_threshold: float | None = 60.0,
               reclaim: bool = True) -> SQLAlchemyInstrumentation:
    """Instrument a SQLAlchemy ``Engine``, ``AsyncEngine`` or ``Pool`` (see
    :func:`pgwarden.instrument`); an instrumented one returns its handle."""
    existing = instrumentation_of(target)
    if existing is not None:
        return existing
    engine, pool = _resolve(target)
    handle = SQLAlchemyInstrumentation(target, engine, pool, name=name or _default_name(engine),
                                       leak_threshold=leak_threshold, reclaim=reclaim)
    for obj in (engine, pool):
        if obj is not None:
            setattr(obj, _ATTR, handle)
    return handle
