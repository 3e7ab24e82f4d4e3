"""The tracker: one pool's holders, leaks, counters and timings, fed by events.

A :class:`Tracker` knows nothing about any library. A pool (pgwarden's own, or one of
:func:`pgwarden.instrument`'s adapters) tells it what happens:

=====================  ==========================================================================
event                  call
=====================  ==========================================================================
connection opened      :meth:`Tracker.connected` (with the seconds it took)
connection failed      :meth:`Tracker.connect_failed`
caller starts waiting  :meth:`Tracker.queued`
checkout               :meth:`Tracker.checkout` (who, where: a cheap stack), after
                       :meth:`Tracker.waited` when the caller had to wait
checkin (return)       :meth:`Tracker.checkin`
connection closed      :meth:`Tracker.closed` (invalidated, expired, broken, pool closed)
checkout timed out     :meth:`Tracker.timed_out`; :meth:`Tracker.explain` gives the holders text
connection lost        :meth:`Tracker.collected` (the application dropped a checked-out
                       connection without returning it)
=====================  ==========================================================================

and asks it :meth:`Tracker.holders`, :meth:`Tracker.leak_scan` and :meth:`Tracker.stats`.

Calls for one tracker must not overlap: pgwarden's pools make :attr:`Tracker.lock` their own
lock and make every call under it, and so are the reads from other threads (the metrics
collector, the holders endpoint). The instrumented pools (``pgwarden.integrations``) call
:meth:`Tracker.checkout` and :meth:`Tracker.checkin` without a lock, from the one thread that
owns the record at that moment, and serialize the other calls under their own lock (their
module docstring says why that holds under the GIL). No call does I/O; the leak warnings are
logged by :meth:`Tracker.report_leaks` outside any lock.

Counters and timings are plain data read by the metrics (``pgwarden.metrics``) through
:meth:`Tracker.stats`: nothing Prometheus-specific sits on the checkout path.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .holders import Holder, RawStack, holder_name, innermost, summarize

__all__ = [
    "DEFAULT_LEAK_THRESHOLD",
    "SECONDS_BUCKETS",
    "Histogram",
    "PoolStats",
    "Sizes",
    "TrackedConnection",
    "Tracker",
]

logger = logging.getLogger("pgwarden.pool")

_bisect_left = bisect.bisect_left

#: Seconds a checkout may be held before it is reported as a leak (HikariCP's
#: ``leakDetectionThreshold`` is off by default; 60 s is long for a web request and short enough
#: to catch a forgotten ``putconn``).
DEFAULT_LEAK_THRESHOLD = 60.0

#: Upper bounds (seconds) of the wait / use / connect histograms: from 100 µs (a checkout from
#: an idle pool) to 30 s (psycopg_pool's and SQLAlchemy's default timeout).
SECONDS_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
)


class TrackedConnection:
    """The tracker's record of one open connection and its current checkout.

    Adapters make one per connection (:meth:`Tracker.connected`); pgwarden's pool subclasses it
    for its slots. Mutable and internal: what leaves the tracker is a frozen :class:`Holder`.

    Attributes:
        pid: backend pid (0 where the library does not tell).
        connected_at: monotonic time the connection opened.
        out: checked out now.
        out_at: monotonic time of the current (or last) checkout.
        holder: the checking-out thread (a :class:`threading.Thread`) or task name.
        stack: the checkout's raw stack (empty with leak detection off).
        leak_reported: the current checkout was reported as a leak.
        handle: for the adapter: a weak reference to the object the application holds (the
            adapter detects it gone and calls :meth:`Tracker.collected`).
        connection: what :attr:`Tracker.state_of` needs to tell the transaction state (the
            library's connection object, held strongly only by the library).
    """

    __slots__ = (
        "__weakref__", "connected_at", "connection", "handle", "holder", "leak_reported", "out",
        "out_at", "pid", "stack",
    )

    def __init__(self, pid: int = 0, connection: Any = None, now: float | None = None) -> None:
        self.pid = pid
        self.connection = connection
        self.connected_at = time.monotonic() if now is None else now
        self.out = False
        self.out_at = 0.0
        self.holder: Any = ""
        self.stack: RawStack = ()
        self.leak_reported = False
        self.handle: weakref.ref[Any] | None = None


class Histogram:
    """Counts of observations (seconds) in :data:`SECONDS_BUCKETS`, their sum and count.

    ``counts[i]`` is the number of observations ``<= bounds[i]`` and ``> bounds[i-1]`` (the last
    slot: above the largest bound); :meth:`cumulative` gives Prometheus' ``le`` buckets.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self, extra_in_first: int = 0) -> list[tuple[float, int]]:
        """``[(le, count of observations <= le), ..., (inf, total)]``; ``extra_in_first``
        observations of ~0 s are added to every bucket."""
        out = []
        running = extra_in_first
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def copy(self) -> Histogram:
        h = Histogram(self.bounds)
        h.counts = list(self.counts)
        h.sum = self.sum
        return h


@dataclass(frozen=True, slots=True)
class Sizes:
    """A pool's sizes at one instant, as its adapter reads them.

    Attributes:
        open: connections open (idle + in use).
        idle: connections in the pool, ready.
        in_use: connections checked out.
        min_size: the pool's lower bound (``None`` where it has none).
        max_size: its upper bound (SQLAlchemy: ``pool_size + max_overflow``; ``None``: none).
    """

    open: int
    idle: int
    in_use: int
    min_size: int | None
    max_size: int | None


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counters, gauges and timings of one pool (one :meth:`Tracker.stats` call).

    Gauges: ``connections`` (open), ``idle``, ``in_use``, ``min_size``, ``max_size``,
    ``requests_waiting`` (callers waiting for a connection now), ``leaks_current`` (checkouts
    past the leak threshold now), ``holders_max_held_seconds``.

    Counters (since the tracker started): ``requests_total`` (checkouts served),
    ``requests_queued_total`` (requests that had to wait: counted when they start waiting),
    ``requests_waited_total`` (served after waiting), ``timeouts_total`` (checkouts that gave
    up), ``errors_total`` (failed checkouts: timeouts included), ``connections_opened_total``,
    ``connection_errors_total`` (failed connection attempts), ``connections_closed_total``,
    ``leaks_total`` (checkouts reported as leaks), ``leaks_returned_total`` (reported, then
    returned: "unleaked"), ``collected_total`` (checked-out connections the application
    dropped without returning them).

    Timings (:class:`Histogram` copies, seconds): ``wait_seconds`` (checkouts that waited and
    timeouts; ``requests_total - requests_waited_total`` more were served at once, see
    :meth:`wait_buckets`), ``use_seconds`` (checkout to return), ``connect_seconds``.
    Each key's Prometheus metric (``pgwarden_pool_*``) is listed in docs/exporter.md.
    """

    pool: str
    library: str
    connections: int
    idle: int
    in_use: int
    min_size: int | None
    max_size: int | None
    requests_waiting: int
    leaks_current: int
    holders_max_held_seconds: float
    requests_total: int
    requests_queued_total: int
    requests_waited_total: int
    timeouts_total: int
    errors_total: int
    connections_opened_total: int
    connection_errors_total: int
    connections_closed_total: int
    leaks_total: int
    leaks_returned_total: int
    collected_total: int
    wait_seconds: Histogram
    use_seconds: Histogram
    connect_seconds: Histogram

    def wait_buckets(self) -> list[tuple[float, int]]:
        """The wait histogram with the checkouts served at once counted as waiting ~0 s."""
        immediate = self.requests_total - self.requests_waited_total
        return self.wait_seconds.cumulative(extra_in_first=max(0, immediate))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the gauges and counters, and each histogram as ``{"sum", "count"}``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            key, value = f.name, getattr(self, f.name)
            if isinstance(value, Histogram):
                count = value.count
                if key == "wait_seconds":
                    count += max(0, self.requests_total - self.requests_waited_total)
                out[key] = {"sum": round(value.sum, 6), "count": count}
            else:
                out[key] = value
        return out


_UNKNOWN = "unknown"


class Tracker:
    """The holders, leaks, counters and timings of one pool (see the module docstring).

    Args:
        name: the pool's name (logs, errors, the ``pool`` metrics label).
        library: which pool: ``pgwarden``, ``sqlalchemy``, ``psycopg_pool``, ``asyncpg``,
            ``psycopg2``.
        leak_threshold: seconds a checkout may be held before it is reported (``None``: no
            stacks captured, no leak warnings).
        sizes: returns the pool's :class:`Sizes` now (called by :meth:`stats` and
            :meth:`explain`; must not block), or ``None`` for a pool that keeps none (the
            tracker then counts its own records).
        state_of: returns the transaction state of a record's connection (called when holders
            are reported; must not do I/O).
        register: list it in :func:`pgwarden.observe.trackers` (metrics, the holders endpoint,
            the pytest plugin find it there).
        closed: returns whether the pool was closed (then it is no longer listed there);
            must not block.

    Raises:
        ValueError: ``leak_threshold`` is not a positive number or ``None``.
    """

    def __init__(
        self,
        name: str,
        *,
        library: str = "pgwarden",
        leak_threshold: float | None = DEFAULT_LEAK_THRESHOLD,
        sizes: Callable[[], Sizes | None] | None = None,
        state_of: Callable[[TrackedConnection], str] | None = None,
        register: bool = True,
        closed: Callable[[], bool] | None = None,
    ) -> None:
        if leak_threshold is not None and (
            isinstance(leak_threshold, bool) or not isinstance(leak_threshold, (int, float))
            or not leak_threshold > 0
        ):
            raise ValueError(f"leak_threshold must be > 0 seconds or None, got {leak_threshold!r}")
        self.name = name
        self.library = library
        self.leak_threshold = None if leak_threshold is None else float(leak_threshold)
        self._sizes = sizes
        self._state_of = state_of
        self._closed = closed
        #: held around every event and every read from another thread (pgwarden's pools
        #: replace it with their own lock)
        self.lock = threading.Lock()
        self.records: set[TrackedConnection] = set()
        self.requests_waiting = 0
        self.reset()
        if register:
            from .registry import register as _register

            _register(self)

    def reset(self) -> None:
        """Zero the counters and timings (psycopg_pool's ``pop_stats``)."""
        self.requests_total = 0
        self.requests_queued = 0
        self.requests_waited = 0
        self.timeouts = 0
        self.errors = 0
        self.opened = 0
        self.connect_errors = 0
        self.closed_total = 0
        self.leaks = 0
        self.leaks_returned = 0
        self.collected_total = 0
        self.wait = Histogram()
        self.use = Histogram()
        self.connect = Histogram()

    def __repr__(self) -> str:
        return f"<Tracker {self.name!r} ({self.library}) {len(self.records)} connections>"

    # -- events --------------------------------------------------------------------------

    def connected(self, rec: TrackedConnection, elapsed: float) -> TrackedConnection:
        """A connection opened in ``elapsed`` seconds; ``rec`` is its record (returned)."""
        self.records.add(rec)
        self.opened += 1
        self.connect.observe(elapsed)
        return rec

    def connect_failed(self) -> None:
        """A connection attempt failed."""
        self.connect_errors += 1

    def checkout(self, rec: TrackedConnection, holder: Any, stack: RawStack, now: float
                 ) -> None:
        """``rec`` was checked out at ``now`` (monotonic) by ``holder`` (a thread or a task
        name), from the code in ``stack``. (``out`` is written last, and :meth:`checkin` clears it
        first: a reader in another thread that sees ``out`` sees the whole checkout.)"""
        rec.out_at = now
        rec.holder = holder
        rec.stack = stack
        rec.leak_reported = False
        rec.out = True
        self.requests_total += 1

    def adopt(self, rec: TrackedConnection) -> TrackedConnection:
        """Track a connection that was open before the tracker started (an adapter
        instrumenting a pool already in use): listed, not counted as opened."""
        self.records.add(rec)
        return rec

    def queued(self) -> None:
        """A caller starts waiting for a connection (:attr:`requests_waiting` goes up by one;
        the adapter brings it down when the caller is served, gives up or is cancelled)."""
        self.requests_queued += 1
        self.requests_waiting += 1

    def waited(self, seconds: float) -> None:
        """The checkout just recorded had to wait ``seconds`` for a connection."""
        self.requests_waited += 1
        self.wait.observe(seconds)

    def checkin(self, rec: TrackedConnection, now: float) -> None:
        """``rec`` came back at ``now`` (monotonic). A checkout reported as a leak is logged as
        "unleaked"."""
        if not rec.out:
            return
        rec.out = False
        rec.handle = None
        held = now - rec.out_at
        use = self.use  # Histogram.observe, inlined (every return comes here)
        use.counts[_bisect_left(use.bounds, held)] += 1
        use.sum += held
        if rec.leak_reported:
            self.leaks_returned += 1
            logger.info("pool %r: previously reported leak returned (unleaked): backend pid %d "
                        "held %.1f s by %s at %s", self.name, rec.pid, now - rec.out_at,
                        holder_name(rec.holder), self._location(rec))

    def closed(self, rec: TrackedConnection) -> None:
        """``rec``'s connection left the pool (closed, invalidated, expired, lost)."""
        if rec in self.records:
            self.records.discard(rec)
            self.closed_total += 1
        rec.out = False
        rec.handle = None

    def timed_out(self, waited: float) -> None:
        """A checkout gave up after waiting ``waited`` seconds."""
        self.timeouts += 1
        self.errors += 1
        self.wait.observe(waited)

    def failed(self) -> None:
        """A checkout failed for another reason than a timeout (too many waiting, closed)."""
        self.errors += 1

    def collected(self, rec: TrackedConnection, *, dropped: bool = False) -> None:
        """The application lost a checked-out connection without returning it; log it with
        the checkout stack. ``dropped``: nothing in the application references it any more
        but the pooled library still does (it was not garbage-collected). (The adapter reclaims
        the slot where its library allows.)"""
        if not rec.out:
            return
        rec.out = False
        rec.handle = None
        self.collected_total += 1
        how = ("was dropped by the application without being returned" if dropped
               else "was garbage-collected without being returned")
        logger.warning(
            "pool %r: connection backend pid %d %s (checked out by %s at %s). Checkout stack "
            "(most recent call last):\n%s",
            self.name, rec.pid, how, holder_name(rec.holder), self._location(rec),
            "".join(summarize(rec.stack).format()))

    # -- reporting -------------------------------------------------------------------------

    def _location(self, rec: TrackedConnection) -> str:
        where = innermost(rec.stack)
        return "?" if where is None else f"{where[0]}:{where[1]} in {where[2]}"

    def holder_of(self, rec: TrackedConnection, now: float, wall: float) -> Holder | None:
        """The :class:`Holder` of ``rec`` if it is checked out."""
        if not rec.out:
            return None
        state = _UNKNOWN
        if self._state_of is not None:
            try:
                state = self._state_of(rec)
            except Exception:
                state = _UNKNOWN
        where = innermost(rec.stack)
        file, line, function = where if where is not None else ("?", 0, "?")
        return Holder(
            pool=self.name,
            pid=rec.pid,
            holder=holder_name(rec.holder),
            started_at=wall - (now - rec.out_at),
            held_for=now - rec.out_at,
            transaction_state=state,
            file=file,
            line=line,
            function=function,
            stack=summarize(rec.stack),
            leaked=rec.leak_reported,
            library=self.library,
        )

    def holders(self) -> list[Holder]:
        """Who holds the checked-out connections now, longest held first."""
        now, wall = time.monotonic(), time.time()
        out = [h for r in list(self.records) if (h := self.holder_of(r, now, wall)) is not None]
        out.sort(key=lambda h: h.held_for, reverse=True)
        return out

    def leak_scan(self, now: float | None = None) -> list[Holder]:
        """Mark checkouts held past the leak threshold (each once) and return their holders;
        log them with :meth:`report_leaks` (outside any lock)."""
        thr = self.leak_threshold
        if thr is None:
            return []
        now = time.monotonic() if now is None else now
        wall = time.time()
        found = []
        for rec in list(self.records):
            if rec.out and not rec.leak_reported and now - rec.out_at > thr:
                rec.leak_reported = True
                self.leaks += 1
                h = self.holder_of(rec, now, wall)
                if h is not None:
                    found.append(h)
        return found

    def report_leaks(self, holders: list[Holder]) -> None:
        """Log one warning per leak :meth:`leak_scan` found, with its checkout stack."""
        for h in holders:
            logger.warning(
                "pool %r: connection leak? backend pid %d checked out %.1f s ago by %s at %s "
                "(%s) and not returned. Checkout stack (most recent call last):\n%s",
                self.name, h.pid, h.held_for, h.holder, h.location, h.transaction_state,
                h.format_stack())

    def sizes(self) -> Sizes:
        """The pool's sizes now (from the adapter), or what the tracker counts itself (where
        the adapter returns ``None``: a pool that keeps no sizes)."""
        if self._sizes is not None:
            try:
                sizes = self._sizes()
            except Exception:
                logger.debug("pool %r: reading its sizes failed", self.name, exc_info=True)
            else:
                if sizes is not None:
                    return sizes
        in_use = sum(1 for r in self.records if r.out)
        return Sizes(open=len(self.records), idle=len(self.records) - in_use, in_use=in_use,
                     min_size=None, max_size=None)

    @property
    def pool_closed(self) -> bool:
        """The pool says it is closed (then :func:`~pgwarden.observe.trackers` no longer lists
        it: its metrics series and holders disappear)."""
        if self._closed is None:
            return False
        try:
            return bool(self._closed())
        except Exception:
            return False

    def explain(self, *, limit: int = 3) -> str:
        """The pool's state and its longest holders, for an exhaustion error::

            pool 'api' (sqlalchemy): 15/15 in use, 0 idle, 3 waiting; longest holders:
            backend pid 4711 held 95.2 s by worker-3 at app/jobs.py:88 in sync_orders
            (idle in transaction), ...

        Args:
            limit: how many holders to name (0: none, only how many there are).

        Raises:
            ValueError: ``limit`` is not a whole number >= 0.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a whole number >= 0, got {limit!r}")
        s = self.sizes()
        cap = f"/{s.max_size}" if s.max_size is not None else ""
        text = (f"pool {self.name!r} ({self.library}): {s.in_use}{cap} in use, {s.idle} idle, "
                f"{self.requests_waiting} waiting")
        holders = self.holders()
        if holders and limit == 0:
            text += f"; {len(holders)} holders"
        elif holders:
            text += "; longest holders: " + ", ".join(h.describe() for h in holders[:limit])
            if len(holders) > limit:
                text += f", ... ({len(holders) - limit} more)"
        elif self.leak_threshold is None:
            text += "; holders are not recorded (leak_threshold=None)"
        return text

    def stats(self) -> PoolStats:
        """A consistent copy of the counters, gauges and timings."""
        s = self.sizes()
        now = time.monotonic()
        outs = [r for r in list(self.records) if r.out]
        return PoolStats(
            pool=self.name,
            library=self.library,
            connections=s.open,
            idle=s.idle,
            in_use=s.in_use,
            min_size=s.min_size,
            max_size=s.max_size,
            requests_waiting=self.requests_waiting,
            leaks_current=sum(1 for r in outs if r.leak_reported),
            holders_max_held_seconds=max((now - r.out_at for r in outs), default=0.0),
            requests_total=self.requests_total,
            requests_queued_total=self.requests_queued,
            requests_waited_total=self.requests_waited,
            timeouts_total=self.timeouts,
            errors_total=self.errors,
            connections_opened_total=self.opened,
            connection_errors_total=self.connect_errors,
            connections_closed_total=self.closed_total,
            leaks_total=self.leaks,
            leaks_returned_total=self.leaks_returned,
            collected_total=self.collected_total,
            wait_seconds=self.wait.copy(),
            use_seconds=self.use.copy(),
            connect_seconds=self.connect.copy(),
        )
