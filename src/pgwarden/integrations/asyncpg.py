"""asyncpg: ``Pool``.

asyncpg's ``Pool`` has ``__slots__``, so no method can be replaced on the instance, and its
public hooks cannot do the job: ``setup`` runs on every acquire but cannot see an acquire that
times out; ``reset`` replaces asyncpg's own reset on release (it would have to re-implement it);
``init`` and ``connect`` only see new connections; all four are constructor arguments, so an
existing pool cannot be given them. What needs no changed line: :func:`instrument` switches the
pool object's class to a subclass of its own class (``__slots__ = ()``, the same memory layout,
so Python allows ``pool.__class__ = ...``) that overrides

- ``_acquire(timeout)`` (PRIVATE API: what asyncpg's own acquire context awaits, for ``async
  with pool.acquire()``, ``await pool.acquire()`` and ``pool.fetch()`` & co. alike): records the
  checkout and turns asyncpg's ``asyncio.TimeoutError`` into :class:`ExplainedAcquireTimeout`;
  ``acquire()`` itself is asyncpg's, so its context object and its coroutines are the only ones
  between the application and the pool, as without pgwarden;
- ``release()`` (public): records the return before asyncpg can hand the connection on, then
  returns asyncpg's own ``release()`` coroutine (no coroutine of its own);
- ``_get_new_connection()`` (PRIVATE API): times new connections and reads their backend pid
  once (``get_server_pid()``).

``isinstance(pool, asyncpg.Pool)`` still holds; ``type(pool)`` is the subclass until
:meth:`AsyncpgInstrumentation.remove` switches it back. Closed connections are seen through
``add_termination_listener`` (public). A checked-out proxy's connection is its PRIVATE ``_con``.

asyncpg keeps a strong reference to a checked-out ``PoolConnectionProxy`` (its holder's
``_proxy`` and the connection's ``_proxy``), so a proxy the application dropped is never
garbage-collected and holds its connection forever. The leak scanner finds such proxies (their
reference count is asyncpg's own references: PRIVATE reads of ``_con``, ``_holder`` and
``_proxy``), reports them as collected and, with ``reclaim=True``, gives them back with the public
``Pool.release()`` on the pool's event loop. Tested with asyncpg 0.29.0 and 0.32.0 (pyproject
pins ``asyncpg>=0.29,<0.33``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
import weakref
from collections.abc import Awaitable
from typing import Any

import asyncpg
from asyncpg.pool import Pool

from ..observe import Sizes, TrackedConnection
from ..pgbouncer.detect import adetect_asyncpg
from ..pgbouncer.drivers import Setting
from ._base import WAITED_AFTER, ExplainedError, Instrumentation, stack_from, task_or_thread
from ._base import skip_library as _skip_library

__all__ = ["AsyncpgInstrumentation", "ExplainedAcquireTimeout", "instrument",
           "instrumentation_of"]

_skip_library(asyncpg)
logger = logging.getLogger("pgwarden.integrations")
_numbers = itertools.count(1)

_getframe = sys._getframe
_monotonic = time.monotonic


class ExplainedAcquireTimeout(asyncio.TimeoutError, ExplainedError):
    """The ``asyncio.TimeoutError`` of ``pool.acquire(timeout=...)`` (``TimeoutError`` on
    Python 3.11+) with a message: the timeout, then the pool's state and its longest holders
    (:class:`~pgwarden.integrations.ExplainedError`)."""


class AsyncpgInstrumentation(Instrumentation):
    """The handle of an instrumented asyncpg pool (see the module docstring)."""

    library = "asyncpg"
    driver = "asyncpg"

    def __init__(self, pool: Pool, *, name: str, leak_threshold: float | None,
                 reclaim: bool) -> None:
        self.pool = pool
        self.base: type[Pool] = type(pool)
        #: ``id(asyncpg Connection) -> record`` (its connections have ``__slots__``)
        self._recs: dict[int, TrackedConnection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        super().__init__(pool, name=name, leak_threshold=leak_threshold, sizes=self._sizes,
                         reclaim=reclaim)
        pool.__class__ = _subclass(self.base, self)
        self._start()

    def _sizes(self) -> Sizes:
        pool = self.pool
        size, idle = pool.get_size(), pool.get_idle_size()
        return Sizes(open=size, idle=idle, in_use=max(0, size - idle),
                     min_size=pool.get_min_size(), max_size=pool.get_max_size())

    # -- connections ---------------------------------------------------------------------

    def _closed(self) -> bool:
        return bool(self.pool.is_closing())

    def _record(self, con: Any, elapsed: float | None) -> TrackedConnection:
        rec = TrackedConnection(con.get_server_pid(), weakref.ref(con))
        self._recs[id(con)] = rec
        wself = weakref.ref(self)

        def terminated(_con: Any) -> None:
            handle = wself()
            if handle is not None:
                handle._terminated(con_id, rec)

        con_id = id(con)
        con.add_termination_listener(terminated)
        return self._begin_tracking(rec, elapsed)

    def _rec_of(self, con: Any) -> TrackedConnection:
        rec = self._recs.get(id(con))
        if rec is None or rec.connection() is not con:
            rec = self._record(con, None)  # open before the pool was instrumented
        return rec

    def _terminated(self, con_id: int, rec: TrackedConnection) -> None:
        if self._recs.get(con_id) is rec:
            del self._recs[con_id]
        with self.lock:
            if rec.out:  # asyncpg gave the holder back when the connection closed
                self.tracker.checkin(rec, _monotonic())
            self.tracker.closed(rec)

    # -- checkouts (the slow paths) ----------------------------------------------------------

    def _timed_out(self, e: BaseException, t0: float, timeout: float | None) -> BaseException:
        with self.lock:
            self.tracker.timed_out(_monotonic() - t0)
            waited = timeout if timeout is not None else _monotonic() - t0
            # explained while this caller still counts as waiting
            err = self._explained(ExplainedAcquireTimeout, e, default=(
                f"timed out acquiring a connection from asyncpg pool {self.name!r} after "
                f"{waited:.2f} s"))
            self.tracker.requests_waiting -= 1
        return err

    # -- dropped proxies -------------------------------------------------------------------

    def _candidates(self) -> list[tuple[int, TrackedConnection, Any]]:
        """The checked-out proxies (PRIVATE read: a connection's ``_proxy``)."""
        out = []
        for rec in list(self.tracker.records):
            con = self._driver_connection(rec) if rec.out else None
            proxy = getattr(con, "_proxy", None)
            if proxy is not None:
                out.append((id(proxy), rec, proxy))
        return out

    def _internal_refs(self, proxy: Any) -> int | None:
        """PRIVATE reads: asyncpg's own references to a checked-out proxy (its holder's and its
        connection's ``_proxy``); ``None`` once it was released."""
        con, holder = getattr(proxy, "_con", None), getattr(proxy, "_holder", None)
        if con is None or holder is None:
            return None
        return int(getattr(holder, "_proxy", None) is proxy) + int(
            getattr(con, "_proxy", None) is proxy)

    def _reclaim(self, key: int, rec: TrackedConnection, proxy: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        pool, base = self.pool, self.base

        async def give_back() -> None:
            if getattr(proxy, "_con", None) is None:  # released meanwhile
                return
            try:
                await base.release(pool, proxy)
            except Exception as e:
                logger.warning("pool %r: could not release the dropped connection backend pid "
                               "%d: %s", self.name, rec.pid, e)
            else:
                logger.warning("pool %r: released the dropped connection backend pid %d back "
                               "to the pool (Pool.release)", self.name, rec.pid)

        with contextlib.suppress(RuntimeError):  # the loop is closed
            asyncio.run_coroutine_threadsafe(give_back(), loop)

    # -- behind PgBouncer (connect time) ----------------------------------------------------

    def _pool_settings(self) -> dict[str, Any] | None:
        # PRIVATE read: the keyword arguments create_pool() keeps for its connections
        kwargs = getattr(self.pool, "_connect_kwargs", None)
        if not isinstance(kwargs, dict):
            return None
        return {"statement_cache_size": kwargs.get("statement_cache_size", 100)}

    async def _check_pooler(self, con: Any) -> None:
        """On a connection asyncpg has just opened (nobody uses it yet): detect what is in
        between when the statement cache would break behind PgBouncer, and judge."""
        # PRIVATE read: the size of the connection's statement cache
        cache = getattr(con, "_stmt_cache", None)
        size = cache.get_max_size() if cache is not None else None
        current = {"statement_cache_size": size}
        if size is not None:
            await self._adetect_on(adetect_asyncpg, con, current)

    def _how(self, settings: tuple[Setting, ...]) -> str:
        args = ", ".join(f"{s.name}={s.value}" for s in settings)
        return f"asyncpg.create_pool(..., {args})"

    def _undo(self) -> None:
        if type(self.pool).__dict__.get("_pgwarden") is self:
            self.pool.__class__ = self.base


def _subclass(base: type[Pool], handle: AsyncpgInstrumentation) -> type[Pool]:
    """A subclass of ``base`` with the same layout (``__slots__ = ()``) whose ``_acquire``,
    ``release`` and ``_get_new_connection`` tell ``handle``.

    The hot path: the one coroutine of ``_acquire`` (asyncpg's acquire context awaits it), two
    clock reads, the record found by the connection's ``id``, the stack; ``release`` is a plain
    function; no lock (module docstring of ``_base``)."""
    tracker, capture = handle.tracker, handle.capture
    checkout, checkin = tracker.checkout, tracker.checkin
    recs_get = handle._recs.get
    base_acquire, base_release = base._acquire, base.release

    async def _acquire(self: Pool, timeout: float | None) -> Any:  # PRIVATE API
        if handle.removed:
            return await base_acquire(self, timeout)
        tracker.requests_waiting += 1
        t0 = _monotonic()
        try:
            proxy = await base_acquire(self, timeout)
        except asyncio.TimeoutError as e:
            raise handle._timed_out(e, t0, timeout) from None
        except BaseException as e:
            handle._failed(e)
            raise
        stack = stack_from(_getframe(1), handle.stack_depth) if capture else ()
        now = _monotonic()
        tracker.requests_waiting -= 1
        con = proxy._con  # PRIVATE read
        rec = recs_get(id(con))
        if rec is None or rec.connection() is not con:
            rec = handle._rec_of(con)
        checkout(rec, task_or_thread(), stack, now)
        if now - t0 > WAITED_AFTER:
            handle._waited(now - t0)
        if handle._loop is None:
            handle._loop = asyncio.get_running_loop()
        return proxy

    def release(self: Pool, connection: Any, *, timeout: float | None = None
                ) -> Awaitable[Any]:
        con = getattr(connection, "_con", None)  # PRIVATE read; None: released already
        if con is not None:
            rec = recs_get(id(con))
            if rec is not None and rec.out:
                checkin(rec, _monotonic())
        released: Awaitable[Any] = base_release(self, connection, timeout=timeout)
        return released

    async def _get_new_connection(self: Pool) -> Any:  # PRIVATE API
        t0 = _monotonic()
        try:
            con = await base._get_new_connection(self)
        except BaseException:
            with handle.lock:
                handle.tracker.connect_failed()
            raise
        if not handle.removed:
            handle._record(con, _monotonic() - t0)
            await handle._check_pooler(con)
        return con

    release.__doc__ = base.release.__doc__
    namespace = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "_pgwarden": handle,
        "_acquire": _acquire,
        "release": release,
        "_get_new_connection": _get_new_connection,
    }
    return type(base.__name__, (base,), namespace)


def instrumentation_of(pool: Any) -> AsyncpgInstrumentation | None:
    """The active instrumentation of an asyncpg pool, or ``None``."""
    handle = type(pool).__dict__.get("_pgwarden")
    return handle if isinstance(handle, AsyncpgInstrumentation) and not handle.removed else None


def instrument(pool: Any, *, name: str | None = None, leak_threshold: float | None = 60.0,
               reclaim: bool = True) -> AsyncpgInstrumentation:
    """Instrument an asyncpg ``Pool`` (see :func:`pgwarden.instrument` and the module
    docstring); an instrumented one returns its handle.

    Raises:
        TypeError: ``pool`` is not an ``asyncpg.Pool``.
    """
    if not isinstance(pool, Pool):
        raise TypeError(f"pgwarden.instrument(): {type(pool).__qualname__} is not an asyncpg "
                        "Pool")
    existing = instrumentation_of(pool)
    if existing is not None:
        return existing
    return AsyncpgInstrumentation(pool, name=name or f"asyncpg-{next(_numbers)}",
                                  leak_threshold=leak_threshold, reclaim=reclaim)
