"""The guard's counters, as plain data for a later Prometheus export.

:meth:`GuardMetrics.as_dict` returns these snake_case keys (the Prometheus name is
``pgwarden_guard_<key>``; labelled counters are dicts keyed by label values):

==========================================  ==================================================
``passes_total``                            passes completed (a snapshot was taken)
``pass_errors_total``                       passes that failed (connection lost, query error)
``errors_total``                            pass errors plus actions that failed
``candidates_total``                        sessions a rule matched (acted on or skipped)
``actions_total``                           ``{"rule/application/action/outcome": n}``: every
                                            decision by outcome (``would_terminate``,
                                            ``terminated``, ``skipped``, ``failed``, ...)
``terminations_total``                      ``{"rule/application": n}``: backends terminated
``cancels_total``                           ``{"rule/application": n}``: queries cancelled
``skipped_total``                           ``{"skip code": n}`` (``protected``, ``standby``...)
``emergency_passes_total``                  passes where the emergency mode triggered
``pass_duration_seconds_last``              seconds the last pass took (snapshot+policy+acts)
``pass_duration_seconds_sum``               sum over all passes (with passes_total: the mean)
``snapshot_duration_seconds_last``          seconds the last snapshot took
``policy_duration_seconds_last``            seconds the last policy decision took
``usage``                                   usage of usable slots at the last snapshot
``used_slots``, ``usable_slots``            at the last snapshot
``leader``                                  1 if this guard held the lock at its last pass
``last_pass_timestamp_seconds``             Unix time of the last completed pass
==========================================  ==================================================
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

__all__ = ["GuardMetrics"]


class GuardMetrics:
    """Counters and gauges of one guard (thread-safe; read with :meth:`as_dict`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.passes_total = 0
        self.pass_errors_total = 0
        self.action_errors_total = 0
        self.candidates_total = 0
        self.emergency_passes_total = 0
        self.actions_total: Counter[str] = Counter()
        self.terminations_total: Counter[str] = Counter()
        self.cancels_total: Counter[str] = Counter()
        self.skipped_total: Counter[str] = Counter()
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

    def record_outcome(
        self, *, rule: str, application: str, action: str, outcome: str, skip: str | None
    ) -> None:
        app = application or "(no application_name)"
        with self._lock:
            self.actions_total[f"{rule}/{app}/{action}/{outcome}"] += 1
            if outcome == "terminated":
                self.terminations_total[f"{rule}/{app}"] += 1
            elif outcome == "cancelled":
                self.cancels_total[f"{rule}/{app}"] += 1
            elif outcome == "failed":
                self.action_errors_total += 1
            if skip is not None:
                self.skipped_total[skip] += 1

    def record_error(self) -> None:
        with self._lock:
            self.pass_errors_total += 1

    def as_dict(self) -> dict[str, Any]:
        """The documented keys (see the module docstring), JSON-ready."""
        with self._lock:
            return {
                "passes_total": self.passes_total,
                "pass_errors_total": self.pass_errors_total,
                "errors_total": self.pass_errors_total + self.action_errors_total,
                "candidates_total": self.candidates_total,
                "actions_total": dict(self.actions_total),
                "terminations_total": dict(self.terminations_total),
                "cancels_total": dict(self.cancels_total),
                "skipped_total": dict(self.skipped_total),
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
