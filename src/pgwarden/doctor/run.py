"""The doctor's I/O shell: connect, take one or two snapshots, evaluate the rules."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..conninfo import Target, connect
from ..errors import ServerFullError
from ..sources import holders as holders_source
from ..sources import pgbouncer as bouncer_source
from ..sources import postgres
from ..sources.postgres.records import Snapshot
from .pgbouncer_rules import BouncerThresholds, evaluate_pgbouncer
from .report import Report, bouncer_summary, server_info, summary
from .rules import Finding, Sample, Thresholds, evaluate, server_full_finding

__all__ = ["examine", "examine_pgbouncer"]

#: Seconds between polls for new sessions while sampling.
_POLL = 0.02


def examine_pgbouncer(target: Target, pg: Snapshot | None = None,
                      thresholds: BouncerThresholds | None = None
                      ) -> tuple[list[Finding], dict[str, Any]]:
    """Look at a PgBouncer admin console (and join its server connections with ``pg``).

    Returns:
        The PgBouncer findings and the ``pgbouncer`` part of the report.

    Raises:
        ConnectError: the admin console cannot be reached or refuses the user.
        psycopg.Error: PgBouncer went away mid-run.
    """
    with bouncer_source.connect(target) as conn:
        snap = bouncer_source.take(conn)
    return evaluate_pgbouncer(snap, pg, thresholds), bouncer_summary(snap, pg)


def _unjoined(urls: Sequence[str], timeout: float) -> holders_source.HolderJoin | None:
    """The applications' holders with no snapshot to join them to (every one unmatched)."""
    if not urls:
        return None
    return holders_source.join((), holders_source.fetch_all(urls, timeout=timeout))


def examine(target: Target | None, *, thresholds: Thresholds | None = None,
            sample: float = 0.0, pgbouncer: Target | None = None,
            bouncer_thresholds: BouncerThresholds | None = None,
            holders: Sequence[str] = (),
            holders_timeout: float = holders_source.DEFAULT_TIMEOUT) -> Report:
    """Look at the server behind ``target`` and judge it.

    Args:
        target: where to connect (from :func:`pgwarden.conninfo.resolve`).
        thresholds: rule thresholds (defaults from :class:`Thresholds`).
        sample: seconds between two snapshots to measure the rate of new sessions; 0 takes one.
        pgbouncer: a PgBouncer admin console (database ``pgbouncer``) to judge as well; with
            ``target`` ``None`` only PgBouncer is judged.
        holders: applications' ``/holders`` URLs, fetched right after the snapshot and joined
            to its sessions by backend pid (a URL that fails is a warning in the report).
        holders_timeout: seconds to wait for them (one deadline for each whole answer, all
            fetched at once).

    Returns:
        A :class:`Report`. A server that refuses pgwarden with SQLSTATE 53300 gives a report
        with the ``server_full`` finding (critical) instead of an error.

    Without a snapshot (a full server, PgBouncer alone) the holders are reported unjoined.

    Raises:
        ConnectError: any other connection failure (the doctor cannot judge).
        psycopg.OperationalError: the server went away mid-run (the CLI's error boundary says
            so in one line).
    """
    if target is None:
        if pgbouncer is None:
            raise ValueError("examine needs a PostgreSQL target, a PgBouncer target or both")
        only, alone = examine_pgbouncer(pgbouncer, None, bouncer_thresholds)
        return Report(findings=tuple(sorted(only, key=lambda f: -f.rank)),
                      target=pgbouncer.where, pgbouncer=alone,
                      holders=_unjoined(holders, holders_timeout))
    try:
        conn = connect(target)
    except ServerFullError as exc:
        finding = server_full_finding(exc.server_said,
                                      reserve_full=exc.diagnosis_id == "too_many_clients")
        return Report(findings=(finding,), target=target.where,
                      holders=_unjoined(holders, holders_timeout))
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
        # the applications' holders are fetched while the snapshot is taken (same moment)
        pending = (holders_source.start_fetch_all(holders, timeout=holders_timeout)
                   if holders else None)
        snap = postgres.take(conn)
    joined = None
    if pending is not None:
        joined = holders_source.join(snap.client_backends, pending.result())
    findings = evaluate(snap, thresholds, sampled)
    part: dict[str, Any] = {}
    if pgbouncer is not None:
        found, part = examine_pgbouncer(pgbouncer, snap, bouncer_thresholds)
        findings = sorted([*findings, *found], key=lambda f: -f.rank)
    return Report(
        findings=tuple(findings),
        server=server_info(snap),
        summary=summary(snap, holders=joined),
        target=target.where,
        pgbouncer=part,
        holders=joined,
    )
