"""pgwarden guard: a watchdog that frees idle sessions by policy and never touches what it
must not.

- :mod:`.policy` (pure): :class:`Policy` + one snapshot -> :class:`Plan` of :class:`Action` /
  :class:`Skip` records; the safety invariants live in :func:`protected`.
- :mod:`.config`: TOML / dict / keyword options -> :class:`Policy`.
- :mod:`.runner`: :class:`Guard` runs one pass (snapshot, policy, leader lock, race-safe acts,
  audit, metrics) -> :class:`PassResult`.
- :mod:`.daemon`: :class:`Daemon`, the loop (interval, backoff reconnect, SIGHUP, SIGTERM).
- :mod:`.audit`: JSON-lines audit log; :mod:`.metrics`: counters.
- the ``pgwarden guard`` click command lives in :mod:`pgwarden.cli.guard`.

See docs/guard.md.
"""

from __future__ import annotations

from .audit import AuditLog, AuditRecord
from .config import load_policy, make_policy, parse_duration, parse_usage, policy_from_dict
from .daemon import Daemon
from .metrics import GuardMetrics
from .policy import (
    DEFAULT_PROTECTED_APPLICATIONS,
    DEFAULT_RULES,
    EMERGENCY,
    Action,
    Emergency,
    Limits,
    Plan,
    Policy,
    Protection,
    Rule,
    Scope,
    Skip,
    decide,
    protected,
)
from .runner import LOCK_KEY, Guard, Outcome, PassResult

__all__ = [
    "DEFAULT_PROTECTED_APPLICATIONS",
    "DEFAULT_RULES",
    "EMERGENCY",
    "LOCK_KEY",
    "Action",
    "AuditLog",
    "AuditRecord",
    "Daemon",
    "Emergency",
    "Guard",
    "GuardMetrics",
    "Limits",
    "Outcome",
    "PassResult",
    "Plan",
    "Policy",
    "Protection",
    "Rule",
    "Scope",
    "Skip",
    "decide",
    "load_policy",
    "make_policy",
    "parse_duration",
    "parse_usage",
    "policy_from_dict",
    "protected",
]
