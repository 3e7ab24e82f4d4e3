"""The tracker shared by pgwarden's pools and every instrumented pool: holders (who has a
connection checked out, from where), leak detection and "unleaked" lines, connections collected
while checked out, the exhaustion explanation, and counters and timings as typed data.

It receives events (connect, checkout, checkin, close, timeout) and knows nothing about any
library: :mod:`pgwarden.pool` and :mod:`pgwarden.integrations` feed it.
"""

from __future__ import annotations

from .holders import STACK_DEPTH, Holder, RawStack, capture_stack, format_location, holder_name
from .registry import register, trackers, unregister
from .tracker import (
    DEFAULT_LEAK_THRESHOLD,
    SECONDS_BUCKETS,
    Histogram,
    PoolStats,
    Sizes,
    TrackedConnection,
    Tracker,
)

__all__ = [
    "DEFAULT_LEAK_THRESHOLD",
    "SECONDS_BUCKETS",
    "STACK_DEPTH",
    "Histogram",
    "Holder",
    "PoolStats",
    "RawStack",
    "Sizes",
    "TrackedConnection",
    "Tracker",
    "capture_stack",
    "format_location",
    "holder_name",
    "register",
    "trackers",
    "unregister",
]
