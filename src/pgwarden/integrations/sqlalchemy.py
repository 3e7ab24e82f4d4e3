"""SQLAlchemy: ``Engine``, ``AsyncEngine`` (through its ``sync_engine``) and ``Pool``.

Hooks (SQLAlchemy's documented pool events, ``sqlalchemy.events.PoolEvents``):

=================  ==========================================================================
event              what the tracker hears
=================  ==========================================================================
``connect``        a DBAPI connection opened (its backend pid read once, here)
``checkout``       a checkout by the current thread or task; the ``_ConnectionFairy`` is kept
                   weakly, to tell a fairy the garbage collector finalized from a close
``checkin``        the connection came back; when the fairy is dead this is SQLAlchemy's
                   finalizer returning a connection the application dropped: "collected"
``detach``         the connection left the pool (``Connection.detach()``, or an asyncio
                   dialect's finalizer, which detaches a dropped connection rather than reset
                   it outside the event loop: "collected")
``close``          the DBAPI connection was closed (invalidated, recycled, overflow, disposed)
=================  ==========================================================================

An ``Engine``'s ``dispose()`` replaces its pool (``Pool.recreate()`` copies the listeners); the
new pool's timeout is wrapped at its first ``connect`` event.

Private API (SQLAlchemy has no hook for a checkout that times out): the pool instance's
``_do_get`` (``QueuePool`` and subclasses) is wrapped in :func:`_wrap_do_get` to count waiting
callers and to raise :class:`ExplainedTimeoutError`; the ``QueuePool`` size is read with
``size()``, ``checkedin()``, ``checkedout()`` and the private ``_max_overflow``. Tested with
SQLAlchemy 2.0.0 and 2.1.9 (pyproject pins ``sqlalchemy>=2.0,<2.2``).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from typing import Any

import sqlalchemy
from sqlalchemy import event, exc
from sqlalchemy.pool import Pool, QueuePool

from ..observe import Sizes, TrackedConnection
from ..observe.holders import capture_stack, skip_files
from ..pgbouncer.detect import adetect_asyncpg, adetect_psycopg, detect_psycopg
from ..pgbouncer.drivers import Setting
from ._base import (
    WAITED_AFTER,
    ExplainedError,
    Instrumentation,
    backend_pid,
    frames_from,
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
_numbers = itertools.count(1)
#: SQLAlchemy's driver name -> :data:`pgwarden.pgbouncer.drivers.DRIVERS` (psycopg2 never
#: prepares on the server: nothing to check)
_DRIVERS = {"psycopg": "sqlalchemy+psycopg", "psycopg_async": "sqlalchemy+psycopg",
            "asyncpg": "sqlalchemy+asyncpg"}


class ExplainedTimeoutError(exc.TimeoutError, ExplainedError):
    """``sqlalchemy.exc.TimeoutError`` ("QueuePool limit of size 5 overflow 10 reached,
    connection timed out, timeout 30.00") followed by the pool's state and its longest holders
    (:class:`~pgwarden.integrations.ExplainedError`)."""


def _greenlet_parent_frame() -> Any:
    """The frame the asyncio side of SQLAlchemy's greenlet bridge is suspended in (its
    ``greenlet_spawn``): the application's coroutine is above it."""
    try:
        import greenlet
    except ImportError:  # pragma: no cover - asyncio dialects require it
        return None
    parent = greenlet.getcurrent().parent
    return None if parent is None else parent.gr_frame


class SQLAlchemyInstrumentation(Instrumentation):
    """The handle of an instrumented SQLAlchemy engine or pool (see the module docstring)."""

    library = "sqlalchemy"
    #: frames kept from the caller of ``Pool.connect`` outwards: the ORM's ``Session`` sits
    #: up to ~10 frames above it
    stack_depth = 14

    def __init__(self, target: Any, engine: Any, pool: Pool, *, name: str,
                 leak_threshold: float | None, reclaim: bool) -> None:
        self.engine = engine
        self._pool = pool
        super().__init__(target, name=name, leak_threshold=leak_threshold, sizes=self._sizes,
                         reclaim=reclaim)
        dialect = engine.dialect if engine is not None else getattr(pool, "_dialect", None)
        self.is_async = bool(getattr(dialect, "is_async", False))
        self.driver = _DRIVERS.get(str(getattr(dialect, "driver", "")), "")
        self._holder = task_or_thread if self.is_async else threading.current_thread
        self._listeners = (
            ("connect", self._on_connect),
            ("checkout", self._on_checkout),
            ("checkin", self._on_checkin),
            ("detach", self._on_detach),
            ("close", self._on_close),
        )
        #: where the listeners were registered: removing them there also removes the copies
        #: ``Pool.recreate()`` made for later pools
        self._listened = pool
        for identifier, fn in self._listeners:
            event.listen(pool, identifier, fn)
        _wrap_do_get(self, pool)
        self._start()

    @property
    def pool(self) -> Pool:
        """The pool now (an engine's ``dispose()`` replaces it)."""
        return self.engine.pool if self.engine is not None else self._pool

    def _sizes(self) -> Sizes:
        pool = self.pool
        if not isinstance(pool, QueuePool):
            raise TypeError("no sizes")  # the tracker counts its own records
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
            self._new_pool(self.engine.pool)
        rec = self._track(dbapi_connection, entry)
        started = getattr(entry, "last_connect_time", None)
        elapsed = max(0.0, time.time() - started) if started else 0.0
        with self.lock:
            self.tracker.connected(rec, elapsed)
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

    def _async_stack(self) -> Any:
        # the sync side runs in a greenlet whose frames end at SQLAlchemy's bridge: add the
        # suspended asyncio side, where the application's coroutine is
        return capture_stack(4, 6) + frames_from(_greenlet_parent_frame(), self.stack_depth)

    def _on_checkout(self, dbapi_connection: Any, entry: Any, fairy: Any) -> None:
        rec = entry.info.get(_KEY)
        if rec is None:
            with self.lock:
                rec = self._adopt(self._track(dbapi_connection, entry))
        if not self.capture:
            stack: Any = ()
        elif self.is_async:
            stack = self._async_stack()
        else:
            # 0 capture_stack, 1 this, 2 the event dispatcher, 3 _checkout, 4 Pool.connect,
            # 5 its caller
            stack = capture_stack(5, self.stack_depth)
        holder = self._holder()  # the thread (sync) or the task (asyncio dialects)
        now = time.monotonic()
        with self.lock:
            self.tracker.checkout(rec, holder, stack, now)
        rec.handle = weakref.ref(fairy)

    def _on_checkin(self, dbapi_connection: Any, entry: Any) -> None:
        rec = entry.info.get(_KEY)
        if rec is not None and rec.out:
            self._returned(rec)

    def _returned(self, rec: TrackedConnection) -> None:
        handle = rec.handle
        with self.lock:
            if handle is not None and handle() is None:
                # SQLAlchemy's finalizer of a fairy the application dropped
                self.tracker.collected(rec)
            else:
                self.tracker.checkin(rec, time.monotonic())

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

    def _new_pool(self, pool: Pool) -> None:
        """``engine.dispose()`` replaced the pool (``Pool.recreate()`` copied the listeners):
        wrap the new pool's timeout. Seen at its first connection, which comes before any
        checkout of it can time out. (An ``engine_disposed`` listener would do it at once, but
        any engine-level listener makes SQLAlchemy dispatch connection events on every
        ``Connection``: +3 µs per checkout.) Connections still checked out of the old pool
        come back to it and are seen by the same listeners."""
        old, self._pool = self._pool, pool
        _wrap_do_get(self, pool)
        setattr(pool, _ATTR, self)
        old.__dict__.pop(_ATTR, None)

    def _undo(self) -> None:
        for identifier, fn in self._listeners:
            if event.contains(self._listened, identifier, fn):
                event.remove(self._listened, identifier, fn)
        if self.engine is not None:
            _unwrap_do_get(self.engine.pool)
            self.engine.__dict__.pop(_ATTR, None)
            self.engine.pool.__dict__.pop(_ATTR, None)
        _unwrap_do_get(self._pool)
        self._pool.__dict__.pop(_ATTR, None)
        with self.lock:
            for rec in list(self.tracker.records):
                entry = rec.connection
                info = getattr(entry, "info", None)
                if info is not None and info.get(_KEY) is rec:
                    del info[_KEY]


def _wrap_do_get(handle: SQLAlchemyInstrumentation, pool: Pool) -> None:
    """PRIVATE API: wrap the pool instance's ``_do_get`` (QueuePool and its subclasses: the
    only pools whose checkout waits and times out) to count the callers waiting and to raise
    :class:`ExplainedTimeoutError` instead of ``sqlalchemy.exc.TimeoutError``."""
    if not isinstance(pool, QueuePool) or "_do_get" in pool.__dict__:
        return
    original = pool._do_get
    tracker, lock = handle.tracker, handle.lock

    def _do_get() -> Any:
        with lock:
            tracker.requests_waiting += 1
        t0 = time.monotonic()
        try:
            entry = original()
        except exc.TimeoutError as e:
            with lock:
                tracker.timed_out(time.monotonic() - t0)
                # explained while this caller still counts as waiting
                err = handle._explained(ExplainedTimeoutError, e)
                tracker.requests_waiting -= 1
            raise err from None
        except BaseException as e:
            with lock:
                tracker.requests_waiting -= 1
                if isinstance(e, Exception):
                    tracker.failed()
            raise
        waited = time.monotonic() - t0
        with lock:
            tracker.requests_waiting -= 1
            if waited > WAITED_AFTER:
                tracker.waited(waited)
        return entry

    _do_get.__pgwarden__ = True  # type: ignore[attr-defined]
    pool._do_get = _do_get  # type: ignore[method-assign]


def _unwrap_do_get(pool: Pool) -> None:
    fn = pool.__dict__.get("_do_get")
    if fn is not None and getattr(fn, "__pgwarden__", False):
        del pool.__dict__["_do_get"]


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
