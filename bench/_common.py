"""Shared by the server-side scale benchmarks (doctor_scale, guard_scale)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg

from pgwarden.embedded import EmbeddedPostgres

T = TypeVar("T")


def open_sessions(pg: EmbeddedPostgres, n: int, first: int = 0, *, threads: int = 8,
                  **params: Any) -> list[psycopg.Connection[Any]]:
    """Open ``n`` idle sessions named ``svc-0`` .. ``svc-6`` (7 applications)."""
    def one(i: int) -> psycopg.Connection[Any]:
        return psycopg.connect(pg.conninfo(application_name=f"svc-{i % 7}", **params),
                               autocommit=True)

    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(one, range(first, first + n)))


def median_ms(fn: Callable[[], T], runs: int) -> tuple[float, T]:
    """Median wall time of ``runs`` calls in ms (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result
