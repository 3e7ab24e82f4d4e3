"""Where one exporter scrape's time goes, at 1000 sessions: the complete snapshot (one row per
session, what the exporter took before) next to the summary snapshot (counts on the server,
records for the notable sessions and briefs for idle, young and unnamed ones: what it takes
now), phase by phase, in one run against one embedded PostgreSQL (loopback only).

Phases (medians of ``--runs``, ms):

- ``server``: the activity query run by libpq alone, its rows neither converted nor kept (the
  server's work and the transfer); ``count``: ``count(*)`` over ``pg_stat_get_activity(NULL)``,
  the floor any reader of ``pg_stat_activity`` pays;
- ``convert``: the same query through psycopg into plain tuples (binary and text protocol);
- ``rows``: the same into :class:`~pgwarden.sources.postgres.Session` records (what ``take``
  does; psycopg's ``kwargs_row`` next to it);
- ``summary_query``: ``get_activity_summary`` through psycopg into plain tuples (the summary's
  activity query);
- ``snapshot``: the whole ``take`` / ``take_summary`` (server facts, settings, activity, session
  counter);
- ``rules``: ``doctor.rules.evaluate``; ``samples``: ``metrics.server.server_samples``;
  ``text``: prometheus_client's text output of those samples;
- ``scrape``: all of it, as the exporter's collector does it (without HTTP).

Usage: python bench/exporter_profile.py [--sessions 1000] [--runs 30]
                                        [--unnamed | --idle-named | --in-transaction]
(``--unnamed``: sessions without application_name, which the summary keeps in brief;
``--idle-named``: the doctor's thresholds with ``idle_after`` 1 s, so that idle_hoarding names
every idle session, kept in brief too; ``--in-transaction``: every session idle in a transaction,
with ``idle_in_transaction_after`` 1 s: a record for every one, the summary's worst case).
Writes bench/results/exporter_profile[_unnamed|_idle_named|_in_transaction].json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from psycopg.rows import kwargs_row, tuple_row

from pgwarden.doctor.rules import Thresholds, evaluate
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.metrics.registry import Sample, families
from pgwarden.metrics.server import server_samples
from pgwarden.sources import postgres
from pgwarden.sources.postgres.queries import query
from pgwarden.sources.postgres.records import Session
from pgwarden.sources.postgres.snapshot import _session_row


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


class _Fixed:
    """A collector serving fixed samples (prometheus_client's text output alone)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def collect(self) -> list[Metric]:
        return families([((), self.samples)])

    def describe(self) -> list[Metric]:
        return []


def text_ms(samples: list[Sample], runs: int) -> float:
    registry = CollectorRegistry()
    registry.register(_Fixed(samples))
    return median_ms(lambda: generate_latest(registry), runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=30)
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--unnamed", action="store_true")
    kind.add_argument("--idle-named", action="store_true")
    kind.add_argument("--in-transaction", action="store_true")
    args = ap.parse_args()
    n, runs = args.sessions, args.runs
    mode = ("unnamed" if args.unnamed else "idle_named" if args.idle_named
            else "in_transaction" if args.in_transaction else "")
    t = Thresholds(idle_after=1.0) if args.idle_named else (
        Thresholds(idle_in_transaction_after=1.0) if args.in_transaction else Thresholds())
    notable = t.notable()
    out: dict[str, Any] = {"sessions": n, "runs": runs, "mode": mode or "named idle sessions"}
    with EmbeddedPostgres(max_connections=n + 20) as pg:
        pg.execute("create role app login password 'app'")

        def one(i: int) -> psycopg.Connection[Any]:
            name = "" if args.unnamed else f"svc-{i % 7}"
            conn = psycopg.connect(pg.conninfo(application_name=name, user="app",
                                               password="app"), autocommit=True)
            if args.in_transaction:
                conn.execute("begin")
                conn.execute("select 1")
            return conn

        with ThreadPoolExecutor(4) as ex:
            held = list(ex.map(one, range(n)))
        time.sleep(t.churn_young_age + 0.5)  # none young; all idle (in a transaction) past 1 s
        try:
            with psycopg.connect(pg.dsn, autocommit=True,
                                 application_name="pgwarden-exporter") as conn:
                version = conn.info.server_version
                activity = query("get_activity", version)
                params = {"query_chars": 0}
                raw = activity.replace(b"%(query_chars)s", b"0")

                def libpq(sql: bytes, fmt: int) -> None:
                    conn.pgconn.exec_params(sql, [], result_format=fmt)

                def fetch(row_factory: Any, binary: bool) -> None:
                    cur = conn.cursor(row_factory=row_factory, binary=binary)
                    cur.execute(activity, params).fetchall()

                complete = postgres.take(conn, query_chars=0)
                summary = postgres.take_summary(conn, notable, query_chars=0)
                f_complete, f_summary = evaluate(complete, t), evaluate(summary, t)
                s_complete = server_samples(complete, f_complete)
                s_summary = server_samples(summary, f_summary)
                out["complete"] = {
                    "sessions_fetched": len(complete.sessions),
                    "count": median_ms(lambda: libpq(
                        b"select count(*) from pg_stat_get_activity(NULL)", 1), runs),
                    "server_binary": median_ms(lambda: libpq(raw, 1), runs),
                    "server_text": median_ms(lambda: libpq(raw, 0), runs),
                    "convert_binary": median_ms(lambda: fetch(tuple_row, True), runs),
                    "convert_text": median_ms(lambda: fetch(tuple_row, False), runs),
                    "rows": median_ms(lambda: fetch(_session_row, True), runs),
                    "rows_kwargs_row": median_ms(lambda: fetch(kwargs_row(Session), True), runs),
                    "snapshot": median_ms(lambda: postgres.take(conn, query_chars=0), runs),
                    "rules": median_ms(lambda: evaluate(complete, t), runs),
                    "samples": median_ms(lambda: server_samples(complete, f_complete), runs),
                    "text": text_ms(s_complete, runs),
                }
                out["complete"]["scrape"] = median_ms(lambda: generate_latest_of(
                    lambda: postgres.take(conn, query_chars=0), t), runs)
                out["summary"] = {
                    "sessions_fetched": len(summary.sessions),
                    "briefs": len(summary.client_briefs()),
                    "groups": len(summary.session_groups()),
                    "summary_query": median_ms(lambda: conn.cursor(
                        row_factory=tuple_row, binary=True).execute(
                            query("get_activity_summary", version), {
                                "idle_in_transaction_after": notable.idle_in_transaction_after,
                                "idle_after": notable.idle_after,
                                "long_query_after": notable.long_query_after,
                                "young_age": notable.young_age}).fetchall(), runs),
                    "snapshot": median_ms(
                        lambda: postgres.take_summary(conn, notable, query_chars=0), runs),
                    "rules": median_ms(lambda: evaluate(summary, t), runs),
                    "samples": median_ms(lambda: server_samples(summary, f_summary), runs),
                    "text": text_ms(s_summary, runs),
                }
                out["summary"]["scrape"] = median_ms(lambda: generate_latest_of(
                    lambda: postgres.take_summary(conn, notable, query_chars=0), t), runs)
        finally:
            for c in held:
                c.close()
    out["python"] = sys.version.split()[0]
    for kind in ("complete", "summary"):
        print(kind, " ".join(f"{k}={v}" for k, v in out[kind].items()))
    name = f"exporter_profile_{mode}.json" if mode else "exporter_profile.json"
    (Path(__file__).parent / "results" / name).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def generate_latest_of(take: Callable[[], postgres.Snapshot], t: Thresholds) -> bytes:
    """One scrape as the exporter's collector does it: snapshot, rules, samples, text."""
    snap = take()
    samples = server_samples(snap, evaluate(snap, t))
    registry = CollectorRegistry()
    registry.register(_Fixed(samples))
    return bytes(generate_latest(registry))


if __name__ == "__main__":
    sys.exit(main())
