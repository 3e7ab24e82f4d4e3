"""The budget's I/O shell: read the server's slots and watch its sessions for peaks."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from ..sources import postgres
from ..sources.postgres.records import Settings
from .rules import Observation

__all__ = ["POLL_SECONDS", "observe"]

logger = logging.getLogger("pgwarden.budget")

#: Seconds between two looks while sampling (a look is one small query, ~1 ms).
POLL_SECONDS = 0.05


def observe(conn: psycopg.Connection[Any], *, sample: float) -> tuple[Settings, Observation]:
    """The server's settings, and the peak of client sessions per ``application_name`` over
    ``sample`` seconds (one look when ``sample`` is 0). Sessions of other roles hidden from a
    role without ``pg_monitor`` count by their ``application_name`` (visible to every role);
    their peak and what to do about them are in the observation.

    Raises:
        psycopg.Error: the server went away or refused a query.
    """
    settings = postgres.read_settings(conn)
    server, _ = postgres.read_server(conn)
    peaks: dict[str, int] = {}
    total_peak = hidden_peak = polls = 0
    started = time.monotonic()
    end = started + sample
    while True:
        counts = postgres.application_counts(conn)
        polls += 1
        for app, n in counts.sessions.items():
            if n > peaks.get(app, 0):
                peaks[app] = n
        total_peak = max(total_peak, sum(counts.sessions.values()))
        hidden_peak = max(hidden_peak, counts.hidden)
        now = time.monotonic()
        if now >= end:
            break
        time.sleep(min(POLL_SECONDS, end - now))
    logger.debug("budget sample: %d looks over %.1f s, peaks %s", polls, sample, peaks)
    return settings, Observation(peaks=peaks, total_peak=total_peak,
                                 seconds=round(time.monotonic() - started, 3), polls=polls,
                                 hidden_peak=hidden_peak,
                                 hint=postgres.hidden_hint(hidden_peak, server))
