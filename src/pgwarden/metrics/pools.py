"""The pools' metrics: every live :class:`~pgwarden.observe.Tracker` of the process (pgwarden's
pools and every pool :func:`pgwarden.instrument` instruments) as ``pgwarden_pool_*`` metrics
with ``pool`` and ``library`` labels.

- :func:`pool_samples` is pure: :class:`~pgwarden.observe.PoolStats` records ->
  :class:`~pgwarden.metrics.registry.Sample` records (:data:`POOL_METRICS`, docs/exporter.md).
- :class:`PoolCollector` is the ``prometheus_client`` collector: at each scrape it reads each
  tracker's :meth:`~pgwarden.observe.Tracker.stats` under :attr:`Tracker.lock`. Nothing runs on
  the checkout path: the trackers count with plain integers whether or not anything is
  registered (``bench/pool_metrics.py`` measures it).
- :func:`register_pool_metrics` puts it on a registry of the application's choosing;
  :func:`serve_pool_metrics` serves it (and, when asked, the holders) on a loopback port.
- In prometheus_client's multiprocess mode (gunicorn...) a collector only sees the process that
  answers the scrape: :mod:`.multiprocess` publishes the same metrics through
  prometheus_client's own multiprocess metrics instead (:func:`publish_pool_metrics`), and
  :func:`serve_pool_metrics` serves every process's.

The mapping to OpenTelemetry's ``db.client.connection.*`` names is in docs/exporter.md.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric

from ..errors import ConfigError
from ..observe import Histogram, PoolStats, trackers
from .endpoint import Endpoint
from .holders import HOLDERS_PATH, holders_document
from .registry import OTHER, MetricSpec, Sample, families

if TYPE_CHECKING:
    from ..observe import Tracker
    from .endpoint import WsgiApp

__all__ = [
    "DEFAULT_MAX_POOLS",
    "POOL_METRICS",
    "PoolCollector",
    "PoolNames",
    "collect_stats",
    "multiprocess_dir",
    "pool_samples",
    "register_pool_metrics",
    "serve_pool_metrics",
]

logger = logging.getLogger("pgwarden.metrics")

#: Pools (names) that keep their own ``pool`` label value; later ones count as ``(other)``.
#: An application has a handful; the cap only matters for code that names a pool per request.
DEFAULT_MAX_POOLS = 20

_L = ("pool", "library")


def _counter(name: str, help_: str) -> MetricSpec:
    return MetricSpec(f"pgwarden_pool_{name}", "counter", _L, help_)


def _gauge(name: str, help_: str) -> MetricSpec:
    return MetricSpec(f"pgwarden_pool_{name}", "gauge", _L, help_)


def _histogram(name: str, help_: str) -> MetricSpec:
    return MetricSpec(f"pgwarden_pool_{name}", "histogram", _L, help_)


CONNECTIONS = MetricSpec("pgwarden_pool_connections", "gauge", (*_L, "state"),
                         "Open connections by state: idle (in the pool, ready) or used "
                         "(checked out)")
CONNECTIONS_MAX = _gauge("connections_max",
                         "Most connections the pool opens (max_size; SQLAlchemy: pool_size + "
                         "max_overflow); no series for a pool without a bound")
CONNECTIONS_MIN = _gauge("connections_min",
                         "Connections the pool keeps open (min_size); no series for a pool "
                         "without one")
REQUESTS_WAITING = _gauge("requests_waiting", "Callers waiting for a connection now")
LEAKS_CURRENT = _gauge("leaks_current", "Checkouts held past the leak threshold now")
HELD_MAX = _gauge("holders_max_held_seconds",
                  "Seconds the longest current checkout has been held (0: none)")
REQUESTS = _counter("requests", "Checkouts served")
REQUESTS_WAITED = _counter("requests_waited", "Checkouts served after waiting for a connection")
TIMEOUTS = _counter("timeouts", "Checkouts that gave up waiting for a connection (PoolTimeout)")
ERRORS = _counter("errors", "Checkouts that failed: timeouts, too many callers waiting, "
                            "pool closed")
OPENED = _counter("connections_opened", "Connections opened")
CONNECTION_ERRORS = _counter("connection_errors", "Connection attempts that failed")
CLOSED = _counter("connections_closed",
                  "Connections that left the pool (closed, expired, invalidated, lost)")
LEAKS = _counter("leaks", "Checkouts reported as leaks (held past leak_threshold; logged with "
                          "their checkout stack)")
LEAKS_RETURNED = _counter("leaks_returned", "Reported leaks that were returned later "
                                            "(unleaked)")
COLLECTED = _counter("collected", "Checked-out connections the application dropped without "
                                  "returning them (garbage-collected)")
WAIT = _histogram("wait_seconds", "Seconds checkouts waited for a connection (served at once: "
                                  "the first bucket; timeouts included)")
USE = _histogram("use_seconds", "Seconds connections were held, from checkout to return")
CONNECT = _histogram("connect_seconds", "Seconds opening a connection took")

#: Gauges that take one value per pool (``CONNECTIONS`` has a ``state`` label on top).
POOL_GAUGES: tuple[MetricSpec, ...] = (CONNECTIONS_MAX, CONNECTIONS_MIN, REQUESTS_WAITING,
                                       LEAKS_CURRENT, HELD_MAX)
#: Counter -> its :class:`~pgwarden.observe.PoolStats` field.
POOL_COUNTERS: dict[MetricSpec, str] = {
    REQUESTS: "requests_total",
    REQUESTS_WAITED: "requests_waited_total",
    TIMEOUTS: "timeouts_total",
    ERRORS: "errors_total",
    OPENED: "connections_opened_total",
    CONNECTION_ERRORS: "connection_errors_total",
    CLOSED: "connections_closed_total",
    LEAKS: "leaks_total",
    LEAKS_RETURNED: "leaks_returned_total",
    COLLECTED: "collected_total",
}
POOL_HISTOGRAMS: tuple[MetricSpec, ...] = (WAIT, USE, CONNECT)

#: Every pool metric, in the order of docs/exporter.md.
POOL_METRICS: tuple[MetricSpec, ...] = (CONNECTIONS, *POOL_GAUGES, *POOL_COUNTERS,
                                        *POOL_HISTOGRAMS)


class PoolNames:
    """The ``pool`` label's values: the first ``limit`` pool names met keep their name (for the
    life of the process, so series never move), later ones are :data:`OTHER`. Thread-safe.

    Raises:
        ConfigError: ``limit`` below 1.
    """

    __slots__ = ("_kept", "_lock", "limit")

    def __init__(self, limit: int = DEFAULT_MAX_POOLS) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"max_pools must be a whole number >= 1 (got {limit!r})")
        self.limit = limit
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> str:
        with self._lock:
            if name in self._kept:
                return name
            if len(self._kept) < self.limit:
                self._kept.add(name)
                return name
        return OTHER


@dataclass(slots=True)
class _Sum:
    """The stats of the trackers that share one ``(pool, library)`` label set, summed."""

    idle: int = 0
    used: int = 0
    min_size: int | None = None
    max_size: int | None = None
    waiting: int = 0
    leaks_current: int = 0
    held_max: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    wait: Histogram | None = None
    use: Histogram | None = None
    connect: Histogram | None = None


def _add_hist(into: Histogram | None, h: Histogram, extra_first: int = 0) -> Histogram:
    if into is None:
        into = Histogram(h.bounds)
    if into.bounds != h.bounds:  # trackers all use SECONDS_BUCKETS; keep the first's
        logger.debug("pool histograms with different bounds are not merged")
        return into
    for i, n in enumerate(h.counts):
        into.counts[i] += n
    into.counts[0] += extra_first
    into.sum += h.sum
    return into


def _opt_add(a: int | None, b: int | None) -> int | None:
    if b is None:
        return a
    return b if a is None else a + b


def merge(stats: Iterable[PoolStats], names: Callable[[str], str]
          ) -> dict[tuple[str, str], _Sum]:
    """Stats summed by ``(pool label, library)`` (two pools of one name, or pools past the
    cap, share a label set: their gauges, counters and histograms add up; the longest held
    checkout is the longest of all). The wait histogram counts the checkouts served at once
    in its first bucket (:meth:`PoolStats.wait_buckets`)."""
    out: dict[tuple[str, str], _Sum] = {}
    for s in stats:
        acc = out.setdefault((names(s.pool), s.library), _Sum())
        acc.idle += max(0, s.idle)
        acc.used += max(0, s.in_use)
        acc.min_size = _opt_add(acc.min_size, s.min_size)
        acc.max_size = _opt_add(acc.max_size, s.max_size)
        acc.waiting += max(0, s.requests_waiting)
        acc.leaks_current += s.leaks_current
        acc.held_max = max(acc.held_max, s.holders_max_held_seconds)
        for key in POOL_COUNTERS.values():
            acc.counters[key] = acc.counters.get(key, 0) + getattr(s, key)
        immediate = max(0, s.requests_total - s.requests_waited_total)
        acc.wait = _add_hist(acc.wait, s.wait_seconds, immediate)
        acc.use = _add_hist(acc.use, s.use_seconds)
        acc.connect = _add_hist(acc.connect, s.connect_seconds)
    return out


def _hist_sample(spec: MetricSpec, labels: tuple[str, ...], h: Histogram | None) -> Sample:
    h = h or Histogram()
    cumulative = tuple((bound, float(n)) for bound, n in h.cumulative())
    return Sample(spec, labels, h.sum, buckets=cumulative)


def pool_samples(stats: Iterable[PoolStats], names: Callable[[str], str] | None = None
                 ) -> list[Sample]:
    """The pools' samples for these stats (pure; no I/O).

    Args:
        stats: one :class:`~pgwarden.observe.PoolStats` per tracker.
        names: the ``pool`` label of a pool name (default: every name kept; a
            :class:`PoolNames` caps them).
    """
    merged = merge(stats, names or (lambda n: n))
    out: list[Sample] = []
    for key, acc in sorted(merged.items()):
        out.append(Sample(CONNECTIONS, (*key, "idle"), acc.idle))
        out.append(Sample(CONNECTIONS, (*key, "used"), acc.used))
        if acc.max_size is not None:
            out.append(Sample(CONNECTIONS_MAX, key, acc.max_size))
        if acc.min_size is not None:
            out.append(Sample(CONNECTIONS_MIN, key, acc.min_size))
        out.append(Sample(REQUESTS_WAITING, key, acc.waiting))
        out.append(Sample(LEAKS_CURRENT, key, acc.leaks_current))
        out.append(Sample(HELD_MAX, key, acc.held_max))
        out.extend(Sample(spec, key, acc.counters[attr]) for spec, attr in POOL_COUNTERS.items())
        out.append(_hist_sample(WAIT, key, acc.wait))
        out.append(_hist_sample(USE, key, acc.use))
        out.append(_hist_sample(CONNECT, key, acc.connect))
    return out


def read_stats(tracker: Tracker) -> PoolStats:
    """One tracker's stats, read under :attr:`Tracker.lock` (the lock its pool changes it
    under), so that no counter is read half updated."""
    with tracker.lock:
        return tracker.stats()


def collect_stats() -> list[PoolStats]:
    """The stats of every live tracker of this process (:func:`pgwarden.observe.trackers`)."""
    return [read_stats(t) for t in trackers()]


class PoolCollector:
    """A ``prometheus_client`` collector of every pool of this process (see the module
    docstring). Reads the trackers at each scrape; adds nothing to a checkout.

    Args:
        max_pools: pool names that keep their own ``pool`` label value (first met first;
            later ones count as ``(other)``), default :data:`DEFAULT_MAX_POOLS`.

    Raises:
        ConfigError: ``max_pools`` below 1.
    """

    def __init__(self, *, max_pools: int = DEFAULT_MAX_POOLS) -> None:
        self.names = PoolNames(max_pools)

    def describe(self) -> Iterable[Metric]:
        # the names, without reading any tracker (a registry checks them for duplicates)
        return families([((), [_empty(spec) for spec in POOL_METRICS])])

    def collect(self) -> Iterator[Metric]:
        return iter(families([((), pool_samples(collect_stats(), self.names))]))


def _empty(spec: MetricSpec) -> Sample:
    labels = tuple("" for _ in spec.labels)
    return _hist_sample(spec, labels, None) if spec.kind == "histogram" else Sample(
        spec, labels, 0.0)


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, or the
    deprecated lower-case name), or ``None`` in single-process mode."""
    return (os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            or os.environ.get("prometheus_multiproc_dir") or None)  # noqa: SIM112 - old name


_registered: weakref.WeakKeyDictionary[CollectorRegistry, PoolCollector] = (
    weakref.WeakKeyDictionary())
_registered_lock = threading.Lock()


def register_pool_metrics(registry: CollectorRegistry | None = None, *,
                          max_pools: int = DEFAULT_MAX_POOLS) -> PoolCollector:
    """Put the pools' collector on ``registry`` (default prometheus_client's ``REGISTRY``,
    which ``start_http_server`` serves). Idempotent per registry: a second call returns the
    collector already there (the first call's ``max_pools`` wins).

    Raises:
        ConfigError: ``max_pools`` below 1; or prometheus_client's multiprocess mode is on
            (``PROMETHEUS_MULTIPROC_DIR`` is set), where a collector would report only the
            process that answers the scrape: use :func:`publish_pool_metrics` in every
            worker instead (docs/exporter.md, "Multiprocess mode").
        ValueError: ``registry`` already has a collector with one of the same metric names.
    """
    if multiprocess_dir() is not None:
        raise ConfigError(
            "PROMETHEUS_MULTIPROC_DIR is set (prometheus_client's multiprocess mode): a "
            "collector would report only the process that answers the scrape; call "
            "pgwarden.metrics.publish_pool_metrics() in every worker and serve a "
            "MultiProcessCollector (docs/exporter.md, \"Multiprocess mode\")")
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    with _registered_lock:
        found = _registered.get(registry)
        if found is not None:
            return found
        collector = PoolCollector(max_pools=max_pools)
        registry.register(collector)
        _registered[registry] = collector
        return collector


def serve_pool_metrics(port: int, *, addr: str = "127.0.0.1",
                       registry: CollectorRegistry | None = None, holders: bool = False,
                       max_pools: int = DEFAULT_MAX_POOLS) -> Endpoint:
    """Serve the pools' metrics on ``http://ADDR:PORT/metrics`` from a daemon thread (the
    ``start_http_server`` of the pools). Off unless called; loopback unless ``addr`` says
    otherwise (another address logs a warning).

    Args:
        port: 0 to 65535 (0: a free port; the returned endpoint's ``.port`` says which).
        addr: where to bind.
        registry: what to serve. Default: a registry of the pools' metrics alone. Pass
            prometheus_client's ``REGISTRY`` to serve the application's own metrics too (the
            pools' collector is registered on it).
        holders: also serve :func:`~pgwarden.metrics.holders.holders_document` on
            ``/holders`` (code locations of the checked-out connections; off by default).
        max_pools: see :class:`PoolCollector`.

    In prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) it serves
    every process's metrics (a ``MultiProcessCollector`` on a new registry, unless
    ``registry`` is given: then that registry, which should hold one), and starts
    :func:`publish_pool_metrics` in this process; every other worker must call
    :func:`publish_pool_metrics` itself.

    Returns:
        The :class:`~pgwarden.metrics.endpoint.Endpoint` (``.port``, ``.url()``, ``.close()``;
        a context manager).

    Raises:
        ConfigError: a bad port or ``max_pools``.
        ListenError: the address cannot be bound (port in use, no such address).
    """
    PoolNames(max_pools)  # ConfigError before anything is bound
    multiprocess = multiprocess_dir() is not None
    if registry is None:
        registry = CollectorRegistry()
        if multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    routes: dict[str, WsgiApp] = {"/metrics": make_wsgi_app(registry)}
    if holders:
        from .endpoint import json_app

        routes[HOLDERS_PATH] = json_app(holders_document)
    # bound first: an address that cannot be bound leaves no collector or publisher behind
    endpoint = Endpoint(routes, port=port, addr=addr,
                        what="pool metrics and holders" if holders else "pool metrics")
    try:
        if multiprocess:
            from .multiprocess import publish_pool_metrics

            publish_pool_metrics(max_pools=max_pools)
        else:
            register_pool_metrics(registry, max_pools=max_pools)
    except BaseException:
        endpoint.close()
        raise
    return endpoint

