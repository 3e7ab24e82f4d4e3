"""The exporter's summary snapshot against the complete one, on the same real sessions at the
same instant: the doctor's findings and the exporter's samples are identical, while the summary
holds only the sessions a rule can name.

Each comparison takes both snapshots in one transaction: PostgreSQL reads ``pg_stat_activity``
once per transaction and ``now()`` does not move, so every count and age agrees to the last
bit."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from pgwarden.conninfo import resolve
from pgwarden.doctor.rules import Sample, Thresholds, evaluate
from pgwarden.embedded import EmbeddedPostgres, pgserver_bin_dir
from pgwarden.guard.policy import Policy, decide
from pgwarden.metrics.server import TargetScraper, server_samples
from pgwarden.sources import postgres
from pgwarden.sources.postgres.records import Snapshot

from ..conftest import Sessions

pytestmark = pytest.mark.timeout(180)

#: The scene's thresholds: every rule that names sessions speaks, and about half the sessions
#: are notable.
SCENE = Thresholds(idle_after=4.0, idle_in_transaction_after=4.0, long_query_after=4.0,
                   churn_young_age=1.0, churn_min_young=3, idle_hoarding_min_sessions=3,
                   unnamed_min_sessions=3)
#: Every client session named (idle, idle in transaction or active past a millisecond), every
#: one young (under a minute).
EAGER = Thresholds(idle_after=0.001, idle_in_transaction_after=0.001, long_query_after=0.001,
                   churn_young_age=60.0, churn_min_young=2, idle_hoarding_min_sessions=2,
                   unnamed_min_sessions=2)
VARIANTS = {"scene": SCENE, "defaults": Thresholds(), "eager": EAGER}


@dataclass
class Scene:
    """One instant of the scene's cluster: a complete snapshot and a summary per variant, as a
    superuser and as a role without pg_monitor."""

    cluster: EmbeddedPostgres
    complete: Snapshot
    summaries: dict[str, Snapshot]
    blind_complete: Snapshot
    blind_summaries: dict[str, Snapshot]


def _clusters() -> list[Any]:
    params: list[Any] = [pytest.param(None, id="system")]
    if pgserver_bin_dir() is not None:
        params.append(pytest.param(pgserver_bin_dir(), id="pgserver"))
    return params


@pytest.fixture(scope="module", params=_clusters())
def scene(request: pytest.FixtureRequest) -> Iterator[Scene]:
    """A cluster with every kind of session the rules name, and others they do not.

    Opened first (over 5 s old at the snapshots): 6 idle "hoarder" sessions, 2 idle in
    transaction ("forgetful"), a lock holder idle in its transaction ("lk-holder") and 2 sessions
    waiting for it ("lk-waiter"), a 10-minute query ("slow"). Then (about 1.5 s old): 8 idle
    "fresh" sessions and 6 without application_name of two users, none old or young enough for
    the scene's rules. Last (young): 4 "churner" sessions. 30 client sessions, 35 usable slots."""
    kwargs: dict[str, Any] = {"max_connections": 38}
    if request.param is not None:
        kwargs["bin_dir"] = request.param
    cluster = EmbeddedPostgres(**kwargs)
    sessions = Sessions()
    threads: list[threading.Thread] = []
    try:
        cluster.execute("create role app login password 'app-pw'")
        cluster.execute("create role nomon login password 'nomon-pw'")
        cluster.execute("create table locked (id int)")
        cluster.execute("grant all on locked to app")
        app = {"user": "app", "password": "app-pw"}
        sessions.open(cluster, 6, application_name="hoarder", **app)
        sessions.open(cluster, 2, application_name="forgetful", state="idle in transaction",
                      **app)
        [holder] = sessions.open(cluster, 1, application_name="lk-holder", **app)
        holder.execute("begin")
        holder.execute("lock table locked in access exclusive mode")
        for waiter in sessions.open(cluster, 2, application_name="lk-waiter", **app):
            t = threading.Thread(target=_swallow, args=(waiter, "select * from locked"),
                                 daemon=True)
            t.start()
            threads.append(t)
        sessions.open(cluster, 1, application_name="slow", state="active", **app)
        _wait_for(cluster, "select count(*) from pg_stat_activity where wait_event_type = "
                  "'Lock'", 2)
        time.sleep(5.0)
        sessions.open(cluster, 8, application_name="fresh", **app)
        sessions.open(cluster, 4, application_name="", **app)
        sessions.open(cluster, 2, application_name="")  # the superuser's
        time.sleep(1.5)
        sessions.open(cluster, 4, application_name="churner", **app)
        complete, summaries = _both(cluster)
        blind_complete, blind_summaries = _both(cluster, user="nomon", password="nomon-pw")
        yield Scene(cluster, complete, summaries, blind_complete, blind_summaries)
        holder.execute("rollback")
    finally:
        sessions.close()
        for t in threads:
            t.join(5)
        cluster.close()


def _swallow(conn: psycopg.Connection[Any], sql: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute(sql.encode())


def _wait_for(cluster: EmbeddedPostgres, sql: str, expected: int) -> None:
    deadline = time.monotonic() + 20
    while cluster.execute(sql)[0][0] != expected:
        assert time.monotonic() < deadline, f"never {expected}: {sql}"
        time.sleep(0.05)


def _both(cluster: EmbeddedPostgres, **params: Any) -> tuple[Snapshot, dict[str, Snapshot]]:
    """A complete snapshot and one summary per variant, of one instant (one transaction)."""
    with psycopg.connect(cluster.conninfo(application_name="pgwarden-test", **params),
                         autocommit=True) as conn, conn.transaction():
        complete = postgres.take(conn)
        summaries = {name: postgres.take_summary(conn, t.notable())
                     for name, t in VARIANTS.items()}
    return complete, summaries


def _same(complete: Snapshot, summary: Snapshot, t: Thresholds) -> None:
    """The summary finds, counts and serves exactly what the complete snapshot does."""
    assert complete.complete and not summary.complete
    assert summary.taken_at == complete.taken_at
    findings = evaluate(complete, t)
    assert evaluate(summary, t) == findings
    assert server_samples(summary, findings) == server_samples(complete, findings)
    assert Counter(summary.session_groups()) == Counter(complete.session_groups())
    for attr in ("application", "state", "user", "database"):
        assert list(summary.count_by(attr).items()) == list(complete.count_by(attr).items())
    assert summary.used_slots == complete.used_slots
    assert summary.hidden_sessions == complete.hidden_sessions
    # its sessions are the complete snapshot's, to the last field, in pid order; so are its
    # briefs, and they hold every session idle past the threshold, young or unnamed
    by_pid = complete.by_pid()
    assert [s.pid for s in summary.sessions] == sorted(s.pid for s in summary.sessions)
    for s in summary.sessions:
        assert s == by_pid[s.pid]
    briefs = summary.client_briefs()
    assert [b.pid for b in briefs] == sorted(b.pid for b in briefs)
    fields = ("application", "label", "user", "client_addr", "state", "backend_age", "state_age")
    for b in briefs:
        assert [getattr(b, f) for f in fields] == [getattr(by_pid[b.pid], f) for f in fields]
    assert {b.pid for b in briefs} >= {
        s.pid for s in complete.client_backends
        if not s.application or (s.backend_age is not None and s.backend_age < t.churn_young_age)
        or (s.state == "idle" and (s.state_age or 0) >= t.idle_after)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_summary_gives_the_same_findings_and_samples(scene: Scene, variant: str) -> None:
    complete, summary, t = scene.complete, scene.summaries[variant], VARIANTS[variant]
    _same(complete, summary, t)
    assert complete.used_slots >= 30 and complete.hidden_sessions == 0
    findings = {f.id for f in evaluate(summary, t)}
    held = Counter(s.label for s in summary.client_backends)
    if variant == "scene":
        assert findings >= {"saturation", "idle_in_transaction", "lock_blocking",
                            "idle_hoarding", "connection_churn", "long_running_query",
                            "unnamed_clients"}
        # the 8 fresh sessions are only counted; the hoarders, the unnamed and the churners
        # kept in brief
        assert held == {"forgetful": 2, "lk-holder": 1, "lk-waiter": 2, "slow": 1}
        briefs = Counter(b.label for b in summary.client_briefs())
        assert briefs == {"hoarder": 6, "(no application_name)": 6, "churner": 4}
    elif variant == "defaults":
        # nothing is old enough for the defaults (60 s, 300 s): only the lock is named
        assert {"lock_blocking", "unnamed_clients", "saturation"} <= findings
        assert held == {"lk-holder": 1, "lk-waiter": 2}
    else:
        # every session past a millisecond: the idle ones in brief, the others as records
        assert held == {"forgetful": 2, "lk-holder": 1, "lk-waiter": 2, "slow": 1}
        assert len(summary.client_briefs()) == complete.used_slots  # all younger than 60 s


def test_a_role_without_pg_monitor_counts_the_same_hidden_sessions(scene: Scene) -> None:
    for variant, t in VARIANTS.items():
        _same(scene.blind_complete, scene.blind_summaries[variant], t)
    summary = scene.blind_summaries["scene"]
    assert summary.hidden_sessions >= 30
    assert summary.client_backends == ()  # nothing it may see is old or young enough
    assert "limited_visibility" in {f.id for f in evaluate(summary, SCENE)}
    assert len(summary.client_briefs()) == 6  # the unnamed: application_name is not hidden


def test_a_summary_refuses_thresholds_it_was_not_taken_for(scene: Scene) -> None:
    # taken for the defaults (300 s idle): the sessions idle past 4 s are not all there
    with pytest.raises(ValueError, match="not all those these thresholds can name"):
        evaluate(scene.summaries["defaults"], SCENE)
    # taken for more (a millisecond): enough for the defaults, and the same findings
    assert evaluate(scene.summaries["eager"]) == evaluate(scene.complete)
    # a sample compares every pid of two complete snapshots
    with pytest.raises(ValueError, match="complete snapshots"):
        evaluate(scene.summaries["scene"], SCENE, Sample(previous=scene.complete))
    with pytest.raises(ValueError, match="client_addr"):
        scene.summaries["scene"].count_by("client_addr")
    # the guard chooses among every session: never from a summary
    assert decide(scene.complete, Policy()).used_slots == scene.complete.used_slots + 1
    with pytest.raises(ValueError, match="complete snapshot"):
        decide(scene.summaries["eager"], Policy())


def test_the_exporter_takes_a_summary_for_the_doctors_defaults(scene: Scene) -> None:
    scraper = TargetScraper(resolve(scene.cluster.dsn, command="exporter"), min_interval=0)
    try:
        snap = scraper._snapshot()
    finally:
        scraper.close()
    assert not snap.complete and snap.notable == Thresholds().notable()
    assert snap.used_slots == scene.complete.used_slots
