"""Prometheus metrics: one set of conventions (:mod:`.registry`: names, labels, caps, the HTTP
endpoint) and one ``prometheus_client`` collector per source — the server's
(:mod:`.server`, ``pgwarden exporter``) and the guard's (:mod:`.guard`,
``pgwarden guard --metrics-listen``). The pools' metrics are meant to be one more collector on
the same registry. Every metric is documented in docs/exporter.md.

Needs the ``metrics`` extra (``pip install "pgwarden[metrics]"``: prometheus_client).
"""

from __future__ import annotations

from .guard import GUARD_METRICS, GuardCollector
from .registry import OTHER, LabelCap, MetricSpec, MetricsServer, Sample, parse_listen, serve
from .server import SERVER_METRICS, Caps, ServerCollector, TargetScraper, server_samples

__all__ = [
    "GUARD_METRICS",
    "OTHER",
    "SERVER_METRICS",
    "Caps",
    "GuardCollector",
    "LabelCap",
    "MetricSpec",
    "MetricsServer",
    "Sample",
    "ServerCollector",
    "TargetScraper",
    "parse_listen",
    "serve",
    "server_samples",
]
