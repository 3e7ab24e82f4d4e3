"""The guard's counters, with real labels.

:meth:`GuardMetrics.as_dict` returns these snake_case keys; each maps 1:1 to the Prometheus
metric ``pgwarden_guard_<key>`` that :class:`pgwarden.metrics.guard.GuardCollector` serves
(``pgwarden guard --metrics-listen``). Labelled counters are lists of records, one per label
set, each with its labels and ``value`` — never label values joined into one string:

==========================================  ==================================================
``passes_total``                            passes completed (a snapshot was taken)
``pass_errors_total``                       passes that failed (connection lost, query error)
``errors_total``                            pass errors plus actions that failed
``candidates_total``                        sessions a rule matched (acted on or skipped)
``actions_total``                           ``[{"rule", "application", "action", "outcome",
                                            "value"}]``: every decision by outcome
                                            (``would_terminate``, ``terminated``, ``skipped``,
                                            ``failed``, ...)
``terminations_total``                      ``[{"rule", "application", "value"}]``: backends
                                            terminated
``cancels_total``                           ``[{"rule", "application", "value"}]``: queries
                                            cancelled
``skipped_total``                           ``[{"rule", "skip", "value"}]`` (skip codes
                                            ``protected``, ``standby``, ...)
``emergency_passes_total``                  passes where the emergency mode triggered
``pass_duration_seconds_last``              seconds the last pass took (snapshot+policy+acts)
``pass_duration_seconds_sum``               sum over all passes (Prometheus: the summary
                                            ``pgwarden_guard_pass_duration_seconds`` with
                                            ``_sum`` and ``_count`` = passes_total)
``snapshot_duration_seconds_last``          seconds the last snapshot took
``policy_duration_seconds_last``            seconds the last policy decision took
``usage``                                   usage of usable slots at the last snapshot
``used_slots``, ``usable_slots``            at the last snapshot
``leader``                                  1 if this guard held the lock at its last pass
``last_pass_timestamp_seconds``             Unix time of the last completed pass
==========================================  ==================================================

The ``application`` label is bounded: the first ``max_applications`` (default 20) applications
the guard meets keep their name, later ones count as ``(other)``, so a counter never moves from
one label value to another.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

__all__ = ["OTHER_APPLICATION", "GuardMetrics"]

#: The application label of applications past ``max_applications``.
OTHER_APPLICATION = "(other)"


class GuardMetrics:
    """Counters and gauges of one guard (thread-safe; read with :meth:`as_dict`).

    Args:
        max_applications: applications that keep their own ``application`` label value
            (first come, first kept); later ones are ``(other)``.

    Raises:
        ValueError: ``max_applications`` below 1.
    """

    def __init__(self, *, max_applications: int = 20) -> None:
        if max_applications < 1:
            raise ValueError(f"max_applications must be >= 1 (got {max_applications})")
        self._lock = threading.Lock()
        self.max_applications = max_applications
        self._apps: set[str] = set()
        self.passes_total = 0
        self.pass_errors_total = 0
        self.action_errors_total = 0
        self.candidates_total = 0
        self.emergency_passes_total = 0
        self.actions_total: Counter[tuple[str, str, str, str]] = Counter()
        self.terminations_total: Counter[tuple[str, str]] = Counter()
        self.cancels_total: Counter[tuple[str, str]] = Counter()
        self.skipped_total: Counter[tuple[str, str]] = Counter()
        self.pass_duration_seconds_last = 0.0
        self.pass_duration_seconds_sum = 0.0
        self.snapshot_duration_seconds_last = 0.0
        self.policy_duration_seconds_last = 0.0
        self.usage = 0.0
        self.used_slots = 0
        self.usable_slots = 0
        self.leader = 0
        self.last_pass_timestamp_seconds = 0.0

    def record_pass(
        self,
        *,
        duration: float,
        snapshot_duration: float,
        policy_duration: float,
        usage: float,
        used_slots: int,
        usable_slots: int,
        candidates: int,
        emergency: bool,
        leader: bool,
    ) -> None:
        with self._lock:
            self.passes_total += 1
            self.candidates_total += candidates
            self.emergency_passes_total += int(emergency)
            self.pass_duration_seconds_last = duration
            self.pass_duration_seconds_sum += duration
            self.snapshot_duration_seconds_last = snapshot_duration
            self.policy_duration_seconds_last = policy_duration
            self.usage = usage
            self.used_slots = used_slots
            self.usable_slots = usable_slots
            self.leader = int(leader)
            self.last_pass_timestamp_seconds = time.time()

    def _app(self, application: str) -> str:
        app = application or "(no application_name)"
        if app in self._apps:
            return app
        if len(self._apps) < self.max_applications:
            self._apps.add(app)
            return app
        return OTHER_APPLICATION

    def record_outcome(
        self, *, rule: str, application: str, action: str, outcome: str, skip: str | None
    ) -> None:
        with self._lock:
            app = self._app(application)
            self.actions_total[(rule, app, action, outcome)] += 1
            if outcome == "terminated":
                self.terminations_total[(rule, app)] += 1
            elif outcome == "cancelled":
                self.cancels_total[(rule, app)] += 1
            elif outcome == "failed":
                self.action_errors_total += 1
            if skip is not None:
                self.skipped_total[(rule, skip)] += 1

    def record_error(self) -> None:
        with self._lock:
            self.pass_errors_total += 1

    @staticmethod
    def _records(counter: Counter[Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [{**dict(zip(names, key, strict=True)), "value": n}
                for key, n in sorted(counter.items())]

    def as_dict(self) -> dict[str, Any]:
        """The documented keys (see the module docstring), JSON-ready."""
        with self._lock:
            return {
                "passes_total": self.passes_total,
                "pass_errors_total": self.pass_errors_total,
                "errors_total": self.pass_errors_total + self.action_errors_total,
                "candidates_total": self.candidates_total,
                "actions_total": self._records(
                    self.actions_total, ("rule", "application", "action", "outcome")),
                "terminations_total": self._records(self.terminations_total,
                                                    ("rule", "application")),
                "cancels_total": self._records(self.cancels_total, ("rule", "application")),
                "skipped_total": self._records(self.skipped_total, ("rule", "skip")),
                "emergency_passes_total": self.emergency_passes_total,
                "pass_duration_seconds_last": self.pass_duration_seconds_last,
                "pass_duration_seconds_sum": self.pass_duration_seconds_sum,
                "snapshot_duration_seconds_last": self.snapshot_duration_seconds_last,
                "policy_duration_seconds_last": self.policy_duration_seconds_last,
                "usage": self.usage,
                "used_slots": self.used_slots,
                "usable_slots": self.usable_slots,
                "leader": self.leader,
                "last_pass_timestamp_seconds": self.last_pass_timestamp_seconds,
            }
