"""The asyncio pool: :class:`AsyncConnectionPool` (drop-in for
``psycopg_pool.AsyncConnectionPool``).

Same rules as :class:`~pgwarden.pool.ConnectionPool` (they live in :mod:`._core`); state is only
touched from the event loop, so no lock is needed. The pool binds to the loop that first uses it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from contextlib import suppress
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import psycopg
from psycopg import AsyncConnection

from ..errors import PoolClosed, PoolError, TooManyRequests
from . import _core
from . import connection as _connection
from ._core import TS, WAIT_R, Core, ProbeFailed, Slot, logger
from .holders import STACK_DEPTH, Holder
from .sync import _fork_epoch, _neutralize

__all__ = ["AsyncConnectionPool"]

ACT = TypeVar("ACT", bound="AsyncConnection[Any]")

_monotonic = time.monotonic
_getframe = sys._getframe
_current_task = asyncio.current_task

_live_pools: weakref.WeakSet[AsyncConnectionPool[Any]] = weakref.WeakSet()


class _Waiter:
    __slots__ = ("fut", "name", "since", "stack")

    def __init__(self, fut: asyncio.Future[tuple[Slot, Any]], name: str, stack: Any,
                 since: float) -> None:
        self.fut = fut
        self.name = name
        self.stack = stack
        self.since = since


class _AsyncConnectionCM(Generic[ACT]):
    __slots__ = ("conn", "pool", "timeout")

    def __init__(self, pool: AsyncConnectionPool[ACT], timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    async def __aenter__(self) -> ACT:
        self.conn = await self.pool._getconn(self.timeout)
        return self.conn

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        conn = self.conn
        try:
            action = _core.end_of_block(conn.pgconn.transaction_status, conn.closed,
                                        et is not None)
            if action == "commit":
                await conn.commit()
            elif action == "rollback":
                try:
                    await conn.rollback()
                except Exception as exc:
                    logger.warning("error ignored in rollback on %s: %s", conn, exc)
        finally:
            await self.pool.putconn(conn)


class _AsyncTransactionCM(Generic[ACT]):
    __slots__ = ("conn", "pool", "timeout", "tx")

    def __init__(self, pool: AsyncConnectionPool[ACT], timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    async def __aenter__(self) -> ACT:
        self.conn = await self.pool._getconn(self.timeout)
        try:
            self.tx = self.conn.transaction()
            await self.tx.__aenter__()
        except BaseException:
            await self.pool.putconn(self.conn)
            raise
        return self.conn

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self.tx.__aexit__(et, ev, tb)
        finally:
            await self.pool.putconn(self.conn)


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


class AsyncConnectionPool(_core.PoolProperties, Generic[ACT]):
    """The asyncio twin of :class:`~pgwarden.pool.ConnectionPool`: same parameters, rules and
    defaults; ``configure``, ``check`` and ``reset`` are ``async`` callbacks and
    ``reconnect_failed`` may be either (as psycopg_pool).

    ``open=None`` (the default) and ``open=True`` mark the pool open at construction; the
    background tasks start on first use inside a running event loop (psycopg_pool warns about
    opening an async pool in its constructor; here it is safe). Methods that psycopg_pool makes
    ``async`` are ``async`` here too.

    Raises:
        ConfigError: an argument is out of range (raised at construction).
    """

    def __init__(
        self,
        conninfo: str | Callable[[], Any] = "",
        *,
        connection_class: type[ACT] = cast(Any, _connection.AsyncConnection),
        kwargs: dict[str, Any] | Callable[[], Any] | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: Callable[[ACT], Awaitable[None]] | None = None,
        check: Callable[[ACT], Awaitable[None]] | None = None,
        reset: Callable[[ACT], Awaitable[None]] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Callable[[AsyncConnectionPool[ACT]], Any] | None = None,
        num_workers: int = 3,
        leak_threshold: float | None = _core.DEFAULT_LEAK_THRESHOLD,
        validation_window: float = _core.DEFAULT_VALIDATION_WINDOW,
        validation_timeout: float = _core.DEFAULT_VALIDATION_TIMEOUT,
        connection_defaults: bool = True,
    ) -> None:
        self._config = _core.make_config(
            conninfo=conninfo, kwargs=kwargs, min_size=min_size, max_size=max_size, name=name,
            timeout=timeout, max_waiting=max_waiting, max_lifetime=max_lifetime,
            max_idle=max_idle, reconnect_timeout=reconnect_timeout, num_workers=num_workers,
            leak_threshold=leak_threshold, validation_window=validation_window,
            validation_timeout=validation_timeout, connection_defaults=connection_defaults,
        )
        self.connection_class = connection_class
        self._configure = configure
        self._check = check
        self._reset = reset
        self._reconnect_failed = reconnect_failed
        self.close_returns = close_returns
        self._defaults = _core.static_defaults(self._config)
        self._opened = False
        self._closed = True
        self._init_runtime()
        _live_pools.add(self)
        if open is None or open:
            self._opened = True
            self._closed = False

    def _init_runtime(self) -> None:
        self._pid = os.getpid()
        self._epoch = _fork_epoch[0]
        self._core = Core(self._config, self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open the pool (start its tasks, fill to ``min_size``); idempotent.

        Raises:
            PoolClosed: the pool was closed (it cannot be reopened).
        """
        if self._opened and self._closed:
            raise PoolClosed(f"pool {self.name!r} is already closed")
        self._opened = True
        self._closed = False
        self._ensure_started()
        if wait:
            await self.wait(timeout)

    def _ensure_started(self) -> None:
        if self._epoch != _fork_epoch[0] or self._pid != os.getpid():
            self._after_fork()
        if self._loop is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._spawn(self._maintain())
        self._start_connects(self._core.to_start(_monotonic()))

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until ``min_size`` connections are open.

        Raises:
            PoolTimeout: not ready in ``timeout`` s; the pool is closed and the message gives
                the last connection error.
        """
        self._ensure_started()
        deadline = _monotonic() + timeout
        core = self._core
        while core.size < self._config.min_size:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            if _monotonic() >= deadline:
                err = core.init_timeout_error(timeout)
                await self.close()
                raise err
            await asyncio.sleep(0.005)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: fail waiters with :class:`PoolClosed`, close idle connections, stop
        the tasks (waiting up to ``timeout`` s). Checked-out connections close on return."""
        if self._closed:
            return
        self._closed = True
        core = self._core
        idle = core.discard_idle()
        while core.waiters:
            w = core.waiters.popleft()
            if not w.fut.done():
                w.fut.set_exception(
                    PoolClosed(f"the pool {self.name!r} was closed while waiting"))
        for slot in idle:
            await self._close_conn(slot.conn)
        tasks = [t for t in self._tasks if t is not _current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def __aenter__(self) -> AsyncConnectionPool[ACT]:
        await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- fork safety ----------------------------------------------------------------------

    def _after_fork(self) -> None:
        old = self._core
        conns = [s.conn for s in old.idle]
        conns += [s.ref() for s in old.slots if s.out and s.ref is not None]
        _neutralize(conns)
        self._init_runtime()
        logger.info("pool %r: used in a new process (pid %d): dropped %d inherited connections",
                    self.name, self._pid, len(conns))

    # -- checkout ---------------------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> _AsyncConnectionCM[ACT]:
        """``async with pool.connection() as conn``: as psycopg_pool (commit on success, roll
        back on error, return to the pool; never loses the connection on cancellation)."""
        return _AsyncConnectionCM(self, timeout)

    def transaction(self, timeout: float | None = None) -> _AsyncTransactionCM[ACT]:
        """``async with pool.transaction() as conn``: commit on success, roll back on any
        exception including ``asyncio.CancelledError``."""
        return _AsyncTransactionCM(self, timeout)

    async def getconn(self, timeout: float | None = None) -> ACT:
        """Check out a connection; ``await putconn()`` it (prefer :meth:`connection`).

        Raises:
            PoolTimeout, PoolClosed, TooManyRequests: as :meth:`ConnectionPool.getconn`.
        """
        return await self._getconn(timeout)

    async def _getconn(self, timeout: float | None) -> ACT:
        if self._loop is None or self._epoch != _fork_epoch[0]:
            self._ensure_started()
        core = self._core
        cfg = self._config
        if cfg.leak_threshold:
            stack: Any = []
            f: Any = _getframe(2)
            depth = STACK_DEPTH
            while f is not None and depth:
                stack.append((f.f_code, f.f_lasti))
                f = f.f_back
                depth -= 1
        else:
            stack = ()
        task = _current_task()
        name = task.get_name() if task is not None else threading.current_thread().name
        now = _monotonic()
        if timeout is None:
            timeout = cfg.timeout
        deadline = now + timeout
        first = 1  # a retry after a stale connection is not a new request
        while True:
            if self._closed:
                raise PoolClosed(f"the pool {self.name!r} is not open")
            core.stats.requests_num += first
            first = 0
            if core.idle:
                slot = core.idle.pop()
                conn = cast(ACT, slot.conn)
                core.take_out(slot, now, name, stack)
            else:
                slot, conn = await self._wait(name, stack, now, timeout, deadline)
                now = _monotonic()
            if (
                slot.gen >= core.gen
                and now - slot.last_used <= cfg.validation_window
                and not slot.poller.poll(0)
                and self._check is None
            ):
                conn._pgw_fresh = True  # type: ignore[attr-defined]
                return conn
            if await self._ready(slot, conn, now):
                conn._pgw_fresh = True  # type: ignore[attr-defined]
                return conn
            now = _monotonic()
            if now >= deadline:
                core.stats.requests_errors += 1
                raise core.timeout_error(timeout, now, now)

    async def _wait(self, name: str, stack: Any, now: float, timeout: float,
                    deadline: float) -> tuple[Slot, ACT]:
        core = self._core
        cfg = self._config
        if cfg.max_waiting and len(core.waiters) >= cfg.max_waiting:
            core.stats.requests_errors += 1
            raise TooManyRequests(
                f"the pool {self.name!r} already has {len(core.waiters)} requests waiting "
                f"(max_waiting={cfg.max_waiting})"
            )
        if core.gc_queue:
            self._reclaim()
        assert self._loop is not None
        fut: asyncio.Future[tuple[Slot, Any]] = self._loop.create_future()
        w = _Waiter(fut, name, stack, now)
        core.waiters.append(w)
        core.stats.requests_queued += 1
        self._start_connects(core.to_start(now))
        if core.failures and self._wake is not None:
            self._wake.set()

        def expire() -> None:
            if not fut.done():
                with suppress(ValueError):
                    core.waiters.remove(w)
                t = _monotonic()
                core.stats.requests_errors += 1
                core.stats.requests_wait_ms += (t - w.since) * 1000.0
                fut.set_exception(core.timeout_error(timeout, t, w.since))

        handle = self._loop.call_at(self._loop.time() + max(0.0, deadline - _monotonic()), expire)
        try:
            slot, conn = await fut
        except asyncio.CancelledError:
            # cancelled while waiting: if a connection was already handed to us, give it back
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                slot, conn = fut.result()
                await self._give_back(slot, conn)
            else:
                with suppress(ValueError):
                    core.waiters.remove(w)
            raise
        finally:
            handle.cancel()
        return slot, cast(ACT, conn)

    async def _ready(self, slot: Slot, conn: ACT, now: float) -> bool:
        core = self._core
        try:
            if core.needs_probe(slot, now) or slot.poller.poll(0):
                core.stats.validations_num += 1
                await self._probe(conn.pgconn)
            if self._check is not None:
                await self._check(conn)
            return True
        except asyncio.CancelledError:
            await self._discard(slot, conn)
            raise
        except Exception as exc:
            reason = f"validation failed: {_core._first_line(exc)}"
        core.validation_failed(slot, f"stale connection pid {slot.pid} ({reason})")
        logger.info("pool %r: discarding stale connection pid %d: %s", self.name, slot.pid,
                    reason)
        await self._discard(slot, conn)
        return False

    async def _probe(self, pgconn: Any) -> None:
        loop = asyncio.get_running_loop()
        gen = _core.probe(pgconn)
        vt = self._config.validation_timeout
        deadline = _monotonic() + vt
        fd = pgconn.socket
        for what in gen:
            fut: asyncio.Future[None] = loop.create_future()

            def ready(fut: asyncio.Future[None] = fut) -> None:
                if not fut.done():
                    fut.set_result(None)

            if what == WAIT_R:
                loop.add_reader(fd, ready)
            else:
                loop.add_writer(fd, ready)
            try:
                await asyncio.wait_for(fut, max(0.0, deadline - _monotonic()))
            except (asyncio.TimeoutError, TimeoutError):
                raise ProbeFailed(f"no answer within validation_timeout={vt} s") from None
            finally:
                if what == WAIT_R:
                    loop.remove_reader(fd)
                else:
                    loop.remove_writer(fd)

    async def _discard(self, slot: Slot, conn: Any) -> None:
        self._core.discard(slot)
        self._start_connects(self._core.to_start(_monotonic()))
        await self._close_conn(conn)

    async def _give_back(self, slot: Slot, conn: Any) -> None:
        now = _monotonic()
        self._core.returned(slot, now)
        if not self._closed and self._core.reusable(slot, now):
            self._add(slot, conn, now)
        else:
            await self._discard(slot, conn)

    # -- return --------------------------------------------------------------------------------

    async def putconn(self, conn: ACT) -> None:
        """Return a connection (as :meth:`ConnectionPool.putconn`). If the calling task is
        cancelled meanwhile, the connection is discarded and replaced, never lost.

        Raises:
            ValueError: the connection does not come from this pool.
        """
        try:
            slot: Slot | None = conn._pgw_slot  # type: ignore[attr-defined]
        except AttributeError:
            slot = None
        if slot is None or cast(Any, conn._pool) is not self:
            raise _core.foreign_connection(self, conn)
        if self._epoch != _fork_epoch[0]:
            self._after_fork()
            return
        if not slot.out:
            logger.warning("pool %r: connection pid %d returned twice; ignored", self.name,
                           slot.pid)
            return
        conn._pgw_fresh = False  # type: ignore[attr-defined]
        core = self._core
        bad: str | None = None
        try:
            status = conn.pgconn.transaction_status
            if status != TS.IDLE:
                bad = _core.return_verdict(conn, status)
                if bad == "rollback":
                    _core.log_rollback(self.name, slot, conn)
                    core.stats.returns_rolled_back += 1
                    bad = None
                    try:
                        await conn.rollback()
                    except Exception as exc:
                        bad = f"broken: rollback failed: {exc}"
            if bad is None and self._reset is not None:
                try:
                    await self._reset(conn)
                    if conn.pgconn.transaction_status != TS.IDLE:
                        bad = "left not idle by the reset function"
                except Exception as exc:
                    bad = f"reset function failed: {exc}"
        except BaseException:
            # cancelled (or interrupted) while resetting: the state is unknown, replace it
            core.returned(slot, _monotonic())
            core.stats.returns_bad += 1
            await self._discard(slot, conn)
            raise
        now = _monotonic()
        unleaked = core.returned(slot, now)
        if unleaked:
            _core.log_unleaked(self.name, slot, now)
        if bad is None and not self._closed and core.reusable(slot, now):
            self._add(slot, conn, now)
            return
        if bad is not None:
            core.stats.returns_bad += 1
            if bad.startswith("broken"):
                core.disconnect_detected(slot, f"connection pid {slot.pid} {bad}")
            logger.info("pool %r: discarding returned connection pid %d: %s", self.name,
                        slot.pid, bad)
        await self._discard(slot, conn)

    async def _replace_session(self, conn: ACT, exc: BaseException) -> bool:
        """As :meth:`ConnectionPool._replace_session`."""
        slot: Slot | None = getattr(conn, "_pgw_slot", None)
        if not self._core.may_replay(slot, self._closed, exc, conn):
            return False
        assert slot is not None
        try:  # is the server going down, or was only this session ended?
            await (await self._connect()).close()
        except Exception as refused:
            why = _core.going_down(refused)
        else:
            why = None  # it accepts: pg_terminate_backend of this session, the caller must know
        if why is None:
            return False
        self._start_connects(self._core.session_ended(slot, _monotonic()))
        try:
            fresh = await self._getconn(None)
        except PoolError as err:
            logger.warning("pool %r: could not run the statement again (%s)", self.name, err)
            return False
        _connection.transplant(conn, fresh, slot, self._conn_collected)
        await fresh.close()
        self._core.replayed()
        _core.log_replayed(self.name, slot, conn._pgw_slot, why)  # type: ignore[attr-defined]
        return True

    def _add(self, slot: Slot, conn: Any, now: float) -> None:
        core = self._core
        while core.waiters:
            w = core.waiters.popleft()
            if w.fut.done():
                continue
            core.take_out(slot, now, w.name, w.stack)
            core.stats.requests_wait_ms += (now - w.since) * 1000.0
            w.fut.set_result((slot, conn))
            return
        slot.conn = conn
        core.idle.append(slot)

    async def _close_conn(self, conn: Any) -> None:
        if conn is None:
            return
        with suppress(Exception):
            conn._pool = None
            await conn.close()

    def _conn_collected(self, ref: _core.ConnRef) -> None:
        self._core.gc_queue.append(ref.slot)

    def _reclaim(self) -> None:
        for slot in self._core.reclaim_collected():
            _core.log_reclaimed(self.name, slot)
        self._start_connects(self._core.to_start(_monotonic()))

    # -- connecting ---------------------------------------------------------------------------

    def _start_connects(self, n: int) -> None:
        for _ in range(n):
            self._spawn(self._connect_task())

    async def _connect(self) -> ACT:
        cfg = self._config
        conninfo = cfg.conninfo() if callable(cfg.conninfo) else cfg.conninfo
        if inspect.isawaitable(conninfo):
            conninfo = await conninfo
        kwargs = cfg.kwargs() if callable(cfg.kwargs) else cfg.kwargs
        if inspect.isawaitable(kwargs):
            kwargs = await kwargs
        kw = _core.connect_params(conninfo, kwargs, self._defaults, cfg)
        conn = await self.connection_class.connect(conninfo, **kw)
        try:
            if self._configure is not None:
                await self._configure(conn)
                if conn.pgconn.transaction_status != TS.IDLE:
                    raise psycopg.ProgrammingError(
                        "connection left in a transaction by the configure function")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _connect_task(self) -> None:
        core = self._core
        done = False
        try:
            while True:
                now = _monotonic()
                if (
                    self._closed
                    or not core.still_wanted()
                    or (core.failures and core.connecting > 1)
                ):
                    return
                delay = core.retry_delay(now)
                if delay > 0:
                    assert self._wake is not None
                    with suppress(asyncio.TimeoutError, TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    self._wake.clear()
                    continue
                core.connect_started(now)
                try:
                    conn = await self._connect()
                except Exception as exc:
                    if core.connect_failed(exc, _monotonic()):
                        logger.warning("pool %r: could not connect for reconnect_timeout; "
                                       "giving up until a caller asks for a connection",
                                       self.name)
                        if self._reconnect_failed is not None:
                            try:
                                await _maybe_await(self._reconnect_failed(self))
                            except Exception:
                                logger.exception("pool %r: reconnect_failed raised", self.name)
                    continue
                t1 = _monotonic()
                core.connecting -= 1
                done = True
                slot = core.connect_ok(conn, t1, t1 - now, self._conn_collected)
                conn._pool = cast(Any, self)
                conn._pgw_slot = slot  # type: ignore[attr-defined]
                if self._closed:
                    core.discard(slot)
                    await self._close_conn(conn)
                else:
                    self._add(slot, conn, t1)
                self._start_connects(core.to_start(t1))
                return
        finally:
            if not done:
                core.connecting -= 1

    # -- maintenance -----------------------------------------------------------------------------

    async def _maintain(self) -> None:
        tick = _core.maintenance_tick(self._config.leak_threshold)
        while not self._closed:
            await asyncio.sleep(tick)
            try:
                await self._maintain_once()
            except Exception:
                logger.exception("pool %r: unexpected error in maintenance", self.name)

    async def _maintain_once(self) -> None:
        core = self._core
        now = _monotonic()
        if self._closed:
            return
        expired = core.expired_idle(now)
        leaks = core.leak_scan(now)
        self._reclaim()
        self._start_connects(core.to_start(now))
        for slot in expired:
            await self._close_conn(slot.conn)
        _core.report_leaks(self.name, core, leaks, now)

    # -- maintenance API ------------------------------------------------------------------------

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``min_size``/``max_size`` at runtime (as :meth:`ConnectionPool.resize`)."""
        min_size, max_size = _core.check_sizes(min_size, max_size)
        logger.info("resizing %r to min_size=%s max_size=%s", self.name, min_size, max_size)
        core = self._core
        surplus = core.resize(min_size, max_size)
        if self._loop is not None:
            self._start_connects(core.to_start(_monotonic()))
        for slot in surplus:
            await self._close_conn(slot.conn)

    async def check(self) -> None:
        """Validate every idle connection now; discard and replace dead ones."""
        core = self._core
        slots, core.idle = core.idle, []
        for slot in slots:
            try:
                await self._probe(slot.conn.pgconn)
            except Exception as exc:
                logger.info("pool %r: check discarded pid %d: %s", self.name, slot.pid, exc)
                core.validation_failed(slot, f"check() found pid {slot.pid} dead")
                await self._discard(slot, slot.conn)
            else:
                self._add(slot, slot.conn, _monotonic())

    @staticmethod
    async def check_connection(conn: ACT) -> None:
        """Raise if ``conn`` does not answer an empty query (psycopg_pool's check)."""
        if conn.autocommit:
            await conn.execute("")
        else:
            await conn.set_autocommit(True)
            try:
                await conn.execute("")
            finally:
                with suppress(Exception):
                    await conn.set_autocommit(False)

    async def drain(self) -> None:
        """Close idle connections and replace them; checked-out ones close on return."""
        core = self._core
        idle = core.drain()
        if self._loop is not None:
            self._start_connects(core.to_start(_monotonic()))
        for slot in idle:
            await self._close_conn(slot.conn)

    # -- observability ------------------------------------------------------------------------

    def holders(self) -> list[Holder]:
        """Who holds the checked-out connections now, longest held first."""
        return self._core.holders()

    def get_stats(self) -> dict[str, int]:
        """Current measures and counters (see docs/pool.md)."""
        return self._core.get_stats()

    def pop_stats(self) -> dict[str, int]:
        """As :meth:`get_stats`, then reset the counters."""
        return self._core.pop_stats()
