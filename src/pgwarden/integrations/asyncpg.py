"""asyncpg: ``Pool``.

asyncpg's ``Pool`` has ``__slots__``, so no method can be replaced on the instance, and its
public hooks cannot do the job: ``setup`` runs on every acquire but cannot see an acquire that
times out; ``reset`` replaces asyncpg's own reset on release (it would have to re-implement it);
``init`` and ``connect`` only see new connections; all four are constructor arguments, so an
existing pool cannot be given them. What needs no changed line: :func:`instrument` switches the
pool object's class to a subclass of its own class (``__slots__ = ()``, the same memory layout,
so Python allows ``pool.__class__ = ...``) that overrides

- ``acquire()`` (public): returns a context that records the checkout and turns asyncpg's
  ``asyncio.TimeoutError`` into :class:`ExplainedAcquireTimeout` (``async with
  pool.acquire()``, ``await pool.acquire()`` and ``pool.fetch()`` & co. all go through it);
- ``release()`` (public): records the return before asyncpg can hand the connection on;
- ``_get_new_connection()`` (PRIVATE API): times new connections and reads their backend pid
  once (``get_server_pid()``).

``isinstance(pool, asyncpg.Pool)`` still holds; ``type(pool)`` is the subclass until
:meth:`AsyncpgInstrumentation.remove` switches it back. Closed connections are seen through
``add_termination_listener`` (public).

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
import time
import weakref
from collections.abc import Awaitable, Generator
from typing import Any

import asyncpg
from asyncpg.pool import Pool

from ..observe import Sizes, TrackedConnection
from ..observe.holders import capture_stack
from ..pgbouncer.detect import adetect_asyncpg
from ..pgbouncer.drivers import Setting
from ._base import WAITED_AFTER, ExplainedError, Instrumentation, task_or_thread
from ._base import skip_library as _skip_library

__all__ = ["AsyncpgInstrumentation", "ExplainedAcquireTimeout", "instrument",
           "instrumentation_of"]

_skip_library(asyncpg)
logger = logging.getLogger("pgwarden.integrations")
_numbers = itertools.count(1)


class ExplainedAcquireTimeout(asyncio.TimeoutError, ExplainedError):
    """The ``asyncio.TimeoutError`` of ``pool.acquire(timeout=...)`` (``TimeoutError`` on
    Python 3.11+) with a message: the timeout, then the pool's state and its longest holders
    (:class:`~pgwarden.integrations.ExplainedError`)."""


class _Acquire:
    """What the instrumented ``pool.acquire()`` returns: asyncpg's own acquire context,
    observed."""

    __slots__ = ("_ctx", "_handle", "_timeout")

    def __init__(self, handle: AsyncpgInstrumentation, ctx: Any, timeout: float | None) -> None:
        self._handle = handle
        self._ctx = ctx
        self._timeout = timeout

    async def __aenter__(self) -> Any:
        return await self._handle._acquired(self._ctx.__aenter__(), self._timeout)

    async def __aexit__(self, *exc: Any) -> None:
        await self._ctx.__aexit__(*exc)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._handle._acquired(self._ctx, self._timeout).__await__()


class AsyncpgInstrumentation(Instrumentation):
    """The handle of an instrumented asyncpg pool (see the module docstring)."""

    library = "asyncpg"
    driver = "asyncpg"

    def __init__(self, pool: Pool, *, name: str, leak_threshold: float | None,
                 reclaim: bool) -> None:
        self.pool = pool
        self.base: type[Pool] = type(pool)
        self._by_pid: dict[int, TrackedConnection] = {}
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

    def _record(self, con: Any, elapsed: float | None) -> TrackedConnection:
        rec = TrackedConnection(con.get_server_pid(), weakref.ref(con))
        self._by_pid[rec.pid] = rec
        wself = weakref.ref(self)

        def terminated(_con: Any) -> None:
            handle = wself()
            if handle is not None:
                handle._terminated(rec)

        con.add_termination_listener(terminated)
        with self.lock:
            if elapsed is None:
                self._adopt(rec)
            else:
                self.tracker.connected(rec, elapsed)
        return rec

    def _terminated(self, rec: TrackedConnection) -> None:
        if self._by_pid.get(rec.pid) is rec:
            del self._by_pid[rec.pid]
        with self.lock:
            for key, (r, _proxy) in list(self._out.items()):
                if r is rec:
                    del self._out[key]
            if rec.out:  # asyncpg gave the holder back when the connection closed
                self.tracker.checkin(rec, time.monotonic())
            self.tracker.closed(rec)

    # -- checkouts -------------------------------------------------------------------------

    async def _acquired(self, acquiring: Awaitable[Any], timeout: float | None) -> Any:
        if self.removed:
            return await acquiring
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        tracker, lock = self.tracker, self.lock
        with lock:
            tracker.requests_waiting += 1
        t0 = time.monotonic()
        try:
            proxy = await acquiring
        except asyncio.TimeoutError as e:
            with lock:
                tracker.timed_out(time.monotonic() - t0)
                waited = timeout if timeout is not None else time.monotonic() - t0
                # explained while this caller still counts as waiting
                err = self._explained(ExplainedAcquireTimeout, e, default=(
                    f"timed out acquiring a connection from asyncpg pool {self.name!r} after "
                    f"{waited:.2f} s"))
                tracker.requests_waiting -= 1
            raise err from None
        except BaseException as e:
            with lock:
                tracker.requests_waiting -= 1
                if isinstance(e, Exception):
                    tracker.failed()
            raise
        stack = capture_stack(2, self.stack_depth) if self.capture else ()
        rec = self._by_pid.get(proxy.get_server_pid())
        if rec is None:
            rec = self._record(_connection_of(proxy), None)
        now = time.monotonic()
        holder = task_or_thread()
        with lock:
            tracker.requests_waiting -= 1
            tracker.checkout(rec, holder, stack, now)
            if now - t0 > WAITED_AFTER:
                tracker.waited(now - t0)
            self._out[id(proxy)] = (rec, proxy)
        return proxy

    def _releasing(self, proxy: Any) -> None:
        with self.lock:
            entry = self._out.pop(id(proxy), None)
            if entry is not None and entry[1] is proxy and entry[0].out:
                self.tracker.checkin(entry[0], time.monotonic())

    # -- dropped proxies -------------------------------------------------------------------

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
            entry = self._out.get(key)
            if entry is None or entry[1] is not proxy:
                return
            del self._out[key]
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
        if size is None or not self._needs_probe(current):
            return
        self._pooler_busy = True
        try:
            pooler = await adetect_asyncpg(con)
        except Exception as exc:
            self._probe_failed(exc)
        else:
            self._detected(pooler, current)

    def _how(self, settings: tuple[Setting, ...]) -> str:
        args = ", ".join(f"{s.name}={s.value}" for s in settings)
        return f"asyncpg.create_pool(..., {args})"

    def _undo(self) -> None:
        if type(self.pool).__dict__.get("_pgwarden") is self:
            self.pool.__class__ = self.base


def _connection_of(proxy: Any) -> Any:
    """PRIVATE read: the ``asyncpg.Connection`` behind a pool's proxy."""
    return proxy._con


def _subclass(base: type[Pool], handle: AsyncpgInstrumentation) -> type[Pool]:
    """A subclass of ``base`` with the same layout (``__slots__ = ()``) whose ``acquire``,
    ``release`` and ``_get_new_connection`` tell ``handle``."""

    def acquire(self: Pool, *, timeout: float | None = None) -> Any:
        return _Acquire(handle, base.acquire(self, timeout=timeout), timeout)

    async def release(self: Pool, connection: Any, *, timeout: float | None = None) -> Any:
        if not handle.removed:
            handle._releasing(connection)
        return await base.release(self, connection, timeout=timeout)

    async def _get_new_connection(self: Pool) -> Any:  # PRIVATE API
        t0 = time.monotonic()
        try:
            con = await base._get_new_connection(self)
        except BaseException:
            with handle.lock:
                handle.tracker.connect_failed()
            raise
        if not handle.removed:
            handle._record(con, time.monotonic() - t0)
            await handle._check_pooler(con)
        return con

    for fn, original in ((acquire, base.acquire), (release, base.release)):
        fn.__doc__ = original.__doc__
    namespace = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "_pgwarden": handle,
        "acquire": acquire,
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
