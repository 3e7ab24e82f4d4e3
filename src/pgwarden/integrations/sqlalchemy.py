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

plus ``engine_disposed`` (``ConnectionEvents``) for an ``Engine`` target: ``dispose()`` replaces
the pool (``Pool.recreate()`` copies the listeners) and the new pool's timeout is wrapped again.

Private API (SQLAlchemy has no hook for a checkout that times out): the pool instance's
``_do_get`` (``QueuePool`` and subclasses) is wrapped in :func:`_wrap_do_get` to count waiting
callers and to raise :class:`ExplainedTimeoutError`; the ``QueuePool`` size is read with
``size()``, ``checkedin()``, ``checkedout()`` and the private ``_max_overflow``. Tested with
SQLAlchemy 2.0 and 2.1 (pyproject pins ``sqlalchemy>=2.0,<2.2``).
"""

from __future__ import annotations

import itertools
import time
import weakref
from typing import Any

import sqlalchemy
from sqlalchemy import event, exc
from sqlalchemy.pool import Pool, QueuePool

from ..observe import Sizes, TrackedConnection
from ..observe.holders import capture_stack, skip_files
from ._base import WAITED_AFTER, ExplainedError, Instrumentation, backend_pid, frames_from
from ._base import skip_library as _skip_library

__all__ = ["ExplainedTimeoutError", "SQLAlchemyInstrumentation", "instrument",
           "instrumentation_of"]

_skip_library(sqlalchemy)
# SQLAlchemy compiles some wrappers (``_go()`` of the ORM's state decorators) with this file name
skip_files("<sqlalchemy generated")

#: where the tracker's record of a DBAPI connection lives: the ``ConnectionPoolEntry.info``
#: dictionary, which SQLAlchemy clears whenever the entry gets a new DBAPI connection
_KEY = "pgwarden.tracked"
_ATTR = "_pgwarden_instrumentation"
_numbers = itertools.count(1)


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
        self._listeners = (
            ("connect", self._on_connect),
            ("checkout", self._on_checkout),
            ("checkin", self._on_checkin),
            ("detach", self._on_detach),
            ("close", self._on_close),
        )
        for identifier, fn in self._listeners:
            event.listen(pool, identifier, fn)
        if engine is not None:
            event.listen(engine, "engine_disposed", self._on_disposed)
        _wrap_do_get(self, pool)
        self._start()

    @property
    def pool(self) -> Pool:
        """The pool now (an engine's ``dispose()`` replaces it)."""
        return self.engine.pool if self.engine is not None else self._pool  # type: ignore[no-any-return]

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
        rec = self._track(dbapi_connection, entry)
        started = getattr(entry, "last_connect_time", None)
        elapsed = max(0.0, time.time() - started) if started else 0.0
        with self.lock:
            self.tracker.connected(rec, elapsed)

    def _stack(self) -> Any:
        if not self.capture:
            return ()
        if self.is_async:
            # the sync side runs in a greenlet whose frames end at SQLAlchemy's bridge: add
            # the suspended asyncio side, where the application's coroutine is
            return capture_stack(4, 6) + frames_from(_greenlet_parent_frame(), self.stack_depth)
        # 0 capture_stack, 1 this, 2 _on_checkout, 3 the event dispatcher, 4 _checkout,
        # 5 Pool.connect, 6 its caller
        return capture_stack(6, self.stack_depth)

    def _on_checkout(self, dbapi_connection: Any, entry: Any, fairy: Any) -> None:
        rec = entry.info.get(_KEY)
        if rec is None:
            with self.lock:
                rec = self._adopt(self._track(dbapi_connection, entry))
        stack = self._stack()
        holder = self._holder()
        now = time.monotonic()
        with self.lock:
            self.tracker.checkout(rec, holder, stack, now)
        rec.handle = weakref.ref(fairy)

    def _holder(self) -> Any:
        from ._base import task_or_thread

        return task_or_thread()

    def _on_checkin(self, dbapi_connection: Any, entry: Any) -> None:
        rec = entry.info.get(_KEY)
        if rec is None or not rec.out:
            return
        self._returned(rec)

    def _returned(self, rec: TrackedConnection) -> None:
        handle = rec.handle
        with self.lock:
            if handle is not None and handle() is None:
                # SQLAlchemy's finalizer of a fairy the application dropped
                self.tracker.collected(rec)
            else:
                self.tracker.checkin(rec, time.monotonic())

    def _gone(self, entry: Any) -> None:
        rec = entry.info.pop(_KEY, None)
        if rec is None:
            return
        if rec.out:
            self._returned(rec)
        with self.lock:
            self.tracker.closed(rec)

    def _on_detach(self, dbapi_connection: Any, entry: Any) -> None:
        self._gone(entry)

    def _on_close(self, dbapi_connection: Any, entry: Any) -> None:
        self._gone(entry)

    def _on_disposed(self, engine: Any) -> None:
        # the old pool closed its idle connections (close events); the new one needs its
        # timeout wrapped; connections still checked out come back to the old pool
        _wrap_do_get(self, engine.pool)
        setattr(engine.pool, _ATTR, self)

    def _undo(self) -> None:
        for identifier, fn in self._listeners:
            if event.contains(self._pool, identifier, fn):
                event.remove(self._pool, identifier, fn)
            if self.engine is not None and event.contains(self.engine.pool, identifier, fn):
                event.remove(self.engine.pool, identifier, fn)
        if self.engine is not None:
            if event.contains(self.engine, "engine_disposed", self._on_disposed):
                event.remove(self.engine, "engine_disposed", self._on_disposed)
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
            waited = time.monotonic() - t0
            with lock:
                tracker.timed_out(waited)
            err = handle._explained(ExplainedTimeoutError, e)
            raise err from None
        except Exception:
            with lock:
                tracker.failed()
            raise
        finally:
            with lock:
                tracker.requests_waiting -= 1
        waited = time.monotonic() - t0
        if waited > WAITED_AFTER:
            with lock:
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
