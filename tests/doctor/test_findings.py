"""Each required finding, provoked on a real cluster, and none on a healthy one."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgwarden.conninfo import resolve
from pgwarden.doctor import Report, Thresholds, examine
from pgwarden.embedded import EmbeddedPostgres, pgserver_bin_dir

from ..conftest import Sessions

FAST = Thresholds(idle_after=0.5, idle_in_transaction_after=0.5, long_query_after=0.5,
                  idle_hoarding_min_sessions=3, unnamed_min_sessions=3)


def doctor(cluster: EmbeddedPostgres, t: Thresholds = FAST, sample: float = 0.0,
           **params: Any) -> Report:
    return examine(resolve(cluster.conninfo(**params), command="doctor"), thresholds=t,
                   sample=sample)


def ids(report: Report, severity: str | None = None) -> set[str]:
    return {f.id for f in report.findings if severity is None or f.severity == severity}


def only(report: Report, finding_id: str, app: str | None = None) -> Any:
    found = [f for f in report.findings if f.id == finding_id
             and (app is None or app in f.applications)]
    assert len(found) == 1, [f.as_dict() for f in report.findings]
    return found[0]


@pytest.fixture(scope="module")
def small() -> Iterator[EmbeddedPostgres]:
    """max_connections=14, 3 reserved: 11 usable slots."""
    cluster = EmbeddedPostgres(max_connections=14)
    cluster.execute("create role plain login password 'plainpw'")
    cluster.execute("create role watcher login password 'watchpw'")
    cluster.execute("grant pg_monitor to watcher")
    try:
        yield cluster
    finally:
        cluster.close()


def test_healthy_server_has_no_warning(pg: EmbeddedPostgres, sessions: Sessions) -> None:
    sessions.open(pg, 3, application_name="healthy-api")
    report = doctor(pg, Thresholds())
    assert report.status == "ok", [f.as_dict() for f in report.findings]
    assert ids(report, "warning") == ids(report, "critical") == set()
    # the defaults of a fresh PostgreSQL are worth advice, never an alarm
    assert {"setting_idle_in_transaction_timeout", "setting_tcp_keepalives"} <= ids(report)
    assert report.summary["by_application"]["healthy-api"] == 3


def test_saturation_warning_then_critical(small: EmbeddedPostgres, sessions: Sessions) -> None:
    sessions.open(small, 9, application_name="greedy")  # 9/11 = 82 % (the doctor's not counted)
    f = only(doctor(small), "saturation")
    assert f.severity == "warning"
    assert f.evidence["usable_slots"] == 11 and f.evidence["used_slots"] == 9
    assert f.applications[0] == "greedy"
    sessions.open(small, 2, application_name="greedy")  # 11/11
    f = only(doctor(small), "saturation")
    assert f.severity == "critical"
    assert f.evidence["by_application"]["greedy"] == 11


def test_server_full_is_critical_with_the_way_in(small: EmbeddedPostgres,
                                                  sessions: Sessions) -> None:
    sessions.open(small, 11, application_name="hog", user="plain", password="plainpw")
    report = doctor(small, user="plain", password="plainpw")
    assert report.status == "critical"
    f = only(report, "server_full")
    assert "superuser" in f.fix and "pg_use_reserved_connections" in f.fix
    # a superuser still gets in through the reserve and names the hog
    report = doctor(small)
    assert only(report, "saturation").applications[0] == "hog"


def test_idle_in_transaction_per_application(pg: EmbeddedPostgres, sessions: Sessions) -> None:
    conns = sessions.open(pg, 2, application_name="forgetful", state="idle in transaction")
    sessions.open(pg, 1, application_name="careful", state="idle")
    time.sleep(0.7)
    f = only(doctor(pg), "idle_in_transaction", "forgetful")
    assert f.severity == "warning"
    assert set(f.pids) == set(sessions.pids(conns))
    assert f.evidence["sessions"] == 2 and f.evidence["oldest_idle_seconds"] >= 0.5
    assert "pg_terminate_backend" in f.fix
    assert not [x for x in doctor(pg).findings if "careful" in x.applications
                and x.id == "idle_in_transaction"]


def test_idle_hoarding(pg: EmbeddedPostgres, sessions: Sessions) -> None:
    conns = sessions.open(pg, 4, application_name="hoarder")
    sessions.open(pg, 2, application_name="modest")
    time.sleep(0.7)
    report = doctor(pg)
    f = only(report, "idle_hoarding", "hoarder")
    assert set(f.pids) == set(sessions.pids(conns))
    assert f.evidence["idle_sessions"] == 4
    assert not [x for x in report.findings if x.id == "idle_hoarding" and "modest" in
                x.applications]  # 2 < idle_hoarding_min_sessions


def test_lock_blocking_names_blocker(pg: EmbeddedPostgres, sessions: Sessions) -> None:
    pg.execute("create table if not exists locked_t (id int)")
    (holder,) = sessions.open(pg, 1, application_name="lock-holder")
    holder.execute("begin")
    holder.execute("lock table locked_t in access exclusive mode")
    (waiter,) = sessions.open(pg, 1, application_name="lock-waiter")
    t = threading.Thread(target=lambda: _swallow(waiter, "select * from locked_t"), daemon=True)
    t.start()
    time.sleep(0.7)
    report = doctor(pg)
    f = only(report, "lock_blocking")
    assert f.evidence["blocking_pid"] == holder.info.backend_pid
    assert f.evidence["blocking_application"] == "lock-holder"
    assert f.evidence["blocking_state"] == "idle in transaction"
    assert waiter.info.backend_pid in f.evidence["waiting_pids"]
    assert f.applications[:2] == ("lock-holder", "lock-waiter")
    # the idle transaction that blocks others is critical
    assert only(report, "idle_in_transaction", "lock-holder").severity == "critical"
    holder.execute("rollback")
    t.join(5)


def _swallow(conn: psycopg.Connection[Any], sql: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute(sql.encode())


def test_long_running_query(pg: EmbeddedPostgres, sessions: Sessions) -> None:
    (conn,) = sessions.open(pg, 1, application_name="slow-report", state="active")
    time.sleep(0.8)
    f = only(doctor(pg), "long_running_query")
    assert f.pids[0] == conn.info.backend_pid
    assert "pg_sleep" in f.evidence["longest_query"]
    assert "statement_timeout" in f.fix


def test_unnamed_clients(pg: EmbeddedPostgres, sessions: Sessions) -> None:
    conns = sessions.open(pg, 3, application_name="")
    f = only(doctor(pg), "unnamed_clients")
    assert f.severity == "info"
    assert set(sessions.pids(conns)) <= set(f.pids)
    assert "application_name" in f.fix


def test_settings_findings_disappear_when_configured(
    make_cluster: Callable[..., EmbeddedPostgres],
) -> None:
    tuned = make_cluster(max_connections=600, settings={
        "idle_in_transaction_session_timeout": "60s",
        "tcp_keepalives_idle": 60, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 6,
    })
    report = doctor(tuned, Thresholds())
    assert "setting_idle_in_transaction_timeout" not in ids(report)
    assert "setting_tcp_keepalives" not in ids(report)
    f = only(report, "setting_max_connections_high")
    assert f.severity == "warning" and f.evidence["max_connections"] == 600
    assert "PgBouncer" in f.fix


def test_connection_churn_from_pgbench(pg: EmbeddedPostgres, tmp_path: Any) -> None:
    """Real client load: pgbench -C opens a new connection for every transaction."""
    pgbench = pg.bin("pgbench")
    script = tmp_path / "select1.sql"
    script.write_text("select 1;\n")
    env = {"PGPASSWORD": pg.password, "PGAPPNAME": "pgbench-churn", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [str(pgbench), "-n", "-C", "-c", "2", "-T", "4", "-f", str(script),
         "-h", pg.host, "-p", str(pg.port), "-U", pg.user, "postgres"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(0.5)
        report = doctor(pg, Thresholds(), sample=1.5)
    finally:
        _, err = proc.communicate(timeout=30)
    f = only(report, "connection_churn")
    assert f.evidence["new_sessions_per_second"] >= 5, (f.as_dict(), err)
    assert f.applications[0] == "pgbench-churn"
    assert "pool" in f.fix
    assert proc.returncode == 0, err


def test_non_superuser_without_pg_monitor_says_what_it_cannot_see(
    small: EmbeddedPostgres, sessions: Sessions
) -> None:
    sessions.open(small, 3, application_name="secretive", state="idle in transaction")
    time.sleep(0.6)
    blind = doctor(small, user="plain", password="plainpw")
    f = only(blind, "limited_visibility")
    assert f.evidence["hidden_sessions"] >= 3
    assert "GRANT pg_monitor TO plain" in f.fix
    # counts by application still work: application_name is visible to every role
    assert blind.summary["by_application"]["secretive"] == 3
    assert "idle_in_transaction" not in ids(blind)
    seeing = doctor(small, user="watcher", password="watchpw")
    assert "limited_visibility" not in ids(seeing)
    assert only(seeing, "idle_in_transaction", "secretive").evidence["sessions"] == 3


def test_pg16_reserved_connections_let_a_granted_role_in(
    make_cluster: Callable[..., EmbeddedPostgres], sessions: Sessions
) -> None:
    """PostgreSQL 16's reserved_connections: a role granted pg_use_reserved_connections gets in
    when the server is full for everyone else, and the doctor counts those slots as reserved."""
    bin_dir = pgserver_bin_dir()
    if bin_dir is None:
        pytest.skip("needs the pgserver wheel's PostgreSQL 16 (pip install pgserver)")
    pg16 = make_cluster(bin_dir=bin_dir, max_connections=10,
                        settings={"reserved_connections": 2})
    if pg16.execute("show server_version_num")[0][0] < "160000":
        pytest.skip("reserved_connections needs PostgreSQL 16")
    pg16.execute("create role plain login password 'plainpw'")
    pg16.execute("create role ops login password 'opspw'")
    pg16.execute("grant pg_monitor, pg_use_reserved_connections to ops")
    sessions.open(pg16, 5, application_name="hog", user="plain", password="plainpw")
    assert only(doctor(pg16, user="plain", password="plainpw"), "server_full")
    report = doctor(pg16, user="ops", password="opspw")
    f = only(report, "saturation")
    assert f.severity == "critical"
    assert f.evidence["usable_slots"] == 5  # 10 - 3 superuser - 2 reserved
    assert f.evidence["reserved_connections"] == 2
    assert report.server["role"] == "ops"
