"""The doctor's I/O shell: connect, take one or two snapshots, evaluate the rules."""

from __future__ import annotations

import time
from collections import Counter

from ..conninfo import Target, connect
from ..errors import ServerFullError
from ..sources import postgres
from .report import Report, server_info, summary
from .rules import Sample, Thresholds, evaluate, server_full_finding

__all__ = ["examine"]

#: Seconds between polls for new sessions while sampling.
_POLL = 0.02


def examine(target: Target, *, thresholds: Thresholds | None = None,
            sample: float = 0.0) -> Report:
    """Look at the server behind ``target`` and judge it.

    Args:
        target: where to connect (from :func:`pgwarden.conninfo.resolve`).
        thresholds: rule thresholds (defaults from :class:`Thresholds`).
        sample: seconds between two snapshots to measure the rate of new sessions; 0 takes one.

    Returns:
        A :class:`Report`. A server that refuses pgwarden with SQLSTATE 53300 gives a report
        with the ``server_full`` finding (critical) instead of an error.

    Raises:
        ConnectError: any other connection failure (the doctor cannot judge).
        psycopg.OperationalError: the server went away mid-run (the CLI's error boundary says
            so in one line).
    """
    try:
        conn = connect(target)
    except ServerFullError as exc:
        finding = server_full_finding(exc.server_said,
                                      reserve_full=exc.diagnosis_id == "too_many_clients")
        return Report(findings=(finding,), target=target.where)
    with conn:
        sampled = None
        if sample > 0:
            previous = postgres.take(conn)
            seen: dict[int, str] = {}
            end = time.monotonic() + sample
            while time.monotonic() < end:
                seen.update(postgres.new_sessions(conn, previous.taken_at))
                time.sleep(min(_POLL, max(0.0, end - time.monotonic())))
            sampled = Sample(previous, Counter(seen.values()))
        snap = postgres.take(conn)
    findings = evaluate(snap, thresholds, sampled)
    return Report(
        findings=tuple(findings),
        server=server_info(snap),
        summary=summary(snap),
        target=target.where,
    )
