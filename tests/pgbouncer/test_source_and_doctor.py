"""PgBouncer as a source and the doctor's PgBouncer findings, each provoked on a real
PgBouncer in front of a real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgwarden.diagnose import classify
from pgwarden.embedded import EmbeddedPostgres

from ..helpers import Clients, eventually, run_cli

APP_PW = "app-pw-123"


@pytest.fixture
def pg(make_cluster: Callable[..., EmbeddedPostgres]) -> EmbeddedPostgres:
    cluster = make_cluster(max_connections=12)  # 9 usable for the app role
    cluster.execute(f"create role app login password '{APP_PW}'")
    return cluster


def _doctor(capsys: pytest.CaptureFixture[str], bouncer: Any, pg: EmbeddedPostgres | None,
            *extra: str) -> Any:
    args = ["doctor", "--pgbouncer", bouncer.admin_url, "--format", "json",
            "--pgbouncer-wait-after", "0.2", *extra]
    if pg is not None:
        args += ["--dsn", pg.url]
    r = run_cli(capsys, *args)
    assert bouncer.admin_password not in r.out + r.err
    return r


def _finding(data: dict[str, Any], fid: str) -> dict[str, Any]:
    found = [f for f in data["findings"] if f["id"] == fid]
    assert len(found) == 1, [f["id"] for f in data["findings"]]
    return found[0]


def test_waiting_clients_and_exhausted_pool(pg: EmbeddedPostgres, clients: Clients,
                                           make_bouncer: Callable[..., Any],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    b = make_bouncer(pg, settings={"default_pool_size": 2})
    dsn = b.conninfo(application_name="holder")
    clients.open(dsn, 2, in_transaction=True)  # both servers held
    clients.wait_in_background(dsn, 2)
    eventually(lambda: any(p["cl_waiting"] >= 2 for p in b.admin("SHOW POOLS")))
    time.sleep(0.4)
    r = _doctor(capsys, b, pg)
    assert r.code == 1, r
    data = r.json()
    waiting = _finding(data, "pgbouncer_clients_waiting")
    assert waiting["evidence"]["cl_waiting"] == 2 and waiting["applications"] == ["waiter"]
    exhausted = _finding(data, "pgbouncer_pool_exhausted")
    assert exhausted["evidence"]["servers"] == 2 and exhausted["evidence"]["pool_size"] == 2
    assert "holder" in exhausted["applications"]


def test_max_db_connections_reached(pg: EmbeddedPostgres, clients: Clients,
                                    make_bouncer: Callable[..., Any],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    b = make_bouncer(pg, settings={"default_pool_size": 5, "max_db_connections": 2})
    clients.open(b.conninfo(), 2, in_transaction=True)
    clients.wait_in_background(b.conninfo(), 1)
    eventually(lambda: any(p["cl_waiting"] for p in b.admin("SHOW POOLS")))
    f = _finding(_doctor(capsys, b, None).json(), "pgbouncer_max_db_connections")
    assert f["evidence"]["max_db_connections"] == 2 and f["evidence"]["current_connections"] == 2


def test_server_full_behind_pgbouncer(pg: EmbeddedPostgres, clients: Clients,
                                      make_bouncer: Callable[..., Any],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    b = make_bouncer(pg, settings={"default_pool_size": 20},
                     users={"app": APP_PW})
    dsn = b.conninfo(user="app", password=APP_PW)
    clients.open(dsn, 9, in_transaction=True)  # the app role's 9 usable slots
    clients.wait_in_background(dsn, 1)  # PgBouncer's 10th login: too many clients
    time.sleep(0.5)
    r = _doctor(capsys, b, pg)
    assert r.code == 2, r
    f = _finding(r.json(), "pgbouncer_server_slots")
    assert f["severity"] == "critical"
    assert f["evidence"]["server_connections"] == 9 and f["evidence"]["usable_slots"] == 9


def test_session_mode_idle_clients(pg: EmbeddedPostgres, clients: Clients,
                                   make_bouncer: Callable[..., Any],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    b = make_bouncer(pg, settings={"pool_mode": "session"})
    for c in clients.open(b.conninfo(application_name="sleepy"), 5):
        c.execute("select 1")
    time.sleep(2.2)  # PgBouncer's request_time has whole seconds
    r = _doctor(capsys, b, pg, "--pgbouncer-idle-after", "1")
    f = _finding(r.json(), "pgbouncer_session_mode_idle")
    assert f["evidence"]["idle_clients"] == 5 and f["applications"] == ["sleepy"]
    assert r.code == 1


def test_prepared_statements_in_transaction_mode(pg: EmbeddedPostgres,
                                                 make_bouncer: Callable[..., Any],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    b = make_bouncer(pg)
    # psycopg's default prepare_threshold (5) against a PgBouncer that does not track
    # prepared statements: two clients take turns on the same server sessions
    c1 = psycopg.connect(b.conninfo(), autocommit=True)
    c2 = psycopg.connect(b.conninfo(), autocommit=True)
    seen: list[psycopg.Error] = []
    try:
        for i in range(20):
            for c in (c1, c2):
                try:
                    c.execute("select %s::int + 1", (i,)).fetchone()
                except psycopg.Error as exc:
                    seen.append(exc)
    finally:
        c1.close()
        c2.close()
    if not b.version.at_least(1, 21):
        assert seen, "psycopg's prepared statements should fail through this PgBouncer"
        failure = classify(seen[0])
        assert failure.diagnosis is not None
        assert failure.diagnosis.id == "pgbouncer_prepared_statement"
        r = run_cli(capsys, "explain", failure.said)
        assert r.code == 0 and "prepare_threshold=None" in r.out
    r = _doctor(capsys, b, None)
    f = _finding(r.json(), "pgbouncer_prepared_statements")
    assert "prepare_threshold=None" in f["fix"]


def test_remote_pid_names_the_client(pg: EmbeddedPostgres, clients: Clients,
                                     make_bouncer: Callable[..., Any],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    b = make_bouncer(pg)
    (c,) = clients.open(b.conninfo(application_name="billing-job"), 1, in_transaction=True)
    backend = c.execute("select pg_backend_pid()").fetchone()[0]
    assert backend != c.info.backend_pid  # PgBouncer's cancel key, not the server's pid
    clients.open(b.conninfo(application_name="idle-one"), 1)
    r = run_cli(capsys, "status", "--dsn", pg.url, "--pgbouncer", b.admin_url,
                "--format", "json")
    assert r.code == 0, r
    sessions = r.json()["pgbouncer"]["server_sessions"]
    held = next(s for s in sessions if s["backend_pid"] == backend)
    assert held["client_application"] == "billing-job"
    assert held["state"] == "idle in transaction"
    assert held["client_addr"] == "127.0.0.1" and held["client_port"]
    r = run_cli(capsys, "pgbouncer", "status", "--pgbouncer", b.admin_url)
    assert r.code == 0 and "PgBouncer" in r.out


def test_check_says_pgbouncer_and_pool_mode(pg: EmbeddedPostgres,
                                            make_bouncer: Callable[..., Any],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    tx = make_bouncer(pg)
    session = make_bouncer(pg, settings={"pool_mode": "session"})
    r = run_cli(capsys, "check", "--dsn", tx.conninfo(), "--format", "json")
    server = next(s for s in r.json()["steps"] if s["name"] == "server")
    assert "connection pooler" in server["detail"] and "transaction" in server["detail"]
    r = run_cli(capsys, "check", "--dsn", session.conninfo(), "--format", "json")
    server = next(s for s in r.json()["steps"] if s["name"] == "server")
    assert "session pool mode" in server["detail"]
    r = run_cli(capsys, "check", "--dsn", tx.admin_url, "--format", "json")
    server = next(s for s in r.json()["steps"] if s["name"] == "server")
    assert r.code == 0 and "PgBouncer" in server["detail"] and "admin console" in server["detail"]
    direct = run_cli(capsys, "check", "--dsn", pg.url, "--format", "json")
    assert "pooler" not in next(s for s in direct.json()["steps"]
                                if s["name"] == "server")["detail"]


def test_unreachable_or_refused_admin_console(pg: EmbeddedPostgres,
                                              make_bouncer: Callable[..., Any],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(capsys, "doctor", "--pgbouncer",
                "postgresql://admin:hunter2@127.0.0.1:1/pgbouncer")
    assert r.code == 3 and len(r.err.strip().splitlines()) == 1
    assert "hunter2" not in r.err and "Traceback" not in r.err
    b = make_bouncer(pg, users={pg.user: pg.password, "app": APP_PW})
    r = run_cli(capsys, "status", "--pgbouncer",
                b.conninfo(user="app", password=APP_PW, dbname="pgbouncer"))
    assert r.code == 3 and "not allowed" in r.err and APP_PW not in r.err
    assert len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "says"), [
    # a PostgreSQL database given where PgBouncer's admin console is expected
    (("pgbouncer", "status", "--pgbouncer", "{pg}"), "is not PgBouncer's admin console"),
    (("doctor", "--dsn", "{pg}", "--pgbouncer", "{pg}"), "is not PgBouncer's admin console"),
    (("status", "--dsn", "{pg}", "--pgbouncer", "{db}"), "is not PgBouncer's admin console"),
    (("exporter", "--once", "--pgbouncer", "{db}"), "is not PgBouncer's admin console"),
    # the admin console given where a PostgreSQL database is expected
    (("status", "--dsn", "{admin}"), "is PgBouncer's admin console, not a PostgreSQL"),
    (("doctor", "--dsn", "{admin}"), "is PgBouncer's admin console, not a PostgreSQL"),
    (("top", "--once", "--dsn", "{admin}"), "is PgBouncer's admin console, not a PostgreSQL"),
    (("guard", "--once", "--dsn", "{admin}"), "is PgBouncer's admin console, not a PostgreSQL"),
    (("exporter", "--once", "--dsn", "{admin}"), "is PgBouncer's admin console, not a PostgreSQL"),
])
def test_the_wrong_kind_of_target_is_a_usage_error(
        pg: EmbeddedPostgres, make_bouncer: Callable[..., Any],
        capsys: pytest.CaptureFixture[str], args: tuple[str, ...], says: str) -> None:
    b = make_bouncer(pg)
    given = {"pg": pg.url, "db": b.conninfo(), "admin": b.admin_url}
    r = run_cli(capsys, *(a.format(**given) for a in args))
    assert r.code == 64, r.err
    [line] = r.err.strip().splitlines()
    option = "--pgbouncer" if "not PgBouncer's" in says else "--dsn"
    assert says in line and f"(from {option})" in line
    assert pg.password not in line and b.admin_password not in line


def test_a_pgbouncer_dsn_that_does_not_parse_is_blamed_on_pgbouncer(
        pg: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(capsys, "doctor", "--dsn", pg.url, "--pgbouncer",
                "postgresql://x@127.0.0.1:99999/pgbouncer")
    assert r.code == 64 and "(from --pgbouncer)" in r.err and "port" in r.err
    r = run_cli(capsys, "exporter", "--once", "--pgbouncer", "not a dsn")
    assert r.code == 64 and "malformed DSN (from --pgbouncer)" in r.err
