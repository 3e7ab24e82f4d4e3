"""The conventions every pgwarden metric follows, and the one way to serve them over HTTP.

- **Names**: ``pgwarden_<area>_<what>`` in base units (``_seconds``, ``_ratio``), counters end in
  ``_total`` (Prometheus practice, https://prometheus.io/docs/practices/naming/). Each metric is
  declared once as a :class:`MetricSpec`; a collector emits :class:`Sample` records for it and
  :func:`families` turns them into ``prometheus_client`` metric families.
- **Labels are labels**, never joined into strings; label sets whose values come from clients
  (application, user, database) are bounded by :class:`LabelCap`: the ``N`` most common values
  keep their own label value, the rest are summed into :data:`OTHER`.
- **Collectors** are ``prometheus_client`` custom collectors (a ``collect()`` method) registered
  on a :class:`prometheus_client.CollectorRegistry`: the server's (:mod:`.server`), the guard's
  (:mod:`.guard`), and later the pools' — each is one more collector on the same registry.
- **Endpoints** are off unless asked for, and bind to loopback unless an address is given
  explicitly: :func:`parse_listen` and :func:`serve`.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.utils import floatToGoString

from .listen import (
    DEFAULT_LISTEN_HOST,
    hostport,
    is_loopback,
    listen_error,
    parse_listen,
    warn_if_exposed,
)

__all__ = [
    "DEFAULT_LISTEN_HOST",
    "OTHER",
    "LabelCap",
    "MetricSpec",
    "MetricsServer",
    "Sample",
    "families",
    "is_loopback",
    "parse_listen",
    "serve",
]

logger = logging.getLogger("pgwarden.metrics")

PREFIX = "pgwarden_"
#: The label value that stands for every value past a :class:`LabelCap`'s top N.
OTHER = "(other)"

Kind = Literal["gauge", "counter", "info", "summary", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric as documented (docs/exporter.md lists every spec).

    Attributes:
        name: the full name; for a counter without its ``_total`` suffix, which
            ``prometheus_client`` appends (``pgwarden_sessions_established`` is exposed as
            ``pgwarden_sessions_established_total``).
        kind: ``gauge``, ``counter``, ``info``, ``summary`` (``_count`` and ``_sum`` only) or
            ``histogram`` (``_bucket``, ``_count``, ``_sum``).
        labels: label names, in order (a ``target`` label is prepended when a collector serves
            several targets).
        help: what it means, with its unit.
    """

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str

    @property
    def exposed_name(self) -> str:
        """The name on ``/metrics`` (counters with ``_total``, info with ``_info``)."""
        if self.kind == "counter":
            return self.name + "_total"
        if self.kind == "info":
            return self.name + "_info"
        return self.name


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one metric: ``labels`` are values in the order of the spec's labels
    (for an ``info`` metric, ``info`` holds the key/value pairs; for a ``summary``, ``value`` is
    the sum and ``count`` the count; for a ``histogram``, ``value`` is the sum and ``buckets``
    the cumulative ``(upper bound, count)`` pairs, the last bound ``inf``)."""

    spec: MetricSpec
    labels: tuple[str, ...]
    value: float
    info: tuple[tuple[str, str], ...] = ()
    count: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()


class LabelCap:
    """Bounds a label's values: the ``top`` most common keep their name, the rest become
    :data:`OTHER`.

    Args:
        counts: how often each value occurs (e.g. sessions per application).
        top: how many values keep their own label value (>= 0).

    Ties are broken by name so the choice is stable between scrapes.
    """

    __slots__ = ("_kept",)

    def __init__(self, counts: Mapping[str, int], top: int) -> None:
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self._kept = frozenset(value for value, _ in ranked[:top])

    def __call__(self, value: str) -> str:
        return value if value in self._kept else OTHER

    @classmethod
    def of(cls, values: Iterable[str], top: int) -> LabelCap:
        return cls(Counter(values), top)


@functools.lru_cache(maxsize=256)
def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (``+Inf``, ``0.005``)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def families(groups: Iterable[tuple[Sequence[str], Iterable[Sample]]], *,
             extra_labels: Sequence[str] = ()) -> list[Metric]:
    """``prometheus_client`` metric families for groups of samples, one family per metric
    (merged across groups), in order of first appearance.

    Args:
        groups: ``(extra label values, samples)`` pairs, e.g. one per target.
        extra_labels: label names put before every sample's own labels (``("target",)``);
            each group gives their values.
    """
    out: dict[str, Metric] = {}
    for extra_values, samples in groups:
        for s in samples:
            fam = out.get(s.spec.name)
            if fam is None:
                labels = [*extra_labels, *s.spec.labels]
                if s.spec.kind == "counter":
                    fam = CounterMetricFamily(s.spec.name, s.spec.help, labels=labels)
                elif s.spec.kind == "info":
                    fam = InfoMetricFamily(s.spec.name, s.spec.help, labels=labels)
                elif s.spec.kind == "summary":
                    fam = SummaryMetricFamily(s.spec.name, s.spec.help, labels=labels)
                elif s.spec.kind == "histogram":
                    fam = HistogramMetricFamily(s.spec.name, s.spec.help, labels=labels)
                else:
                    fam = GaugeMetricFamily(s.spec.name, s.spec.help, labels=labels)
                out[s.spec.name] = fam
            values = [*extra_values, *s.labels]
            if isinstance(fam, InfoMetricFamily):
                fam.add_metric(values, dict(s.info))
            elif isinstance(fam, SummaryMetricFamily):
                fam.add_metric(values, count_value=int(s.count), sum_value=s.value)
            elif isinstance(fam, HistogramMetricFamily):
                fam.add_metric(values, [(_go_float(b), n) for b, n in s.buckets],
                               sum_value=s.value)
            else:
                fam.add_metric(values, s.value)  # type: ignore[attr-defined]
    return list(out.values())


class MetricsServer:
    """``prometheus_client``'s HTTP server for one registry, bound to one address; serves
    ``/metrics`` from a daemon thread until :meth:`close`."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except (OSError, UnicodeError, ValueError) as exc:  # ValueError: a host that does
            raise listen_error(exc, host, port) from None  # not resolve
        self.host = host
        self.port = int(self._httpd.server_address[1])
        warn_if_exposed(host, self.port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics``."""
        return f"http://{hostport(self.host, self.port)}/metrics"

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(registry: CollectorRegistry, listen: str | tuple[str, int]) -> MetricsServer:
    """Serve ``registry`` on ``listen`` (``HOST:PORT`` text or a ``(host, port)`` pair).

    Raises:
        ConfigError: ``listen`` is malformed.
        ListenError: the address cannot be bound (port in use, no such address).
    """
    host, port = parse_listen(listen) if isinstance(listen, str) else listen
    return MetricsServer(registry, host, port)


def info_sample(spec: MetricSpec, labels: tuple[str, ...], info: Mapping[str, Any]) -> Sample:
    """A :class:`Sample` of an ``info`` metric."""
    return Sample(spec, labels, 1.0, tuple((k, str(v)) for k, v in info.items()))
