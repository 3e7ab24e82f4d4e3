"""The guard's counters as Prometheus metrics with real labels (``pgwarden guard
--metrics-listen``): each key of :meth:`pgwarden.guard.GuardMetrics.as_dict` is the metric
``pgwarden_guard_<key>`` (counters keep their ``_total``; the pass duration is a summary)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import Metric

from ..guard.metrics import GuardMetrics
from .registry import MetricSpec, Sample, families

__all__ = ["GUARD_METRICS", "GuardCollector", "guard_samples"]


def _counter(key: str, labels: tuple[str, ...], help_: str) -> MetricSpec:
    return MetricSpec(f"pgwarden_guard_{key.removesuffix('_total')}", "counter", labels, help_)


def _gauge(key: str, help_: str) -> MetricSpec:
    return MetricSpec(f"pgwarden_guard_{key}", "gauge", (), help_)


#: ``as_dict`` key -> metric. Labelled counters take their labels from the records.
_COUNTERS = {
    "passes_total": _counter("passes_total", (), "Guard passes completed"),
    "pass_errors_total": _counter("pass_errors_total", (),
                                  "Guard passes that failed (connection lost, query error)"),
    "errors_total": _counter("errors_total", (), "Pass errors plus actions that failed"),
    "candidates_total": _counter("candidates_total", (),
                                 "Sessions a rule matched (acted on or skipped)"),
    "actions_total": _counter("actions_total", ("rule", "application", "action", "outcome"),
                              "Every decision of the guard by rule, application, action "
                              "(terminate, cancel) and outcome (would_terminate, terminated, "
                              "skipped, failed, ...)"),
    "terminations_total": _counter("terminations_total", ("rule", "application"),
                                   "Backends the guard terminated"),
    "cancels_total": _counter("cancels_total", ("rule", "application"),
                              "Queries the guard cancelled"),
    "skipped_total": _counter("skipped_total", ("rule", "skip"),
                              "Sessions a rule matched but the guard left alone, by why "
                              "(protected, limit_per_pass, standby, gone, ...)"),
    "emergency_passes_total": _counter("emergency_passes_total", (),
                                       "Passes in which the emergency mode triggered"),
}
_GAUGES = {
    "pass_duration_seconds_last": _gauge("pass_duration_seconds_last",
                                         "Seconds the last pass took"),
    "snapshot_duration_seconds_last": _gauge("snapshot_duration_seconds_last",
                                             "Seconds the last snapshot took"),
    "policy_duration_seconds_last": _gauge("policy_duration_seconds_last",
                                           "Seconds the last policy decision took"),
    "usage": MetricSpec("pgwarden_guard_slots_usage_ratio", "gauge", (),
                        "Used over usable slots at the last snapshot"),
    "used_slots": MetricSpec("pgwarden_guard_slots_used", "gauge", (),
                             "Client backends at the last snapshot"),
    "usable_slots": MetricSpec("pgwarden_guard_slots_usable", "gauge", (),
                               "Usable slots at the last snapshot"),
    "leader": _gauge("leader", "1 if this guard held the acting lock at its last pass"),
    "last_pass_timestamp_seconds": _gauge("last_pass_timestamp_seconds",
                                          "Unix time of the last completed pass"),
}
PASS_DURATION = MetricSpec("pgwarden_guard_pass_duration_seconds", "summary", (),
                           "Seconds the guard's passes took (_count: passes, _sum: seconds)")

#: Every metric ``pgwarden guard --metrics-listen`` serves.
GUARD_METRICS: tuple[MetricSpec, ...] = (*_COUNTERS.values(), PASS_DURATION, *_GAUGES.values())


def guard_samples(data: dict[str, Any]) -> list[Sample]:
    """Samples for one :meth:`GuardMetrics.as_dict` reading (pure)."""
    out: list[Sample] = []
    for key, spec in _COUNTERS.items():
        value = data[key]
        if isinstance(value, list):
            out.extend(Sample(spec, tuple(str(r[name]) for name in spec.labels), r["value"])
                       for r in value)
        else:
            out.append(Sample(spec, (), value))
    out.append(Sample(PASS_DURATION, (), data["pass_duration_seconds_sum"],
                      count=data["passes_total"]))
    out.extend(Sample(spec, (), data[key]) for key, spec in _GAUGES.items())
    return out


class GuardCollector:
    """A ``prometheus_client`` collector reading one guard's :class:`GuardMetrics`."""

    def __init__(self, metrics: GuardMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        return iter(families([((), guard_samples(self.metrics.as_dict()))]))
