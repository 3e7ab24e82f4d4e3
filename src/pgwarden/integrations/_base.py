"""What every adapter shares: the handle, the leak scanner, holders, stacks, states, errors.

An adapter turns one library's hooks into :class:`~pgwarden.observe.Tracker` events.

The checkout and the return (the hot path) take no lock: the record of a checked-out connection
is written only by the thread (or task) that checked it out, ``out`` last at a checkout and first
at a return (:meth:`Tracker.checkout`, :meth:`Tracker.checkin`), so a reader in another thread
sees either the previous state or the whole new one; the counters and the histogram they touch
are integer and float ``+=`` on attributes and list items, which no other thread can interleave
with under the GIL (no call, no backward jump, no allocation of a tracked object between the read
and the write). Everything else (connections opened and closed, timeouts, connections the
application dropped, the leak scan, the readers ``holders()``, ``stats()``, ``explain()``) is
serialized by the adapter's *reentrant* lock (:attr:`Instrumentation.lock`): a collection that
runs while the same thread is inside a tracker call must not deadlock. (A free-threaded build
without the GIL could lose a counter increment under contention; it would not lose a holder.)

Leak scans need a clock: one daemon thread per process (``pgwarden-leak-scan``) scans every
live instrumentation every ``leak_threshold / 4`` seconds (at least every 1 s, at most every
20 ms), logs the leaks outside any lock and, for the libraries that keep a strong reference to a
checked-out connection (asyncpg, psycopg2), finds the checkouts the application dropped. It is
started with the first instrumentation and started again in a forked child.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from ..observe import Holder, PoolStats, RawStack, Sizes, TrackedConnection, Tracker
from ..observe.holders import _skip_files, skip_files
from ..observe.registry import register, unregister
from ..pgbouncer.detect import Pooler
from ..pgbouncer.drivers import Setting

__all__ = [
    "STACK_DEPTH",
    "WAITED_AFTER",
    "ExplainedError",
    "Instrumentation",
    "driver_state",
    "package_dir",
    "stack_from",
    "task_or_thread",
]

logger = logging.getLogger("pgwarden.integrations")

#: A checkout that took longer than this (seconds) is counted as having waited
#: (``requests_waited_total``, ``wait_seconds``). An instrumented pool does not expose its queue,
#: so the adapters judge by the time ``getconn`` / ``acquire`` took (which includes opening a
#: connection when the library opens one for the caller).
WAITED_AFTER = 0.001

#: What a pooler that shares server sessions and does not track prepared statements needs
#: (PgBouncer 1.18 in transaction mode): when a pool's settings already satisfy it, nothing is
#: probed at all.
_WORST = Pooler("pooler", "transaction", tracks_prepared=False, evidence="worst case")

#: libpq's ``PQtransactionStatus`` codes (psycopg 3 ``TransactionStatus``, psycopg2
#: ``TRANSACTION_STATUS_*``) in ``pg_stat_activity.state`` words.
_PQ_STATES = ("idle", "active", "idle in transaction", "idle in transaction (aborted)", "broken")


def package_dir(module: Any) -> str:
    """The directory of a package (to leave its frames out when locating holders)."""
    return os.path.dirname(os.path.abspath(str(module.__file__))) + os.sep


#: Frames kept per checkout by default: the application's, counted from the first frame that is
#: not the pooled library's (nor pgwarden's, contextlib's, asyncio's, or of ``skip_modules``),
#: innermost first. Each costs a frame object made for the walk (docs/instrument.md, "Cost").
STACK_DEPTH = 4


def stack_from(frame: Any, depth: int) -> RawStack:
    """The checkout stack in the tracker's raw format (``(code, f_lasti)`` pairs, innermost
    first): from ``frame`` (the hook's caller) outwards, the leading frames of the pooled
    library and the other skipped files passed over, then ``depth`` frames. A stack made only of
    skipped frames is kept as it is (the innermost ``depth``)."""
    skip = _skip_files[0]
    f = frame
    while f is not None and f.f_code.co_filename.startswith(skip):
        f = f.f_back
    if f is None:
        f = frame
        if f is None:
            return []
    out = [(f.f_code, f.f_lasti)]
    while depth > 1:  # (no f_back past the last frame kept: each one makes a frame object)
        f = f.f_back
        if f is None:
            break
        out.append((f.f_code, f.f_lasti))
        depth -= 1
    return out


def task_or_thread() -> Any:
    """The holder: the running asyncio task's name, else the current thread."""
    loop = asyncio._get_running_loop()
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return task.get_name()
    return threading.current_thread()


def driver_state(conn: Any) -> str:
    """The transaction state of a driver connection in ``pg_stat_activity.state`` words,
    read without I/O: psycopg 3 and psycopg2 (``conn.info.transaction_status``, libpq's),
    asyncpg (``is_closed()``, ``is_in_transaction()``: idle or idle in transaction only)."""
    if conn is None:
        return "broken"
    info = getattr(conn, "info", None)
    status = getattr(info, "transaction_status", None)
    if status is not None:
        return _PQ_STATES[int(status)] if 0 <= int(status) < len(_PQ_STATES) else "unknown"
    is_closed = getattr(conn, "is_closed", None)
    if is_closed is not None:
        if is_closed():
            return "broken"
        return "idle in transaction" if conn.is_in_transaction() else "idle"
    return "unknown"


def backend_pid(conn: Any) -> int:
    """The backend pid of a driver connection, without I/O (0 where it cannot be read):
    psycopg 3 and psycopg2 ``conn.info.backend_pid``, asyncpg ``get_server_pid()``."""
    try:
        info = getattr(conn, "info", None)
        pid = getattr(info, "backend_pid", None)
        if pid is None:
            getter = getattr(conn, "get_server_pid", None) or getattr(conn, "get_backend_pid",
                                                                      None)
            pid = getter() if getter is not None else 0
        return int(pid or 0)
    except Exception:
        return 0


class ExplainedError:
    """Mixed into each library's exhaustion exception (a subclass of the library's own, so
    every ``except`` that caught it still does).

    Attributes:
        pool: the instrumented pool's name.
        holders: who held the pool's connections when it gave up, longest first
            (:class:`~pgwarden.observe.Holder`).
        explanation: the pool's state and longest holders as appended to the message.
    """

    pool: str = ""
    holders: list[Holder]
    explanation: str = ""


class _Scanner:
    """One daemon thread per process scanning every live instrumentation for leaks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handles: weakref.WeakSet[Instrumentation] = weakref.WeakSet()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, handle: Instrumentation) -> None:
        with self.lock:
            self.handles.add(handle)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.run, name="pgwarden-leak-scan",
                                               daemon=True)
                self.thread.start()
        self.wake.set()

    def discard(self, handle: Instrumentation) -> None:
        with self.lock:
            self.handles.discard(handle)

    def interval(self, handles: list[Instrumentation]) -> float:
        thresholds = [h.tracker.leak_threshold for h in handles
                      if h.tracker.leak_threshold is not None]
        return max(0.02, min([1.0, *(t / 4 for t in thresholds)]))

    def tick(self) -> float:
        """Scan every instrumentation once; return the seconds until the next scan."""
        with self.lock:
            handles = list(self.handles)
        for handle in handles:
            try:
                handle.scan()
            except Exception:  # a scan must never kill the scanner
                logger.exception("leak scan of pool %r failed", handle.tracker.name)
        return self.interval(handles)

    def run(self) -> None:
        while True:
            self.wake.wait(self.tick())  # no handle is held while asleep
            self.wake.clear()

    def after_fork_in_child(self) -> None:
        # the parent's thread does not exist here: start another if anything is instrumented
        self.lock = threading.Lock()
        self.thread = None
        handles = list(self.handles)
        for h in handles:
            h._after_fork_in_child()
        if handles:
            self.add(handles[0])


_scanner = _Scanner()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_scanner.after_fork_in_child)


class Instrumentation:
    """The handle :func:`pgwarden.instrument` returns for one instrumented pool.

    Attributes:
        target: what was instrumented (the engine, pool, ...).
        tracker: its :class:`~pgwarden.observe.Tracker` (listed in
            :func:`pgwarden.observe.trackers` until :meth:`remove`).
        lock: the reentrant lock the adapter's tracker calls run under, but for the checkout
            and the return (module docstring).
        removed: :meth:`remove` was called.
    """

    library: ClassVar[str] = ""
    #: Application frames kept per checkout (:data:`STACK_DEPTH`, :func:`stack_from`).
    stack_depth: int = STACK_DEPTH

    def __init__(self, target: Any, *, name: str, leak_threshold: float | None,
                 sizes: Callable[[], Sizes | None] | None, reclaim: bool = True) -> None:
        self.target = target
        self.lock = threading.RLock()
        self.removed = False
        self.reclaim = reclaim
        self.capture = leak_threshold is not None
        #: connections the garbage collector took, reported by the next scan: a weakref
        #: callback runs wherever a collection happens to run, so it only appends here (no
        #: lock, no logging at collection time)
        self._gone: collections.deque[TrackedConnection] = collections.deque()
        self.tracker = Tracker(name, library=self.library, leak_threshold=leak_threshold,
                               sizes=sizes, state_of=self._state_of, register=False,
                               closed=self._closed)

    def _closed(self) -> bool:
        """Whether the library says the pool is closed (never blocks)."""
        return False

    def _start(self) -> None:
        """Make it visible: list the tracker, start the leak scans."""
        register(self.tracker)
        _scanner.add(self)

    # -- behind PgBouncer (connect time only) --------------------------------------------------

    #: The :data:`pgwarden.pgbouncer.drivers.DRIVERS` name of the pool's driver (``""``: none
    #: of the rules concern it, e.g. psycopg2, which never prepares on the server).
    driver: str = ""
    #: what sits between the pool and PostgreSQL: told (``instrument(pgbouncer=...)``) or
    #: detected on the first connection opened after instrumenting; ``None`` until then
    pooler: Pooler | None = None
    _pooler_busy = False
    _pooler_warned = False

    def _tell_pooler(self, pooler: Pooler | None) -> None:
        """``instrument(pgbouncer=...)``: the settings are judged at once (with what the
        adapter can read without a connection), else at the first new connection."""
        if pooler is None:
            return
        self.pooler = pooler
        current = self._pool_settings()
        if current is not None:
            self._judge(pooler, current)

    def _pool_settings(self) -> dict[str, Any] | None:
        """The pool's driver settings readable without a connection (``None``: not readable
        before a connection exists)."""
        return None

    def _needs_probe(self, current: dict[str, Any]) -> bool:
        """Whether detection is worth a round trip: the settings would break behind a PgBouncer
        that shares server sessions and does not track prepared statements."""
        if self.pooler is not None or self._pooler_busy or not self.driver:
            return False
        return bool(self._unsatisfied(_WORST, current))

    def _unsatisfied(self, pooler: Pooler, current: dict[str, Any]) -> list[tuple[Setting, Any]]:
        adv = pooler.advice(self.driver, libpq_version=_libpq_version())
        return [(s, current[s.name]) for s in adv.settings
                if s.name in current and not _satisfies(s, current[s.name])]

    def _judge(self, pooler: Pooler, current: dict[str, Any]) -> None:
        """Warn once, on the ``pgwarden.integrations`` logger, naming each setting to change,
        when the pool's settings break behind ``pooler``."""
        self.pooler = pooler
        if not pooler.behind:
            logger.debug("pool %r: %s", self.name, pooler.describe())
            return
        bad = self._unsatisfied(pooler, current)
        if not bad:
            logger.info("pool %r (%s): behind %s (%s); its settings fit", self.name,
                        self.library, pooler.describe(), pooler.evidence)
            return
        if self._pooler_warned:
            return
        self._pooler_warned = True
        now = ", ".join(f"{s.name}={v!r}" for s, v in bad)
        logger.warning(
            "pool %r (%s): behind %s (%s). Its driver settings (%s) make statements fail there "
            "with 'prepared statement ... does not exist' or '... already exists'. "
            "instrument() cannot change the connections of a running pool: create it with %s. "
            "(In session mode nothing is needed: instrument(..., pgbouncer=False) silences "
            "this.)", self.name, self.library, pooler.describe(), pooler.evidence, now,
            self._how(tuple(s for s, _ in bad)))

    def _how(self, settings: tuple[Setting, ...]) -> str:
        """Where the settings go, in the library's words (adapters say it better)."""
        return "; ".join(f"{s.name}={s.value} ({s.where})" for s in settings)

    def _detected(self, pooler: Pooler | None, current: dict[str, Any]) -> None:
        self._pooler_busy = False
        if pooler is not None:
            self._judge(pooler, current)

    def _detect_on(self, detect: Callable[[Any], Any], conn: Any,
                   current: dict[str, Any]) -> None:
        """Run ``detect(conn)`` (a :mod:`pgwarden.pgbouncer.detect` function) if the settings
        ``current`` make it worth a round trip, and judge the answer."""
        if not self._needs_probe(current):
            return
        self._pooler_busy = True
        try:
            pooler = detect(conn)
        except Exception as exc:
            self._probe_failed(exc)
        else:
            self._detected(pooler, current)

    async def _adetect_on(self, detect: Callable[[Any], Any], conn: Any,
                          current: dict[str, Any]) -> None:
        """:meth:`_detect_on` with an ``async`` detect function."""
        if not self._needs_probe(current):
            return
        self._pooler_busy = True
        try:
            pooler = await detect(conn)
        except Exception as exc:
            self._probe_failed(exc)
        else:
            self._detected(pooler, current)

    def _probe_failed(self, exc: BaseException) -> None:
        """Detection failed on this connection (it is left to the library): try again on the
        next one."""
        self._pooler_busy = False
        logger.debug("pool %r: pooler detection failed: %s", self.name, exc)

    # -- what the application asks ------------------------------------------------------------

    @property
    def name(self) -> str:
        """The pool's name (logs, errors, metrics)."""
        return self.tracker.name

    def holders(self) -> list[Holder]:
        """Who holds the pool's checked-out connections now, longest held first."""
        with self.lock:
            return self.tracker.holders()

    def stats(self) -> PoolStats:
        """Counters, gauges and timings (:class:`~pgwarden.observe.PoolStats`)."""
        with self.lock:
            return self.tracker.stats()

    def explain(self, *, limit: int = 3) -> str:
        """The pool's state and its ``limit`` longest holders, as exhaustion errors say it."""
        with self.lock:
            return self.tracker.explain(limit=limit)

    def remove(self) -> None:
        """Undo the instrumentation: the library's hooks and methods are as before, its
        exhaustion errors are its own again, the tracker leaves
        :func:`pgwarden.observe.trackers`. Idempotent; ``pgwarden.instrument`` on the same
        target afterwards instruments it anew."""
        if self.removed:
            return
        self.removed = True
        _scanner.discard(self)
        unregister(self.tracker)
        self._undo()

    close = remove

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else "active"
        return f"<{type(self).__name__} {self.name!r} ({self.library}, {state})>"

    # -- for the adapters ---------------------------------------------------------------------

    def _undo(self) -> None:
        raise NotImplementedError

    def _driver_connection(self, rec: TrackedConnection) -> Any:
        """The driver connection of a record (adapters store it differently)."""
        conn = rec.connection
        return conn() if isinstance(conn, weakref.ref) else conn

    def _state_of(self, rec: TrackedConnection) -> str:
        return driver_state(self._driver_connection(rec))

    def _begin_tracking(self, rec: TrackedConnection, elapsed: float | None
                        ) -> TrackedConnection:
        """Track a connection: opened now, in ``elapsed`` seconds, or (``None``) open before
        the pool was instrumented, then not counted as opened."""
        with self.lock:
            if elapsed is None:
                self.tracker.adopt(rec)
            else:
                self.tracker.connected(rec, elapsed)
        return rec

    def _failed(self, e: BaseException) -> None:
        """A checkout failed other than by timing out: the caller no longer waits; an
        ``Exception`` (not a cancellation) counts as an error."""
        with self.lock:
            self.tracker.requests_waiting -= 1
            if isinstance(e, Exception):
                self.tracker.failed()

    def _waited(self, seconds: float) -> None:
        """The checkout just recorded waited ``seconds`` (the slow path: under the lock)."""
        with self.lock:
            self.tracker.waited(seconds)

    def _explained(self, cls: type[BaseException], original: BaseException,
                   default: str = "") -> BaseException:
        """An instance of ``cls`` (the library's exception subclassed with
        :class:`ExplainedError`): the original message first, then the pool's state and its
        longest holders."""
        with self.lock:
            text = self.tracker.explain()
            holders = self.tracker.holders()
        first = str(original.args[0]) if original.args else (str(original) or default)
        err = cls(f"{first}: {text}" if first else text)
        err.pool = self.name  # type: ignore[attr-defined]
        err.holders = holders  # type: ignore[attr-defined]
        err.explanation = text  # type: ignore[attr-defined]
        return err

    def scan(self) -> None:
        """One leak scan (the scanner thread calls it): log checkouts held past the leak
        threshold once, and report (and reclaim) checkouts the application dropped."""
        if self.removed:
            return
        with self.lock:
            while self._gone:
                rec = self._gone.popleft()
                if rec.out:
                    self.tracker.collected(rec)
                self.tracker.closed(rec)
            leaks = self.tracker.leak_scan()
            dropped = self._find_dropped()
            for _key, rec, _obj in dropped:
                self.tracker.collected(rec, dropped=True)
        self.tracker.report_leaks(leaks)
        for key, rec, obj in dropped:
            if self.reclaim:
                self._reclaim(key, rec, obj)

    # Libraries that keep a strong reference to a checked-out connection (asyncpg's holder and
    # connection point at the proxy, psycopg2's ``_used`` at the connection) never let the
    # garbage collector see it dropped. ``_internal_refs`` says how many references the library
    # itself holds; when the object's reference count is exactly that plus the three of this
    # scan (the candidate's tuple, the loop variable, ``getrefcount``'s argument), nothing in
    # the application can reach it any more. (CPython reference counts.)
    _SCAN_REFS = 3

    def _internal_refs(self, obj: Any) -> int | None:
        return None

    def _candidates(self) -> list[tuple[int, TrackedConnection, Any]]:
        """``(key, record, object the application holds)`` of the checkouts the library
        references strongly (asyncpg's proxies, psycopg2's connections; none elsewhere)."""
        return []

    def _find_dropped(self) -> list[tuple[int, TrackedConnection, Any]]:
        found = []
        for key, rec, obj in self._candidates():
            internal = self._internal_refs(obj)
            if internal is not None and sys.getrefcount(obj) == internal + self._SCAN_REFS:
                found.append((key, rec, obj))
            del obj
        return found

    def _reclaim(self, key: int, rec: TrackedConnection, obj: Any) -> None:
        """Give a dropped checkout back to its pool (adapters whose library allows it)."""

    def _after_fork_in_child(self) -> None:
        """The checkouts recorded before a fork belong to the parent's threads."""
        self.lock = threading.RLock()
        for rec in list(self.tracker.records):
            rec.out = False
            rec.handle = None


def _libpq_version() -> int | None:
    try:
        from psycopg import pq

        return int(pq.version())
    except Exception:  # psycopg without a libpq, or missing
        return None


def _satisfies(setting: Setting, current: Any) -> bool:
    """Whether a pool's current value is the one ``setting`` asks for (a literal such as
    ``None`` or ``0`` compared as a value; a callable setting is satisfied by any callable the
    user gave)."""
    try:
        wanted = ast.literal_eval(setting.value)
    except (ValueError, SyntaxError):
        return current is not None
    return bool(current == wanted and type(current) is type(wanted))


def skip_library(module: Any) -> None:
    """Leave a pooled library's frames out when locating holders."""
    skip_files(package_dir(module))


def now() -> float:
    return time.monotonic()
