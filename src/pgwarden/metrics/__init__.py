"""Prometheus metrics: one set of conventions (:mod:`.registry`: names, labels, caps, the HTTP
endpoint) and one ``prometheus_client`` collector per source — the server's
(:mod:`.server`, ``pgwarden exporter``), PgBouncer's (:mod:`.pgbouncer`, ``pgwarden exporter
--pgbouncer``), the guard's (:mod:`.guard`,
``pgwarden guard --metrics-listen``) and the pools' (:mod:`.pools`: every pool of the
application's process; :mod:`.multiprocess` for prometheus_client's multiprocess mode) — and
the application's holders as JSON (:mod:`.holders`). Every metric is documented in
docs/exporter.md.

The metrics need the ``metrics`` extra (``pip install "pgwarden[metrics]"``: prometheus_client);
the holders endpoint (:func:`serve_holders`) does not. Names are imported on first use, so
``import pgwarden.metrics`` works without prometheus_client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .guard import GUARD_METRICS, GuardCollector
    from .holders import holders_document, serve_holders
    from .listen import parse_listen
    from .multiprocess import PoolMetricsPublisher, publish_pool_metrics
    from .pgbouncer import PGBOUNCER_METRICS, BouncerScraper, bouncer_samples
    from .pools import (
        POOL_METRICS,
        PoolCollector,
        pool_samples,
        register_pool_metrics,
        serve_pool_metrics,
    )
    from .registry import OTHER, LabelCap, MetricSpec, MetricsServer, Sample, serve
    from .server import SERVER_METRICS, Caps, ServerCollector, TargetScraper, server_samples

__all__ = [
    "GUARD_METRICS",
    "OTHER",
    "PGBOUNCER_METRICS",
    "POOL_METRICS",
    "SERVER_METRICS",
    "BouncerScraper",
    "Caps",
    "Endpoint",
    "GuardCollector",
    "LabelCap",
    "MetricSpec",
    "MetricsServer",
    "PoolCollector",
    "PoolMetricsPublisher",
    "Sample",
    "ServerCollector",
    "TargetScraper",
    "bouncer_samples",
    "holders_document",
    "parse_listen",
    "pool_samples",
    "publish_pool_metrics",
    "register_pool_metrics",
    "serve",
    "serve_holders",
    "serve_pool_metrics",
    "server_samples",
]

#: name -> the submodule that defines it
_WHERE = {
    "Endpoint": "endpoint",
    "GUARD_METRICS": "guard", "GuardCollector": "guard",
    "holders_document": "holders", "serve_holders": "holders",
    "parse_listen": "listen",
    "PGBOUNCER_METRICS": "pgbouncer", "BouncerScraper": "pgbouncer",
    "bouncer_samples": "pgbouncer",
    "PoolMetricsPublisher": "multiprocess", "publish_pool_metrics": "multiprocess",
    "POOL_METRICS": "pools", "PoolCollector": "pools", "pool_samples": "pools",
    "register_pool_metrics": "pools", "serve_pool_metrics": "pools",
    "OTHER": "registry", "LabelCap": "registry", "MetricSpec": "registry",
    "MetricsServer": "registry", "Sample": "registry", "serve": "registry",
    "SERVER_METRICS": "server", "Caps": "server", "ServerCollector": "server",
    "TargetScraper": "server", "server_samples": "server",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
