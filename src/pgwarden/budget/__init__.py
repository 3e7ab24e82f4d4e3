"""The connection budget: do all pools of all services fit the server's usable slots?

``config`` reads the budget file (docs/budget.md), ``model`` holds the records and each pool
library's worst-case rule, ``rules`` is the pure arithmetic (verdict, sizes that fit, the
PgBouncer sizing), ``discover`` watches a live server for peaks, ``report`` renders.
"""

from __future__ import annotations

from .config import budget_from_dict, load_budget
from .model import KINDS, Budget, Pool, ServerSlots, Service, worst_case
from .rules import (
    BudgetReport,
    Observation,
    PgBouncerSizing,
    PoolSuggestion,
    ServiceLine,
    evaluate,
    pgbouncer_sizing,
    slots_for,
)

__all__ = [
    "KINDS",
    "Budget",
    "BudgetReport",
    "Observation",
    "PgBouncerSizing",
    "Pool",
    "PoolSuggestion",
    "ServerSlots",
    "Service",
    "ServiceLine",
    "budget_from_dict",
    "evaluate",
    "load_budget",
    "pgbouncer_sizing",
    "slots_for",
    "worst_case",
]
