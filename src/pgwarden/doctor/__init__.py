"""The doctor: findings about who holds PostgreSQL's connection slots, with fixes.

``rules`` are pure (snapshot -> findings), ``run.examine`` does the I/O, ``report`` renders.
"""

from __future__ import annotations

from .report import Report, summary
from .rules import RULES, Finding, Thresholds, evaluate
from .run import examine

__all__ = ["RULES", "Finding", "Report", "Thresholds", "evaluate", "examine", "summary"]
