"""pgwarden's pools: the asyncio pool and the thread pool, from one source.

The source is ``pool/_async/pool.py`` (the asyncio pool); ``pool/_sync/pool.py`` (the thread
pool) is generated from it by ``tools/async_to_sync.py`` (unasync: ``async`` / ``await``
dropped, the asyncio primitives of :mod:`pgwarden.pool._acompat` renamed to their thread twins),
and ``tests/pool/test_generated.py`` fails while it is stale. Edit the asyncio pool, then run
``python tools/async_to_sync.py``. Docstrings are written to read true for both pools.

Every rule lives in :mod:`pgwarden.pool._core` (no I/O) and the holders, leaks, counters and
timings in the pool's :class:`~pgwarden.observe.Tracker`; this module only waits, locks and does
I/O. State changes happen with ``self._lock`` held (a ``threading.Lock``: the asyncio pool's
state is only touched from its event loop, where the lock is never contended), and nothing is
awaited while holding it.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import threading
import time
import weakref
from contextlib import suppress
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import tuple_row

from ...errors import PoolClosed, PoolError, TooManyRequests
from ...observe import DEFAULT_LEAK_THRESHOLD, STACK_DEPTH, Holder
from ...observe.registry import unregister
from ...pgbouncer.detect import SERVER_PID_QUERY, Pooler, adetect_psycopg
from .. import _core
from .. import connection as _connection
from .._acompat import (
    AEvent,
    AQueue,
    AWaiter,
    acan_start,
    acurrent_holder,
    agather,
    amaybe,
    arelease_workers,
    asleep,
    aspawn,
    await_fd,
    fork_epoch,
    neutralize,
    track_pool,
)
from .._core import TS, Core, ProbeFailed, Slot, logger

__all__ = ["AsyncConnectionPool"]

ACT = TypeVar("ACT", bound=AsyncConnection[Any])

_monotonic = time.monotonic
_getframe = sys._getframe
_getpid = os.getpid


class _AsyncConnectionCM(Generic[ACT]):
    """``pool.connection()``: psycopg's connection-block rules (commit on success, roll back on
    error), then the connection goes back to the pool."""

    __slots__ = ("conn", "pool", "timeout")

    def __init__(self, pool: AsyncConnectionPool[ACT], timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    async def __aenter__(self) -> ACT:
        self.conn = await self.pool.getconn(self.timeout, 2)
        return self.conn

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        conn = self.conn
        try:
            action = _core.end_of_block(conn.pgconn.transaction_status, conn.closed,
                                        et is not None)
            if action == "commit":
                await self.pool._commit(conn)
            elif action == "rollback":
                try:
                    await conn.rollback()
                except Exception as exc:
                    logger.warning("error ignored in rollback on %s: %s", conn, exc)
        finally:
            await self.pool.putconn(conn)


class _AsyncTransactionCM(Generic[ACT]):
    """``pool.transaction()``: commit on success, roll back on any exception (cancellation and
    ``KeyboardInterrupt`` included), then the connection goes back to the pool."""

    __slots__ = ("conn", "pool", "timeout", "tx")

    def __init__(self, pool: AsyncConnectionPool[ACT], timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    async def __aenter__(self) -> ACT:
        self.conn = await self.pool.getconn(self.timeout, 2)
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


async def _worker(wpool: weakref.ref[AsyncConnectionPool[Any]], queue: AQueue) -> None:
    """Open connections when asked; holds the pool only weakly, so a pool dropped without
    ``close()`` is collected (and its workers end)."""
    while True:
        task = await queue.get()
        pool = wpool()
        if task is None or pool is None:
            return
        try:
            await pool._connect_task()
        except Exception:
            logger.exception("pool %r: unexpected error in connection worker", pool.name)
        del pool


async def _maintainer(wpool: weakref.ref[AsyncConnectionPool[Any]], stop: AEvent, tick: float
                      ) -> None:
    """Expire idle connections, scan for leaks, reclaim collected ones, every ``tick`` s."""
    while not await stop.wait_for(tick):
        pool = wpool()
        if pool is None or pool._closed:
            return
        try:
            await pool._maintain_once()
        except Exception:
            logger.exception("pool %r: unexpected error in maintenance", pool.name)
        del pool


class AsyncConnectionPool(_core.PoolProperties, Generic[ACT]):
    """A pool of psycopg 3 connections that names its leaks and survives restarts.

    Drop-in for psycopg_pool's pool of the same name (same parameters, methods, errors and
    stats keys); ``docs/pool.md`` says where the defaults differ and why. The thread pool
    (:class:`pgwarden.ConnectionPool`) and the asyncio pool (:class:`pgwarden.AsyncConnectionPool`)
    are one source: the same rules, parameters and defaults. In the asyncio pool ``configure``,
    ``check`` and ``reset`` are ``async`` callables and ``reconnect_failed`` may be either (as
    psycopg_pool).

    Args:
        conninfo: libpq conninfo string or ``postgresql://`` URL (``""``: libpq's environment),
            or a callable returning one (psycopg_pool 3.3).
        connection_class: class whose ``connect()`` opens connections (pgwarden's
            :class:`~pgwarden.pool.Connection` / :class:`~pgwarden.pool.AsyncConnection`,
            psycopg's classes whose first statement after a checkout survives a server
            restart; any subclass of psycopg's works).
        kwargs: extra arguments for ``connect()`` (e.g. ``{"autocommit": True}``), or a callable
            returning them.
        min_size: connections kept open (default 4, as psycopg_pool).
        max_size: upper bound (default ``min_size``, as psycopg_pool).
        open: open at construction (``None``, the default, and ``True`` do; the asyncio pool
            then starts its tasks on first use inside a running event loop, and an explicit
            ``True`` outside one raises ``RuntimeError`` as psycopg_pool does).
        configure: called with each new connection; must leave it idle.
        check: called on each checkout (psycopg_pool's hook); rarely needed here since the pool
            validates stale connections itself.
        reset: called on each return; must leave the connection idle.
        name: pool name for logs, errors and metrics (default ``pool-N``).
        close_returns: ``conn.close()`` returns the connection to the pool (psycopg >= 3.3).
        timeout: seconds a checkout waits by default (30, as psycopg_pool).
        max_waiting: callers allowed to wait at once; more get :class:`TooManyRequests`
            (0: unbounded).
        max_lifetime: seconds before a connection is replaced (3600, jittered down by up to
            10 %).
        max_idle: seconds an idle connection above ``min_size`` is kept (600).
        reconnect_timeout: seconds of failed connection attempts after which
            ``reconnect_failed(pool)`` is called and background refilling stops until a caller
            asks for a connection (300); another ``reconnect_timeout`` of failures from there
            calls it again.
        reconnect_failed: callback for the above.
        num_workers: connection workers (threads, or tasks) (3).
        leak_threshold: seconds a checkout may be held before a leak warning with its stack is
            logged (60; ``None`` disables stack capture and warnings).
        validation_window: a connection idle longer than this (seconds, default 2.0) is
            validated with a round trip before being handed out; every checkout also checks
            the socket for a pending server message (no round trip).
        validation_timeout: seconds a validation round trip may take (5.0, HikariCP's).
        connection_defaults: add TCP keepalives, ``tcp_user_timeout``, ``connect_timeout`` and
            ``application_name`` where the DSN/kwargs/environment set none (default True).
        pgbouncer: what sits between the pool and PostgreSQL. ``None`` (default): found out
            on the first connection (:mod:`pgwarden.pgbouncer.detect`: one round trip to a
            direct server; behind a pooler a prepared-statement probe and a second, short
            connection for the pool mode). ``False``: a direct server, nothing changes.
            ``True``: PgBouncer in transaction mode, version unknown. A version string
            (``"1.22.1"``) or a :class:`~pgwarden.pgbouncer.detect.Pooler`: that PgBouncer.
            Behind a pooler that shares server sessions, connections get what psycopg needs
            there (``prepare_threshold=None`` unless PgBouncer >= 1.22 tracks prepared
            statements: :mod:`pgwarden.pgbouncer.drivers`) unless ``kwargs`` say otherwise,
            and a replayed statement's "is the server going down" question is asked through
            the pooler (docs/pgbouncer.md, "Pools behind PgBouncer").

    Raises:
        ConfigError: an argument, or a connection parameter's value, is invalid (raised at
            construction).
    """

    def __init__(
        self,
        conninfo: Any = "",
        *,
        connection_class: type[ACT] = cast(Any, _connection.AsyncConnection),
        kwargs: Any = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: Any = None,
        check: Any = None,
        reset: Any = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Any = None,
        num_workers: int = 3,
        leak_threshold: float | None = DEFAULT_LEAK_THRESHOLD,
        validation_window: float = _core.DEFAULT_VALIDATION_WINDOW,
        validation_timeout: float = _core.DEFAULT_VALIDATION_TIMEOUT,
        connection_defaults: bool = True,
        pgbouncer: bool | str | Pooler | None = None,
    ) -> None:
        self._config = _core.make_config(
            conninfo=conninfo, kwargs=kwargs, min_size=min_size, max_size=max_size, name=name,
            timeout=timeout, max_waiting=max_waiting, max_lifetime=max_lifetime,
            max_idle=max_idle, reconnect_timeout=reconnect_timeout, num_workers=num_workers,
            leak_threshold=leak_threshold, validation_window=validation_window,
            validation_timeout=validation_timeout, connection_defaults=connection_defaults,
            pgbouncer=pgbouncer,
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
        track_pool(self)
        if open is None or open:
            self._opened = True
            self._closed = False
            if acan_start():
                self._ensure_started()
            elif open:
                raise RuntimeError(
                    f"pool {self.name!r}: an asyncio pool opened at construction needs a "
                    "running event loop; create it with open=False and call its open() from "
                    "inside the loop")

    def _init_runtime(self) -> None:
        self._pid = _getpid()
        self._epoch = fork_epoch[0]
        self._lock = threading.Lock()
        self._core = Core(self._config, self)
        self._queue = AQueue()
        self._wake = AEvent()
        self._stop = AEvent()
        self._workers: list[Any] = []
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start the workers and fill the pool to ``min_size``; idempotent on an open pool.
        With ``wait=True``, block like :meth:`wait`.

        Raises:
            PoolClosed: the pool was closed (a closed pool cannot be reopened, as psycopg_pool).
        """
        with self._lock:
            if self._opened and self._closed:
                raise PoolClosed(f"pool {self.name!r} is already closed")
            self._opened = True
            self._closed = False
        self._ensure_started()
        if wait:
            await self.wait(timeout)

    def _ensure_started(self) -> None:
        if self._epoch != fork_epoch[0] or self._pid != _getpid():
            self._after_fork()
        if self._started or self._closed or not acan_start():
            return
        cfg = self._config
        with self._lock:
            if self._started:
                return
            self._started = True
            wself = weakref.ref(self)
            self._workers = [
                aspawn(_worker, (wself, self._queue), f"{self.name}-worker-{i}")
                for i in range(cfg.num_workers)
            ]
            tick = _core.maintenance_tick(cfg.leak_threshold)
            self._workers.append(
                aspawn(_maintainer, (wself, self._stop, tick), f"{self.name}-maintenance"))
            n = self._core.to_start(_monotonic())
        self._start_connects(n)

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until ``min_size`` connections are open.

        Raises:
            PoolTimeout: not ready within ``timeout`` seconds; the pool is closed (as
                psycopg_pool) and the message gives the last connection error.
            PoolClosed: the pool is closed.
        """
        self._ensure_started()
        deadline = _monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                core = self._core
                if core.size >= self._config.min_size:
                    return
                err = core.init_timeout_error(timeout) if _monotonic() >= deadline else None
            if err is not None:
                await self.close()
                raise err
            await asleep(0.005)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: fail waiting callers with :class:`PoolClosed`, close idle
        connections, stop the workers (waiting up to ``timeout`` seconds). Connections checked
        out are closed when returned."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            core = self._core
            idle = core.discard_idle()
            waiters = list(core.waiters)
            core.waiters.clear()
            core.tracker.requests_waiting = 0
            for w in waiters:
                w.fail(PoolClosed(f"the pool {self.name!r} was closed while waiting"))
        unregister(core.tracker)
        for slot in idle:
            await self._close_conn(slot.conn)
        if self._workers:
            arelease_workers(self._queue, self._stop, self._config.num_workers, self._workers)
            self._wake.set()
            await agather(self._workers, timeout)

    async def __aenter__(self) -> AsyncConnectionPool[ACT]:
        await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __del__(self) -> None:
        # dropped without close(): the workers hold the pool weakly and end when asked
        if (not getattr(self, "_closed", True) and getattr(self, "_pid", None) == _getpid()
                and getattr(self, "_workers", None)):
            with suppress(Exception):
                arelease_workers(self._queue, self._stop, self._config.num_workers,
                                 self._workers)

    # -- fork safety -------------------------------------------------------------------------

    def _inherited_conns(self) -> list[Any]:
        old = self._core
        out = [s.ref() for s in old.slots if s.out and s.ref is not None]
        return [s.conn for s in old.idle] + out

    def _after_fork(self) -> None:
        """In a child process: forget the parent's connections without touching their sessions
        (their sockets point at /dev/null, so closing them sends nothing to the server), then
        start clean (the workers start again on first use)."""
        conns = self._inherited_conns()
        neutralize(conns)
        unregister(self._core.tracker)
        self._init_runtime()
        logger.info("pool %r: used in a new process (pid %d): dropped %d inherited connections",
                    self.name, self._pid, len(conns))

    # -- checkout -------------------------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> _AsyncConnectionCM[ACT]:
        """Context manager: a connection for the block, then returned to the pool.

        As psycopg_pool: commits on success, rolls back on error, replaces a broken connection.
        A COMMIT that fails because the server ended the session raises, except for a
        read-only transaction (docs/pool.md, "The COMMIT guarantee").

        Raises:
            PoolTimeout: none available in ``timeout`` seconds (default ``self.timeout``); the
                message names the holders. PoolClosed, TooManyRequests.
        """
        return _AsyncConnectionCM(self, timeout)

    def transaction(self, timeout: float | None = None) -> _AsyncTransactionCM[ACT]:
        """Context manager: a connection inside a transaction that commits on success and
        rolls back on any exception (cancellation and ``KeyboardInterrupt`` included)."""
        return _AsyncTransactionCM(self, timeout)

    async def getconn(self, timeout: float | None = None, _skip: int = 1) -> ACT:
        """Check out a connection; return it with :meth:`putconn` (prefer :meth:`connection`).

        Raises:
            PoolTimeout: (a :class:`~pgwarden.pool.PoolCheckoutTimeout`) nothing available in
                ``timeout`` seconds (default ``self.timeout``); says why.
            PoolClosed: the pool is closed (or not open yet).
            TooManyRequests: ``max_waiting`` callers are already waiting.
        """
        # (the hot path, one function; _skip: pool frames between it and the application)
        if not self._started or self._epoch != fork_epoch[0]:
            self._ensure_started()
        core = self._core
        cfg = self._config
        if cfg.leak_threshold:
            # capture_stack(), inlined: the caller's frames, formatted only when reported
            stack: Any = []
            f: Any = _getframe(_skip)
            depth = STACK_DEPTH
            while f is not None and depth:
                stack.append((f.f_code, f.f_lasti))
                f = f.f_back
                depth -= 1
        else:
            stack = ()
        holder = acurrent_holder()
        tracker = core.tracker
        now = _monotonic()
        if timeout is None:
            timeout = cfg.timeout
        deadline = now + timeout
        while True:
            w = None
            with self._lock:
                if self._closed:
                    tracker.failed()
                    raise PoolClosed(f"the pool {self.name!r} is "
                                     + ("already closed" if self._opened else "not open yet"))
                if core.idle:
                    slot = core.idle.pop()
                    conn: ACT = slot.conn
                    slot.conn = None  # Core.take_out, inlined (hot path)
                    tracker.checkout(slot, holder, stack, now)
                else:
                    if cfg.max_waiting and len(core.waiters) >= cfg.max_waiting:
                        tracker.failed()
                        raise TooManyRequests(
                            f"the pool {self.name!r} already has {len(core.waiters)} requests "
                            f"waiting (max_waiting={cfg.max_waiting})")
                    if core.gc_queue:
                        self._reclaim_locked()
                    w = AWaiter(holder, stack, now)
                    n = core.enqueue(w, now)
            if w is not None:
                self._start_connects(n)
                if core.failures:
                    self._wake.set()  # a caller waits: retry now at the fast cadence
                slot, conn = await self._wait(w, timeout, deadline)
                now = _monotonic()
            # the validation rule's fast path (Core.needs_probe, and one poll syscall)
            if (
                slot.gen >= core.gen
                and now - slot.last_used <= cfg.validation_window
                and not slot.poller.poll(0)
                and self._check is None
            ):
                conn._pgw_fresh = True  # type: ignore[attr-defined]
                conn._pool = self  # type: ignore[assignment]
                return conn
            if await self._ready(slot, conn, now):
                conn._pgw_fresh = True  # type: ignore[attr-defined]
                conn._pool = self  # type: ignore[assignment]
                return conn
            now = _monotonic()
            if now >= deadline:
                with self._lock:
                    tracker.timed_out(timeout)
                    err = core.timeout_error(timeout, now, now)
                raise err

    async def _wait(self, w: AWaiter, timeout: float, deadline: float) -> tuple[Slot, ACT]:
        core = self._core
        try:
            answered = await w.wait(deadline - _monotonic())
        except BaseException:
            # cancelled or interrupted while waiting: a connection handed over meanwhile goes
            # back to the pool, never lost
            with self._lock:
                served = not core.withdraw(w)
            if served and w.slot is not None:
                await self._give_back(w.slot, w.conn, None)
            raise
        if not answered:
            with self._lock:
                if core.withdraw(w):
                    now = _monotonic()
                    core.tracker.timed_out(now - w.since)
                    raise core.timeout_error(timeout, now, w.since)
            # served between the timeout and the withdrawal: take it
        if w.error is not None:
            raise w.error
        return w.slot, cast(ACT, w.conn)

    async def _ready(self, slot: Slot, conn: ACT, now: float) -> bool:
        """Validate a checked-out slot; False (and the slot discarded) if it is dead."""
        core = self._core
        try:
            if core.needs_probe(slot, now) or slot.poller.poll(0):
                with self._lock:
                    core.stats.validations_num += 1
                await self._probe(conn.pgconn)
            if self._check is not None:
                await self._check(conn)
            return True
        except BaseException as exc:
            if not isinstance(exc, Exception):
                await self._discard(slot, conn)
                raise
            reason = f"validation failed: {_core._first_line(exc)}"
        with self._lock:
            core.stale_at_checkout(slot, f"stale connection pid {slot.pid} ({reason})")
        logger.info("pool %r: discarding stale connection pid %d: %s", self.name, slot.pid,
                    reason)
        await self._discard(slot, conn)
        return False

    async def _probe(self, pgconn: Any) -> None:
        vt = self._config.validation_timeout
        await self._drive(pgconn, _core.probe(pgconn), _monotonic() + vt,
                          f"no answer within validation_timeout={vt} s")

    async def _discard(self, slot: Slot, conn: Any) -> None:
        with self._lock:
            self._core.discard(slot)
            n = self._core.to_start(_monotonic())
        await self._close_conn(conn)
        self._start_connects(n)

    async def _commit(self, conn: ACT) -> None:
        """The COMMIT ending a ``connection()`` block (docs/pool.md, "The COMMIT guarantee")."""
        try:
            await conn.commit()
        except psycopg.OperationalError as exc:
            if not _core.commit_lost_nothing(exc, conn):
                raise
            with self._lock:
                self._core.stats.commits_read_only += 1
            logger.info("pool %r: the server ended the session before the COMMIT of a "
                        "read-only transaction; nothing was lost (%s)", self.name,
                        _core._first_line(exc))

    # -- return ---------------------------------------------------------------------------------

    async def putconn(self, conn: ACT) -> None:
        """Return a connection checked out with :meth:`getconn`.

        Inside a transaction it is rolled back with a warning naming the holder; a broken or
        closed one is discarded and replaced; ``reset`` is called if given. If the caller is
        cancelled or interrupted meanwhile, the connection is discarded and replaced, never
        lost.

        Raises:
            ValueError: the connection does not come from this pool.
        """
        try:
            slot: Slot | None = conn._pgw_slot  # type: ignore[attr-defined]
        except AttributeError:
            slot = None
        if slot is None or conn._pool is not self:  # type: ignore[comparison-overlap]
            raise _core.foreign_connection(self, conn)
        # (psycopg_pool's rule: a connection references its pool only while checked out, so a
        # returned connection the application keeps does not keep the pool alive)
        conn._pool = None
        if self._epoch != fork_epoch[0]:
            self._after_fork()
            return
        conn._pgw_fresh = False  # type: ignore[attr-defined]
        bad: str | None = None
        try:
            status = conn.pgconn.transaction_status
            if status != TS.IDLE:
                bad = await self._reset_status(slot, conn, status)
            if bad is None and self._reset is not None:
                try:
                    await self._reset(conn)
                    if conn.pgconn.transaction_status != TS.IDLE:
                        bad = "left not idle by the reset function"
                except Exception as exc:
                    bad = f"reset function failed: {exc}"
        except BaseException:
            # cancelled or interrupted while resetting: the state is unknown, replace it
            await self._give_back(slot, conn, "interrupted while being reset")
            raise
        if bad is None:
            # the common return, inlined (hot path): Core.returned, .reusable and .add
            core = self._core
            now = _monotonic()
            with self._lock:
                core.tracker.checkin(slot, now)
                slot.last_used = now
                if (not self._closed and slot.gen >= core.drain_gen and slot.expire_at > now
                        and core.size <= self._config.max_size):
                    if core.waiters:
                        core.add(slot, conn, now)
                    else:
                        slot.conn = conn
                        core.idle.append(slot)
                    return
        await self._give_back(slot, conn, bad)

    async def _give_back(self, slot: Slot, conn: Any, bad: str | None) -> None:
        now = _monotonic()
        n = 0
        with self._lock:
            core = self._core
            core.returned(slot, now)
            keep = bad is None and not self._closed and core.reusable(slot, now)
            if keep:
                core.add(slot, conn, now)
            else:
                if bad is not None:
                    core.stats.returns_bad += 1
                    if bad.startswith("broken"):
                        core.disconnect_detected(slot, f"connection pid {slot.pid} {bad}")
                core.discard(slot)
                n = core.to_start(now)
        if not keep:
            if bad is not None:
                # psycopg_pool warns too when a reset fails or a connection comes back busy
                logger.warning("pool %r: discarding returned connection pid %d: %s", self.name,
                               slot.pid, bad)
            await self._close_conn(conn)
            self._start_connects(n)

    async def _reset_status(self, slot: Slot, conn: ACT, status: int) -> str | None:
        verdict = _core.return_verdict(conn, status)
        if verdict != "rollback":
            return verdict
        _core.log_rollback(self.name, slot, conn)
        with self._lock:
            self._core.stats.returns_rolled_back += 1
        try:
            await conn.rollback()
        except Exception as exc:
            return f"broken: rollback failed: {exc}"
        return None

    async def _replace_session(self, conn: ACT, exc: BaseException) -> bool:
        """The first statement after checkout failed (see :mod:`pgwarden.pool.connection`): if
        the server ended the session because it is going down, wait for a new connection (up
        to ``timeout``), move its session into ``conn`` and return True (the statement is run
        again). False leaves ``conn`` broken and the caller gets ``exc``."""
        slot: Slot | None = getattr(conn, "_pgw_slot", None)
        if not self._core.may_replay(slot, self._closed, exc, conn):
            return False
        assert slot is not None
        if self._core.behind_pooler:
            why = await self._restarted_behind_pooler(slot)
        else:
            try:  # is the server going down, or was only this session ended?
                probe_conn = await self._connect()
                await probe_conn.close()
            except Exception as refused:
                why = _core.going_down(refused)
            else:
                # it accepts: pg_terminate_backend of this session, the caller must know
                why = None
        if why is None:
            return False
        with self._lock:
            n = self._core.session_ended(slot, _monotonic())
        self._start_connects(n)
        try:
            fresh = await self.getconn()
        except PoolError as err:
            logger.warning("pool %r: could not run the statement again (%s)", self.name, err)
            return False
        _connection.transplant(conn, fresh, slot, self._core.on_collected)
        await fresh.close()
        with self._lock:
            self._core.replayed()
        _core.log_replayed(self.name, slot, conn._pgw_slot, why)  # type: ignore[attr-defined]
        return True

    async def _restarted_behind_pooler(self, slot: Slot) -> str | None:
        """Behind a pooler a connection attempt says nothing about PostgreSQL (the pooler
        accepts it while PostgreSQL is down). Ask PostgreSQL itself, through the pooler, for
        its uptime, until it answers or the pool's ``timeout`` passes: shorter than the time
        since this checkout means it restarted under the statement (``why``); longer means
        only this session was ended (``None``: the caller gets the error); no answer in time
        also gives ``None``. While PostgreSQL is down the pooler makes the query wait or fails
        it (PgBouncer's ``server_login_retry``): each failure is retried on a new connection
        every 50-200 ms."""
        deadline = _monotonic() + self._config.timeout
        last = ""
        while _monotonic() < deadline:
            conn = None
            try:
                conn = await self._connect(configure=False)
                probe = _core.uptime_probe(conn.pgconn)
                uptime = await self._drive(conn.pgconn, probe, deadline)
            except Exception as exc:
                last = _core._first_line(exc)
            else:
                held = _monotonic() - slot.out_at
                if _core.restarted_since(uptime, held):
                    return (f"PostgreSQL behind the pooler restarted {uptime:.1f} s ago, "
                            f"during the statement")
                return None
            finally:
                await self._close_conn(conn)
            await asleep(random.uniform(0.05, 0.2))
        logger.warning("pool %r: PostgreSQL did not answer through the pooler within %.1f s "
                       "(%s); the statement is not run again", self.name,
                       self._config.timeout, last or "no answer")
        return None

    async def _drive(self, pgconn: Any, gen: Any, deadline: float,
                     late: str = "no answer in time") -> Any:
        """Run a probe generator of :mod:`pgwarden.pool._core` (it yields what to wait for on
        the socket) on ``pgconn`` until ``deadline``; its return value.

        Raises:
            ProbeFailed: no answer before ``deadline`` (message ``late``), or the generator's
                own failure.
        """
        fd = pgconn.socket
        try:
            what = next(gen)
            while True:
                if not await await_fd(fd, what, deadline - _monotonic()):
                    raise ProbeFailed(late)
                what = gen.send(None)
        except StopIteration as done:
            return done.value

    async def _detect(self, conn: ACT) -> None:
        """Find out, on the pool's first connection, what sits between the pool and
        PostgreSQL (:mod:`pgwarden.pgbouncer.detect`) and apply what psycopg needs there.
        Behind a pooler, a second short connection tells the pool mode."""
        try:
            pooler = await adetect_psycopg(conn)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise
            pooler = Pooler("pooler", evidence=f"detection failed: {_core._first_line(exc)}")
        if pooler.behind and pooler.pool_mode is None:
            pooler = await self._pool_mode(conn, pooler)
        with self._lock:
            self._core.detected(pooler, conn)

    async def _pool_mode(self, first: ACT, pooler: Pooler) -> Pooler:
        """Transaction (or statement) mode when a second connection gets the server session
        the first one has just released (only those modes share one between two connected
        clients); three tries, else the mode stays unknown (treated as transaction mode)."""
        other = None
        try:
            other = await self._connect(configure=False)
            for _ in range(3):
                mine = await self._server_pid(first)
                theirs = await self._server_pid(other)
                if mine == theirs:
                    return dataclasses.replace(
                        pooler, pool_mode="transaction",
                        evidence=pooler.evidence + f"; two connections shared server "
                        f"session {mine}")
        except psycopg.Error as exc:
            logger.debug("pool %r: pool mode not determined: %s", self.name, exc)
        finally:
            await self._close_conn(other)
        return pooler

    @staticmethod
    async def _server_pid(conn: Any) -> Any:
        # a tuple cursor: the connection's row_factory is the application's (kwargs)
        async with conn.transaction():
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(SERVER_PID_QUERY, prepare=False)
            row = await cur.fetchone()
        return row[0] if row else None

    async def _close_conn(self, conn: Any) -> None:
        if conn is None:
            return
        with suppress(Exception):
            conn._pool = None
            await conn.close()

    def _reclaim_locked(self) -> None:
        self._core.reclaim_collected()

    # -- connecting -----------------------------------------------------------------------------

    def _start_connects(self, n: int) -> None:
        for _ in range(n):
            self._queue.put_nowait(1)

    async def _connect(self, configure: bool = True) -> ACT:
        cfg = self._config
        conninfo = await amaybe(cfg.conninfo() if callable(cfg.conninfo) else cfg.conninfo)
        kwargs = await amaybe(cfg.kwargs() if callable(cfg.kwargs) else cfg.kwargs)
        kw = _core.connect_params(conninfo, kwargs, self._defaults, cfg, self._core.pooler_kw)
        conn = await self.connection_class.connect(conninfo, **kw)
        try:
            if configure and self._core.needs_detection():
                await self._detect(conn)
            if configure and self._configure is not None:
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
                with self._lock:
                    if (
                        self._closed
                        or not core.still_wanted()
                        or (core.failures and core.connecting > 1)
                    ):
                        return
                    delay = core.retry_delay(now)
                    if delay <= 0:
                        core.connect_started(now)
                if delay > 0:
                    await self._wake.wait_for(delay)
                    self._wake.clear()
                    continue
                try:
                    conn = await self._connect()
                except Exception as exc:
                    with self._lock:
                        give_up = core.connect_failed(exc, _monotonic())
                    if give_up:
                        _core.log_gave_up(self.name)
                        if self._reconnect_failed is not None:
                            try:
                                await amaybe(self._reconnect_failed(self))
                            except Exception:
                                logger.exception("pool %r: reconnect_failed raised", self.name)
                    continue
                t1 = _monotonic()
                with self._lock:
                    core.connecting -= 1
                    done = True
                    slot = core.connect_ok(conn, t1, t1 - now, core.on_collected)
                    conn._pgw_slot = slot  # type: ignore[attr-defined]
                    # present but None while idle: psycopg then knows a pool owns it (no
                    # "deleted while still open" warning when an unclosed pool is collected)
                    conn._pool = None
                    if self._closed:
                        core.discard(slot)
                    else:
                        core.add(slot, conn, t1)
                    n = core.to_start(t1)
                if self._closed:
                    await self._close_conn(conn)
                self._start_connects(n)
                return
        finally:
            if not done:
                with self._lock:
                    core.connecting -= 1

    # -- maintenance ----------------------------------------------------------------------------

    async def _maintain_once(self) -> None:
        core = self._core
        now = _monotonic()
        with self._lock:
            if self._closed:
                return
            expired = core.expired_idle(now)
            leaks = core.tracker.leak_scan(now)
            self._reclaim_locked()
            n = core.to_start(now)
        for slot in expired:
            await self._close_conn(slot.conn)
        self._start_connects(n)
        core.tracker.report_leaks(leaks)

    # -- maintenance API (psycopg_pool) -------------------------------------------------------

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``min_size``/``max_size`` at runtime; surplus idle connections close now,
        surplus checked-out ones when returned.

        Raises:
            ConfigError: invalid sizes.
        """
        min_size, max_size = _core.check_sizes(min_size, max_size)
        logger.info("resizing %r to min_size=%s max_size=%s", self.name, min_size, max_size)
        with self._lock:
            surplus = self._core.resize(min_size, max_size)
            n = self._core.to_start(_monotonic()) if self._started else 0
        for slot in surplus:
            await self._close_conn(slot.conn)
        self._start_connects(n)

    async def check(self) -> None:
        """Validate every idle connection now (a round trip each); discard and replace dead
        ones and those past ``max_lifetime`` (as psycopg_pool 3.2)."""
        with self._lock:
            core = self._core
            slots, core.idle = core.idle, []
        now = _monotonic()
        for slot in slots:
            conn = slot.conn
            if slot.expire_at <= now:
                await self._discard(slot, conn)
                continue
            try:
                await self._probe(conn.pgconn)
            except Exception as exc:
                logger.info("pool %r: check discarded pid %d: %s", self.name, slot.pid, exc)
                with self._lock:
                    core.validation_failed(slot, f"check() found pid {slot.pid} dead")
                await self._discard(slot, conn)
            else:
                with self._lock:
                    core.add(slot, conn, _monotonic())

    @staticmethod
    async def check_connection(conn: ACT) -> None:
        """Raise if ``conn`` does not answer an empty query (psycopg_pool's ``check``)."""
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
        """Close all idle connections and replace them; checked-out ones are closed when
        returned (psycopg_pool 3.3's ``drain``)."""
        with self._lock:
            idle = self._core.drain()
            n = self._core.to_start(_monotonic()) if self._started else 0
        for slot in idle:
            await self._close_conn(slot.conn)
        self._start_connects(n)

    # -- observability --------------------------------------------------------------------------

    def holders(self) -> list[Holder]:
        """Who holds the checked-out connections now, longest held first."""
        with self._lock:
            return self._core.holders()

    def get_stats(self) -> dict[str, int]:
        """Current measures and counters (psycopg_pool's keys plus pgwarden's; docs/pool.md)."""
        with self._lock:
            return self._core.get_stats()

    def pop_stats(self) -> dict[str, int]:
        """As :meth:`get_stats`, then reset the counters."""
        with self._lock:
            return self._core.pop_stats()
