"""The pools' metrics in prometheus_client's multiprocess mode (gunicorn, uWSGI, Celery prefork).

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before the processes start) each
process writes its metrics to files in that directory, and the process that answers a scrape
reads every file through a ``MultiProcessCollector``. Custom collectors are not part of it:
:class:`~pgwarden.metrics.pools.PoolCollector` would report the pools of whichever worker
answered the scrape. So every worker runs a :class:`PoolMetricsPublisher` instead: a daemon
thread that every ``interval`` seconds reads the worker's trackers and writes the same
``pgwarden_pool_*`` metrics through prometheus_client's own multiprocess metrics:

- **gauges** (connections by state, max, min, waiting, current leaks) in mode ``livesum``: the
  sum over the live workers (``pgwarden_pool_holders_max_held_seconds``: ``livemax``, the
  longest); gunicorn's ``child_exit`` hook must call ``multiprocess.mark_process_dead(pid)``
  (prometheus_client's instructions) so that a dead worker's gauges go away;
- **counters and histograms**: what each tracker added since the previous publish (a tracker
  reset by ``pop_stats()`` counts again from zero), summed over every worker that ever ran
  until the directory is wiped, as prometheus_client does for its own counters.

What differs from a single process (docs/exporter.md, "Multiprocess mode"): values are up to
``interval`` seconds old; there is no per-worker series (no ``pid`` label); a worker killed
with SIGKILL loses what it counted since its last publish (a normal exit publishes once more).

The histograms are written into prometheus_client's ``Histogram`` children bucket by bucket
(``_buckets`` and ``_sum``, private attributes: prometheus_client has no public way to add
counts to a bucket). Tested with prometheus_client 0.17, 0.20 and 0.26.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..observe import SECONDS_BUCKETS, PoolStats, trackers
from .pools import (
    CONNECTIONS,
    DEFAULT_MAX_POOLS,
    HELD_MAX,
    POOL_COUNTERS,
    POOL_GAUGES,
    POOL_HISTOGRAMS,
    WAIT,
    PoolNames,
    merge,
    multiprocess_dir,
    read_stats,
)
from .registry import MetricSpec

if TYPE_CHECKING:
    from ..observe import Tracker

__all__ = ["DEFAULT_INTERVAL", "PoolMetricsPublisher", "current_publisher",
           "publish_pool_metrics"]

logger = logging.getLogger("pgwarden.metrics")

#: Seconds between two publishes: gauges in multiprocess mode are at most this old. One
#: publish of a few pools costs tens of microseconds (bench/pool_metrics.py).
DEFAULT_INTERVAL = 1.0

#: prometheus_client's multiprocess mode of each gauge (the others: ``livesum``).
_GAUGE_MODE = {HELD_MAX: "livemax"}


def check_multiprocess_mode() -> str:
    """The multiprocess directory, after checking that prometheus_client writes there.

    Raises:
        ConfigError: ``PROMETHEUS_MULTIPROC_DIR`` is not set or not a directory, or
            prometheus_client was imported before it was set (its metrics then live in memory).
    """
    path = multiprocess_dir()
    if path is None:
        raise ConfigError(
            "publish_pool_metrics needs prometheus_client's multiprocess mode: "
            "PROMETHEUS_MULTIPROC_DIR is not set (in a single process, use "
            "register_pool_metrics() or serve_pool_metrics())")
    if not os.path.isdir(path):
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={path!r} is not a directory")
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigError(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set, so its "
            "metrics live in this process's memory: set the variable in the environment the "
            "processes start with (prometheus_client reads it once, at import)")
    return path


class _Instruments:
    """prometheus_client's multiprocess metrics for :data:`POOL_METRICS` (one set per
    process: two metric objects of one name would overwrite each other's file entries)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.gauges: dict[MetricSpec, Any] = {
            spec: Gauge(spec.name, spec.help, spec.labels, registry=None,
                        multiprocess_mode=_GAUGE_MODE.get(spec, "livesum"))  # type: ignore[arg-type]
            for spec in (CONNECTIONS, *POOL_GAUGES)}
        self.counters: dict[MetricSpec, Any] = {
            spec: Counter(spec.name, spec.help, spec.labels, registry=None)
            for spec in POOL_COUNTERS}
        self.histograms: dict[MetricSpec, Any] = {
            spec: Histogram(spec.name, spec.help, spec.labels, registry=None,
                            buckets=SECONDS_BUCKETS)
            for spec in POOL_HISTOGRAMS}


_instruments: list[_Instruments] = []
_instruments_lock = threading.Lock()


def _get_instruments() -> _Instruments:
    with _instruments_lock:
        if not _instruments:
            _instruments.append(_Instruments())
        return _instruments[0]


@dataclass(slots=True)
class _Seen:
    """What was published for one tracker: its label set (fixed at first sight) and the
    counters and histogram counts already written."""

    labels: tuple[str, str]
    counters: dict[str, int] = field(default_factory=dict)
    hists: dict[MetricSpec, tuple[list[int], float]] = field(default_factory=dict)


def _hist_counts(st: PoolStats, spec: MetricSpec) -> tuple[list[int], float]:
    h = {"pgwarden_pool_wait_seconds": st.wait_seconds,
         "pgwarden_pool_use_seconds": st.use_seconds,
         "pgwarden_pool_connect_seconds": st.connect_seconds}[spec.name]
    counts = list(h.counts)
    if spec is WAIT:  # the checkouts served at once waited ~0 s (PoolStats.wait_buckets)
        counts[0] += max(0, st.requests_total - st.requests_waited_total)
    return counts, h.sum


class PoolMetricsPublisher:
    """Writes this process's pool metrics into prometheus_client's multiprocess files every
    ``interval`` seconds, from a daemon thread (see the module docstring). Made by
    :func:`publish_pool_metrics`, which keeps one per process.

    Args:
        interval: seconds between publishes (> 0; default :data:`DEFAULT_INTERVAL`).
        max_pools: pool names that keep their own ``pool`` label value (the rest:
            ``(other)``).

    Raises:
        ConfigError: a bad ``interval`` or ``max_pools``, or not in multiprocess mode
            (:func:`check_multiprocess_mode`).
    """

    def __init__(self, *, interval: float = DEFAULT_INTERVAL,
                 max_pools: int = DEFAULT_MAX_POOLS) -> None:
        if (isinstance(interval, bool) or not isinstance(interval, (int, float))
                or not 0 < interval <= 3600):
            raise ConfigError(f"interval must be > 0 and <= 3600 seconds (got {interval!r})")
        self.names = PoolNames(max_pools)
        self.path = check_multiprocess_mode()
        self.interval = float(interval)
        self.closed = False
        self._inst = _get_instruments()
        self._seen: weakref.WeakKeyDictionary[Tracker, _Seen] = weakref.WeakKeyDictionary()
        self._gauge_labels: set[tuple[str, str]] = set()
        self._hist_ok = True
        self._start()
        atexit.register(self.close)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgwarden-pool-metrics",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.publish()
            except Exception:
                logger.exception("publishing the pool metrics failed")
            if self._stop.wait(self.interval):
                return

    def publish(self) -> None:
        """Write every live tracker's metrics now (thread-safe)."""
        with self._lock:
            stats = []
            for tracker in trackers():
                st = read_stats(tracker)
                stats.append(st)
                seen = self._seen.get(tracker)
                if seen is None:
                    seen = self._seen[tracker] = _Seen((self.names(st.pool), st.library))
                self._counters(st, seen)
                self._histograms(st, seen)
            self._gauges(stats)

    def _counters(self, st: PoolStats, seen: _Seen) -> None:
        for spec, attr in POOL_COUNTERS.items():
            now = getattr(st, attr)
            last = seen.counters.get(attr, 0)
            delta = now - last if now >= last else now  # below the last: reset, from zero
            if delta:
                self._inst.counters[spec].labels(*seen.labels).inc(delta)
            seen.counters[attr] = now

    def _histograms(self, st: PoolStats, seen: _Seen) -> None:
        if not self._hist_ok:
            return
        for spec in POOL_HISTOGRAMS:
            counts, total = _hist_counts(st, spec)
            last_counts, last_total = seen.hists.get(spec, ([0] * len(counts), 0.0))
            if len(counts) != len(SECONDS_BUCKETS) + 1:
                continue  # another tracker's bounds: not prometheus_client's buckets
            if any(n < m for n, m in zip(counts, last_counts, strict=True)):
                last_counts, last_total = [0] * len(counts), 0.0  # reset: from zero
            deltas = [n - m for n, m in zip(counts, last_counts, strict=True)]
            if any(deltas):
                child = self._inst.histograms[spec].labels(*seen.labels)
                try:
                    buckets, sum_value = child._buckets, child._sum
                except AttributeError:
                    self._hist_ok = False
                    logger.error("this prometheus_client's Histogram has no _buckets/_sum: "
                                 "the pool histograms are not published in multiprocess "
                                 "mode (the gauges and counters are)")
                    return
                for value, d in zip(buckets, deltas, strict=True):
                    if d:
                        value.inc(d)
                sum_value.inc(max(0.0, total - last_total))
            seen.hists[spec] = (counts, total)

    def _gauges(self, stats: list[PoolStats]) -> None:
        merged = merge(stats, self.names)
        g = self._inst.gauges
        for key in self._gauge_labels - set(merged):  # pools gone: nothing open, no one waits
            g[CONNECTIONS].labels(*key, "idle").set(0)
            g[CONNECTIONS].labels(*key, "used").set(0)
            for spec in POOL_GAUGES:
                g[spec].labels(*key).set(0)
        for key, acc in merged.items():
            self._gauge_labels.add(key)
            g[CONNECTIONS].labels(*key, "idle").set(acc.idle)
            g[CONNECTIONS].labels(*key, "used").set(acc.used)
            values = {"pgwarden_pool_connections_max": acc.max_size,
                      "pgwarden_pool_connections_min": acc.min_size,
                      "pgwarden_pool_requests_waiting": acc.waiting,
                      "pgwarden_pool_leaks_current": acc.leaks_current,
                      "pgwarden_pool_holders_max_held_seconds": acc.held_max}
            for spec in POOL_GAUGES:
                value = values[spec.name]
                if value is not None:
                    g[spec].labels(*key).set(value)

    def _restart_in_child(self) -> None:
        """After ``fork()``: the thread did not survive it; start another. What the parent
        published stays the parent's (this process writes its own file)."""
        self._start()

    def close(self) -> None:
        """Stop the thread and publish once more. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.publish()
        except Exception:
            logger.debug("the last publish of the pool metrics failed", exc_info=True)
        atexit.unregister(self.close)


_current: list[PoolMetricsPublisher] = []
_current_lock = threading.Lock()


def current_publisher() -> PoolMetricsPublisher | None:
    """This process's running publisher, or ``None``."""
    with _current_lock:
        return _current[0] if _current and not _current[0].closed else None


def publish_pool_metrics(*, interval: float = DEFAULT_INTERVAL,
                         max_pools: int = DEFAULT_MAX_POOLS) -> PoolMetricsPublisher:
    """Publish this process's pool metrics for prometheus_client's multiprocess mode (see the
    module docstring): call it once in every worker (gunicorn: the ``post_fork`` hook, or at
    import with ``--preload``: the thread restarts in each forked worker). Idempotent: the
    running publisher is returned (the first call's configuration wins).

    Raises:
        ConfigError: not in multiprocess mode, or a bad ``interval`` / ``max_pools``.
    """
    with _current_lock:
        if _current and not _current[0].closed:
            return _current[0]
        publisher = PoolMetricsPublisher(interval=interval, max_pools=max_pools)
        _current[:] = [publisher]
        return publisher


def _after_fork_in_child() -> None:
    # a lock another thread held at fork() stays held in the child: start with new ones
    global _current_lock, _instruments_lock
    _current_lock = threading.Lock()
    _instruments_lock = threading.Lock()
    if _current and not _current[0].closed:
        _current[0]._restart_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
