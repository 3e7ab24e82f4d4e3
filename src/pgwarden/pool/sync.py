"""The thread-based pool: :class:`ConnectionPool` (drop-in for ``psycopg_pool.ConnectionPool``)."""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import psycopg
from psycopg import Connection

from ..errors import PoolClosed, PoolError, TooManyRequests
from . import _core
from . import connection as _connection
from ._core import TS, WAIT_R, Core, ProbeFailed, Slot, logger
from .holders import STACK_DEPTH, Holder

__all__ = ["ConnectionPool"]

CT = TypeVar("CT", bound="Connection[Any]")

_monotonic = time.monotonic
_getframe = sys._getframe
#: incremented in every child after fork(); pools compare it instead of calling getpid()
_fork_epoch = [0]
_getpid = os.getpid
_get_ident = threading.get_ident

_live_pools: weakref.WeakSet[ConnectionPool[Any]] = weakref.WeakSet()


class _Waiter:
    __slots__ = ("conn", "error", "lock", "name", "since", "slot", "stack")

    def __init__(self, name: str | int, stack: Any, since: float) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.slot: Slot | None = None
        self.conn: Any = None
        self.error: BaseException | None = None
        self.name = name
        self.stack = stack
        self.since = since


class _ConnectionCM(Generic[CT]):
    """``with pool.connection() as conn``: psycopg's connection-block rules (commit on success,
    roll back on error), then return to the pool."""

    __slots__ = ("conn", "pool", "timeout")

    def __init__(self, pool: ConnectionPool[CT], timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    def __enter__(self) -> CT:
        self.conn = self.pool.getconn(self.timeout, 2)
        return self.conn

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn = self.conn
        try:
            action = _core.end_of_block(conn.pgconn.transaction_status, conn.closed,
                                        et is not None)
            if action == "commit":
                conn.commit()
            elif action == "rollback":
                try:
                    conn.rollback()
                except Exception as exc:
                    logger.warning("error ignored in rollback on %s: %s", conn, exc)
        finally:
            self.pool.putconn(conn)


class _TransactionCM(Generic[CT]):
    """``with pool.transaction() as conn``: commit on success, roll back on any exception
    (including KeyboardInterrupt), return to the pool."""

    __slots__ = ("conn", "pool", "timeout", "tx")

    def __init__(self, pool: ConnectionPool[CT], timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    def __enter__(self) -> CT:
        self.conn = self.pool.getconn(self.timeout, 2)
        try:
            self.tx = self.conn.transaction()
            self.tx.__enter__()
        except BaseException:
            self.pool.putconn(self.conn)
            raise
        return self.conn

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.tx.__exit__(et, ev, tb)
        finally:
            self.pool.putconn(self.conn)


class ConnectionPool(_core.PoolProperties, Generic[CT]):
    """A pool of psycopg 3 connections that names its leaks and survives restarts.

    Drop-in for ``psycopg_pool.ConnectionPool`` (same parameters, methods and errors); see
    ``docs/pool.md`` for where the defaults differ and why.

    Args:
        conninfo: libpq conninfo string or ``postgresql://`` URL (``""``: libpq's environment).
        connection_class: class whose ``connect()`` opens connections
            (:class:`pgwarden.pool.Connection`, a ``psycopg.Connection`` whose first statement
            after checkout survives a server restart; any ``psycopg.Connection`` subclass works).
        kwargs: extra arguments for ``connect()`` (e.g. ``{"autocommit": True}``).
        min_size: connections kept open (default 4, as psycopg_pool).
        max_size: upper bound (default ``min_size``, as psycopg_pool).
        open: open at construction (``None`` means yes, as psycopg_pool, without its
            deprecation warning).
        configure: called with each new connection; must leave it idle.
        check: called on each checkout (psycopg_pool's hook); rarely needed here since the pool
            validates stale connections itself.
        reset: called on each return; must leave the connection idle.
        name: pool name for logs and errors (default ``pool-N``).
        close_returns: ``conn.close()`` returns the connection to the pool (psycopg >= 3.3).
        timeout: seconds ``getconn()`` waits by default (30, as psycopg_pool).
        max_waiting: callers allowed to wait at once; more get :class:`TooManyRequests`
            (0: unbounded).
        max_lifetime: seconds before a connection is replaced (3600, jittered down by up to
            10 %).
        max_idle: seconds an idle connection above ``min_size`` is kept (600).
        reconnect_timeout: seconds of failed connection attempts after which
            ``reconnect_failed(pool)`` is called once and background refilling stops until a
            caller asks for a connection (300).
        reconnect_failed: callback for the above.
        num_workers: background threads opening connections (3).
        leak_threshold: seconds a checkout may be held before a leak warning with its stack is
            logged (60; ``None`` disables stack capture and warnings).
        validation_window: a connection idle longer than this (seconds, default 2.0) is
            validated with a round trip before being handed out; every checkout also checks
            the socket for a pending server message (no round trip).
        validation_timeout: seconds a validation round trip may take (5.0, HikariCP's).
        connection_defaults: add TCP keepalives, ``tcp_user_timeout``, ``connect_timeout`` and
            ``application_name`` where the DSN/kwargs/environment set none (default True).

    Raises:
        ConfigError: an argument is out of range (raised at construction).
    """

    def __init__(
        self,
        conninfo: str | Callable[[], Any] = "",
        *,
        connection_class: type[CT] = cast(Any, _connection.Connection),
        kwargs: dict[str, Any] | Callable[[], Any] | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: Callable[[CT], None] | None = None,
        check: Callable[[CT], None] | None = None,
        reset: Callable[[CT], None] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Callable[[ConnectionPool[CT]], None] | None = None,
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
        self._lock = threading.Lock()
        self._opened = False
        self._closed = True
        self._init_runtime()
        _live_pools.add(self)
        if open is None or open:
            self.open()

    def _init_runtime(self) -> None:
        self._pid = _getpid()
        self._epoch = _fork_epoch[0]
        self._core = Core(self._config, self)
        self._tasks: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start the background threads and fill the pool to ``min_size``.

        Idempotent on an open pool. With ``wait=True``, block like :meth:`wait`.

        Raises:
            PoolClosed: the pool was closed (a closed pool cannot be reopened, as psycopg_pool).
        """
        self._fork_check()
        with self._lock:
            if self._opened and self._closed:
                raise PoolClosed(f"pool {self.name!r} is already closed")
            if not self._opened:
                self._opened = True
                self._closed = False
                self._start_threads()
                n = self._core.to_start(_monotonic())
            else:
                n = 0
        self._start_connects(n)
        if wait:
            self.wait(timeout)

    def _start_threads(self) -> None:
        for i in range(self._config.num_workers):
            t = threading.Thread(target=self._worker, name=f"{self.name}-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._maintain, name=f"{self.name}-maintenance", daemon=True)
        t.start()
        self._threads.append(t)

    def wait(self, timeout: float = 30.0) -> None:
        """Wait until ``min_size`` connections are open.

        Raises:
            PoolTimeout: not ready within ``timeout`` seconds; the pool is closed (as
                psycopg_pool) and the message gives the last connection error.
        """
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
                self.close()
                raise err
            time.sleep(0.005)

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: fail waiting callers with :class:`PoolClosed`, close idle
        connections, stop the threads (joining them up to ``timeout`` seconds). Connections
        checked out are closed when returned."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            core = self._core
            idle = core.discard_idle()
            waiters = list(core.waiters)
            core.waiters.clear()
            for w in waiters:
                w.error = PoolClosed(f"the pool {self.name!r} was closed while waiting")
                w.lock.release()
        for slot in idle:
            self._close_conn(slot.conn)
        self._stop_threads(timeout)

    def _stop_threads(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        for _ in range(self._config.num_workers):
            self._tasks.put(None)
        deadline = _monotonic() + timeout
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join(max(0.0, deadline - _monotonic()))

    def __enter__(self) -> ConnectionPool[CT]:
        self.open()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_pid", None) == _getpid():
            self._stop.set()
            with suppress(Exception):
                for _ in range(self._config.num_workers):
                    self._tasks.put(None)

    # -- fork safety -------------------------------------------------------------------

    def _fork_check(self) -> None:
        if self._epoch != _fork_epoch[0] or self._pid != _getpid():
            self._after_fork()

    def _inherited_conns(self) -> list[Any]:
        old = self._core
        out = [s.ref() for s in old.slots if s.out and s.ref is not None]
        return [s.conn for s in old.idle] + out

    def _after_fork(self) -> None:
        """In a child process: forget the parent's connections without touching their
        sessions (their sockets are pointed at /dev/null, so closing them sends nothing to the
        server), then start clean."""
        conns = self._inherited_conns()
        _neutralize(conns)
        self._lock = threading.Lock()
        was_open = self._opened and not self._closed
        self._init_runtime()
        logger.info("pool %r: used in a new process (pid %d): dropped %d inherited connections",
                    self.name, self._pid, len(conns))
        if was_open:
            self._start_threads()
            with self._lock:
                n = self._core.to_start(_monotonic())
            self._start_connects(n)

    # -- checkout -------------------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> _ConnectionCM[CT]:
        """Context manager: a connection for the block, then returned.

        As psycopg_pool: commits on success, rolls back on error, replaces a broken connection.

        Raises:
            PoolTimeout: none available in ``timeout`` seconds (default ``self.timeout``); the
                message names the holders. PoolClosed, TooManyRequests.
        """
        return _ConnectionCM(self, timeout)

    def transaction(self, timeout: float | None = None) -> _TransactionCM[CT]:
        """Context manager: a connection inside a transaction that commits on success and
        rolls back on any exception (``KeyboardInterrupt`` included)."""
        return _TransactionCM(self, timeout)

    def getconn(self, timeout: float | None = None, _skip: int = 1) -> CT:
        """Check out a connection; you must :meth:`putconn` it (prefer :meth:`connection`).

        Raises:
            PoolTimeout: (a :class:`~pgwarden.pool.PoolCheckoutTimeout`) nothing available in
                ``timeout`` seconds (default ``self.timeout``); says why.
            PoolClosed: the pool is closed.
            TooManyRequests: ``max_waiting`` callers are already waiting.
        """
        # (one function, not a wrapper: this is the hot path; _skip tells the stack capture
        # how many pool frames sit between it and the application)
        if self._epoch != _fork_epoch[0]:
            self._after_fork()
        core = self._core
        if self._config.leak_threshold:
            # inline capture_stack(): the caller's frames as (code, lasti), formatted on report
            stack: Any = []
            f: Any = _getframe(_skip)
            depth = STACK_DEPTH
            while f is not None and depth:
                stack.append((f.f_code, f.f_lasti))
                f = f.f_back
                depth -= 1
        else:
            stack = ()
        name = _get_ident()  # the thread's name is looked up when reported
        now = _monotonic()
        if timeout is None:
            timeout = self._config.timeout
        deadline = now + timeout
        first = 1  # a retry after a stale connection is not a new request
        while True:
            w = None
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"the pool {self.name!r} is not open")
                core.stats.requests_num += first
                first = 0
                if core.idle:
                    slot = core.idle.pop()
                    conn = cast(CT, slot.conn)
                    # Core.take_out, inlined (hot path)
                    slot.out = True
                    slot.out_at = now
                    slot.holder = name
                    slot.stack = stack
                    slot.leak_reported = False
                    slot.conn = None
                else:
                    cfg = self._config
                    if cfg.max_waiting and len(core.waiters) >= cfg.max_waiting:
                        core.stats.requests_errors += 1
                        raise TooManyRequests(
                            f"the pool {self.name!r} already has {len(core.waiters)} requests "
                            f"waiting (max_waiting={cfg.max_waiting})"
                        )
                    if core.gc_queue:
                        self._reclaim_locked()
                    w = _Waiter(name, stack, now)
                    core.waiters.append(w)
                    core.stats.requests_queued += 1
                    n = (core.to_start(now)
                         if core.size + core.connecting < cfg.max_size else 0)
                    if core.failures:
                        self._wake.set()
            if w is not None:
                self._start_connects(n)
                slot = self._wait(w, timeout, deadline)
                conn = cast(CT, w.conn)
                w.conn = None
                now = _monotonic()
            # fast path of the validation rule (Core.needs_probe + one poll syscall)
            if (
                slot.gen >= core.gen
                and now - slot.last_used <= self._config.validation_window
                and not slot.poller.poll(0)
                and self._check is None
            ):
                conn._pgw_fresh = True  # type: ignore[attr-defined]
                return conn
            if self._ready(slot, conn, now):
                conn._pgw_fresh = True  # type: ignore[attr-defined]
                return conn
            now = _monotonic()
            if now >= deadline:
                with self._lock:
                    err = core.timeout_error(timeout, now, now)
                    core.stats.requests_errors += 1
                raise err

    def _wait(self, w: _Waiter, timeout: float, deadline: float) -> Slot:
        remaining = deadline - _monotonic()
        if remaining <= 0 or not w.lock.acquire(timeout=remaining):
            with self._lock:
                if w.slot is None and w.error is None:
                    core = self._core
                    with suppress(ValueError):
                        core.waiters.remove(w)
                    core.stats.requests_errors += 1
                    now = _monotonic()
                    core.stats.requests_wait_ms += (now - w.since) * 1000.0
                    raise core.timeout_error(timeout, now, w.since)
        if w.error is not None:
            raise w.error
        assert w.slot is not None
        return w.slot

    def _ready(self, slot: Slot, conn: CT | None, now: float) -> bool:
        """Validate a checked-out slot; False (and the slot discarded) if it is dead."""
        core = self._core
        reason = None
        if conn is None:
            reason = "connection object vanished"
        else:
            pgconn = conn.pgconn
            try:
                if core.needs_probe(slot, now) or slot.poller.poll(0):
                    with self._lock:
                        core.stats.validations_num += 1
                    self._probe(pgconn)
                if self._check is not None:
                    self._check(conn)
                return True
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    self._discard(slot, conn)
                    raise
                reason = f"validation failed: {_core._first_line(exc)}"
        with self._lock:
            core.validation_failed(slot, f"stale connection pid {slot.pid} ({reason})")
        logger.info("pool %r: discarding stale connection pid %d: %s", self.name, slot.pid,
                    reason)
        self._discard(slot, conn)
        return False

    def _probe(self, pgconn: Any) -> None:
        gen = _core.probe(pgconn)
        deadline = _monotonic() + self._config.validation_timeout
        fd = pgconn.socket
        for what in gen:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                raise ProbeFailed(
                    f"no answer within validation_timeout={self._config.validation_timeout} s")
            p = select.poll()
            p.register(fd, select.POLLIN if what == WAIT_R else select.POLLOUT)
            if not p.poll(remaining * 1000):
                raise ProbeFailed(
                    f"no answer within validation_timeout={self._config.validation_timeout} s")

    def _discard(self, slot: Slot, conn: Any) -> None:
        with self._lock:
            self._core.discard(slot)
            n = self._core.to_start(_monotonic())
        self._close_conn(conn)
        self._start_connects(n)

    # -- return -------------------------------------------------------------------------

    def putconn(self, conn: CT) -> None:
        """Return a connection checked out with :meth:`getconn`.

        Inside a transaction it is rolled back with a warning naming the holder; a broken
        or closed one is discarded and replaced; ``reset`` is called if given.

        Raises:
            ValueError: the connection does not come from this pool.
        """
        try:
            slot: Slot | None = conn._pgw_slot  # type: ignore[attr-defined]
        except AttributeError:
            slot = None
        if slot is None or conn._pool is not self:  # type: ignore[comparison-overlap]
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
        bad = None
        status = conn.pgconn.transaction_status
        if status != TS.IDLE:
            bad = self._reset_status(slot, conn, status)
        if bad is None and self._reset is not None:
            try:
                self._reset(conn)
                if conn.pgconn.transaction_status != TS.IDLE:
                    bad = "left not idle by the reset function"
            except Exception as exc:
                bad = f"reset function failed: {exc}"
        now = _monotonic()
        n = 0
        with self._lock:
            # Core.returned and Core.reusable, inlined (hot path)
            slot.out = False
            slot.last_used = now
            core.stats.usage_ms += (now - slot.out_at) * 1000.0
            unleaked = slot.leak_reported
            if unleaked:
                core.stats.leaks_unleaked += 1
            keep = (
                bad is None
                and not self._closed
                and slot.gen >= core.drain_gen
                and slot.expire_at > now
                and core.size <= self._config.max_size
            )
            if keep:
                if core.waiters:
                    self._add_locked(slot, conn, now)
                else:
                    slot.conn = conn
                    core.idle.append(slot)
            else:
                if bad is not None:
                    core.stats.returns_bad += 1
                    if bad.startswith("broken"):
                        core.disconnect_detected(slot, f"connection pid {slot.pid} {bad}")
                core.discard(slot)
                n = core.to_start(now)
        if unleaked:
            _core.log_unleaked(self.name, slot, now)
        if not keep:
            if bad is not None:
                logger.info("pool %r: discarding returned connection pid %d: %s", self.name,
                            slot.pid, bad)
            self._close_conn(conn)
            self._start_connects(n)

    def _replace_session(self, conn: CT, exc: BaseException) -> bool:
        """The first statement after checkout failed (see :mod:`pgwarden.pool.connection`): if
        the server ended the session because it is going down, wait for a new connection (up
        to ``timeout``), move its session into ``conn`` and return True (the statement is run
        again). False leaves ``conn`` broken and the caller gets ``exc``."""
        slot: Slot | None = getattr(conn, "_pgw_slot", None)
        if not self._core.may_replay(slot, self._closed, exc, conn):
            return False
        assert slot is not None
        try:  # is the server going down, or was only this session ended?
            self._connect().close()
        except Exception as refused:
            why = _core.going_down(refused)
        else:
            why = None  # it accepts: pg_terminate_backend of this session, the caller must know
        if why is None:
            return False
        with self._lock:
            n = self._core.session_ended(slot, _monotonic())
        self._start_connects(n)
        try:
            fresh = self.getconn()
        except PoolError as err:
            logger.warning("pool %r: could not run the statement again (%s)", self.name, err)
            return False
        _connection.transplant(conn, fresh, slot, self._conn_collected)
        fresh.close()
        with self._lock:
            self._core.replayed()
        _core.log_replayed(self.name, slot, conn._pgw_slot, why)  # type: ignore[attr-defined]
        return True

    def _reset_status(self, slot: Slot, conn: CT, status: int) -> str | None:
        verdict = _core.return_verdict(conn, status)
        if verdict != "rollback":
            return verdict
        _core.log_rollback(self.name, slot, conn)
        with self._lock:
            self._core.stats.returns_rolled_back += 1
        try:
            conn.rollback()
        except Exception as exc:
            return f"broken: rollback failed: {exc}"
        return None

    def _add_locked(self, slot: Slot, conn: Any, now: float) -> None:
        core = self._core
        if core.waiters:
            w = core.waiters.popleft()
            core.take_out(slot, now, w.name, w.stack)
            core.stats.requests_wait_ms += (now - w.since) * 1000.0
            w.conn = conn
            w.slot = slot
            w.lock.release()
        else:
            slot.conn = conn
            core.idle.append(slot)

    def _close_conn(self, conn: Any) -> None:
        if conn is None:
            return
        with suppress(Exception):
            conn._pool = None
            conn.close()

    def _conn_collected(self, ref: _core.ConnRef) -> None:
        # weakref callback: may run in any thread, inside the GC: no locks here
        self._core.gc_queue.append(ref.slot)

    def _reclaim_locked(self) -> None:
        core = self._core
        for slot in core.reclaim_collected():
            _core.log_reclaimed(self.name, slot)

    # -- connecting -------------------------------------------------------------------------

    def _start_connects(self, n: int) -> None:
        for _ in range(n):
            self._tasks.put(1)

    def _connect(self) -> CT:
        cfg = self._config
        conninfo = cfg.conninfo() if callable(cfg.conninfo) else cfg.conninfo
        kwargs = cfg.kwargs() if callable(cfg.kwargs) else cfg.kwargs
        kw = _core.connect_params(conninfo, kwargs, self._defaults, cfg)
        conn = self.connection_class.connect(conninfo, **kw)
        try:
            if self._configure is not None:
                self._configure(conn)
                if conn.pgconn.transaction_status != TS.IDLE:
                    raise psycopg.ProgrammingError(
                        "connection left in a transaction by the configure function")
        except BaseException:
            conn.close()
            raise
        return conn

    def _worker(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None or self._pid != _getpid():
                return
            try:
                self._connect_task()
            except Exception:
                logger.exception("pool %r: unexpected error in connection worker", self.name)

    def _connect_task(self) -> None:
        core = self._core
        while True:
            now = _monotonic()
            with self._lock:
                if (
                    self._closed
                    or not core.still_wanted()
                    or (core.failures and core.connecting > 1)
                ):
                    core.connecting -= 1
                    return
                delay = core.retry_delay(now)
                if delay <= 0:
                    core.connect_started(now)
            if delay > 0:
                self._wake.wait(delay)
                self._wake.clear()
                continue
            try:
                conn = self._connect()
            except Exception as exc:
                with self._lock:
                    give_up = core.connect_failed(exc, _monotonic())
                if give_up:
                    _core.call_reconnect_failed(self._reconnect_failed, self)
                continue
            t1 = _monotonic()
            with self._lock:
                core.connecting -= 1
                slot = core.connect_ok(conn, t1, t1 - now, self._conn_collected)
                conn._pool = cast(Any, self)
                conn._pgw_slot = slot  # type: ignore[attr-defined]
                if self._closed:
                    core.discard(slot)
                else:
                    self._add_locked(slot, conn, t1)
                n = core.to_start(t1)
            if self._closed:
                self._close_conn(conn)
            self._start_connects(n)
            return

    # -- maintenance -------------------------------------------------------------------------

    def _maintain(self) -> None:
        tick = _core.maintenance_tick(self._config.leak_threshold)
        stop = self._stop
        while not stop.wait(tick):
            if self._pid != _getpid():
                return
            try:
                self._maintain_once()
            except Exception:
                logger.exception("pool %r: unexpected error in maintenance", self.name)

    def _maintain_once(self) -> None:
        core = self._core
        now = _monotonic()
        with self._lock:
            if self._closed:
                return
            expired = core.expired_idle(now)
            leaks = core.leak_scan(now)
            self._reclaim_locked()
            n = core.to_start(now)
        for slot in expired:
            self._close_conn(slot.conn)
        self._start_connects(n)
        _core.report_leaks(self.name, core, leaks, now)

    # -- maintenance API (psycopg_pool) ----------------------------------------------------

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``min_size``/``max_size`` at runtime; surplus idle connections close now,
        surplus checked-out ones when returned."""
        min_size, max_size = _core.check_sizes(min_size, max_size)
        logger.info("resizing %r to min_size=%s max_size=%s", self.name, min_size, max_size)
        with self._lock:
            surplus = self._core.resize(min_size, max_size)
            n = self._core.to_start(_monotonic())
        for slot in surplus:
            self._close_conn(slot.conn)
        self._start_connects(n)

    def check(self) -> None:
        """Validate every idle connection now (round trip); discard and replace dead ones."""
        with self._lock:
            core = self._core
            slots, core.idle = core.idle, []
        good = []
        for slot in slots:
            try:
                self._probe(slot.conn.pgconn)
                good.append(slot)
            except Exception as exc:
                logger.info("pool %r: check discarded pid %d: %s", self.name, slot.pid, exc)
                with self._lock:
                    self._core.validation_failed(slot, f"check() found pid {slot.pid} dead")
                self._discard(slot, slot.conn)
        with self._lock:
            now = _monotonic()
            for slot in good:
                self._add_locked(slot, slot.conn, now)

    @staticmethod
    def check_connection(conn: CT) -> None:
        """Raise if ``conn`` does not answer an empty query (psycopg_pool's check)."""
        if conn.autocommit:
            conn.execute("")
        else:
            conn.autocommit = True
            try:
                conn.execute("")
            finally:
                with suppress(Exception):
                    conn.autocommit = False

    def drain(self) -> None:
        """Close all idle connections and replace them; checked-out ones are closed when
        returned (psycopg_pool 3.3's ``drain``)."""
        with self._lock:
            idle = self._core.drain()
            n = self._core.to_start(_monotonic())
        for slot in idle:
            self._close_conn(slot.conn)
        self._start_connects(n)

    # -- observability ----------------------------------------------------------------------

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


def _neutralize(conns: list[Any]) -> None:
    """Point inherited sockets at /dev/null so nothing this process does reaches the parent's
    sessions (PQfinish would otherwise send a Terminate message on the shared socket)."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        for conn in conns:
            if conn is None:
                continue
            with suppress(Exception):
                fd = conn.pgconn.socket
                os.dup2(devnull, fd)
            with suppress(Exception):
                conn._pool = None
    finally:
        os.close(devnull)


def _after_fork_in_child() -> None:
    _fork_epoch[0] += 1
    # Only make the inherited sockets harmless here; the pool starts clean (new lock, state and
    # threads) on its first use in the child (see ConnectionPool._after_fork).
    for pool in list(_live_pools):
        with suppress(Exception):
            if pool._pid != _getpid():
                _neutralize(pool._inherited_conns())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
