"""The commands as a user runs them: output, exit codes, and bad input."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from pgwarden.embedded import EmbeddedPostgres

from .conftest import Sessions
from .helpers import run_cli


def test_check_passes_every_step(pg: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(capsys, "check", "--dsn", pg.url)
    assert r.code == 0, r
    for step in ("resolve", "tcp", "tls", "authentication", "database", "server", "latency"):
        assert step in r.out
    assert "FAILED" not in r.out
    assert pg.password not in r.out + r.err
    j = run_cli(capsys, "check", "--dsn", pg.url, "--format", "json").json()
    assert j["ok"] is True and [s["name"] for s in j["steps"]][-1] == "latency"


def test_status_counts_by_application(pg: EmbeddedPostgres, sessions: Sessions,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    sessions.open(pg, 2, application_name="status-app", state="idle in transaction")
    r = run_cli(capsys, "status", "--dsn", pg.url, "--format", "json")
    assert r.code == 0
    summ = r.json()["summary"]
    assert summ["by_application"]["status-app"] == 2
    assert summ["by_state"]["idle in transaction"] >= 2
    assert {s["application"] for s in summ["oldest_idle_in_transaction"]} >= {"status-app"}
    assert summ["usable_slots"] == 57  # 60 - 3 superuser_reserved_connections
    text = run_cli(capsys, "status", "--dsn", pg.url)
    assert "status-app" in text.out and "usable" in text.out


def test_doctor_exit_codes(pg: EmbeddedPostgres, sessions: Sessions,
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "doctor", "--dsn", pg.url).code == 0
    sessions.open(pg, 1, application_name="exit-code-app", state="idle in transaction")
    time.sleep(0.3)
    r = run_cli(capsys, "doctor", "--dsn", pg.url, "--idle-in-transaction-after", "0.1",
                "--format", "json")
    assert r.code == 1
    data = r.json()
    assert data["status"] == "warning"
    f = next(f for f in data["findings"] if f["id"] == "idle_in_transaction")
    assert set(f) >= {"id", "severity", "title", "applications", "pids", "evidence", "fix"}
    assert pg.password not in r.out


def test_full_server(make_cluster: Callable[..., EmbeddedPostgres], sessions: Sessions,
                     capsys: pytest.CaptureFixture[str]) -> None:
    full = make_cluster(max_connections=6)
    full.execute("create role plain login password 'plainpw'")
    sessions.open(full, 3, user="plain", password="plainpw")
    dsn = full.conninfo(user="plain", password="plainpw")
    r = run_cli(capsys, "doctor", "--dsn", dsn)
    assert r.code == 2
    assert "server_full" in r.out and "pg_use_reserved_connections" in r.out
    r = run_cli(capsys, "check", "--dsn", dsn)
    assert r.code == 3
    assert "server is full" in r.out and "superuser" in r.out
    assert "plainpw" not in r.out + r.err


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["doctor", "--dsn", "host=db port"], 64, "malformed DSN"),
        (["doctor", "--dsn", "postgresql://u:hunter2@127.0.0.1:1/db"], 3, "Connection refused"),
        (["check", "--dsn", "postgresql://u:hunter2@127.0.0.1:1/db"], 3, "connection refused"),
        (["status", "--dsn", "postgresql://u:hunter2@127.0.0.1:1/db"], 3, "cannot connect"),
        (["doctor", "--no-such-option"], 64, "No such option"),
        (["doctor", "--idle-after", "-4"], 64, "--idle-after"),
        (["doctor", "--saturation-warning", "0.9", "--saturation-critical", "0.5"], 64,
         "saturation"),
    ],
)
def test_bad_input_one_clear_line(args: list[str], code: int, says: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(capsys, *args)
    assert r.code == code, r
    out = r.out + r.err
    assert says.lower() in out.lower()
    assert "hunter2" not in out
    assert "Traceback" not in out
    if code != 3 or args[0] != "check":
        assert len(r.err.strip().splitlines()) == 1, r.err


def test_wrong_password_and_missing_database(pg: EmbeddedPostgres,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = f"postgresql://postgres:hunter2@127.0.0.1:{pg.port}/postgres"
    r = run_cli(capsys, "doctor", "--dsn", bad)
    assert r.code == 3
    assert "password authentication failed" in r.err and "hunter2" not in r.err
    r = run_cli(capsys, "check", "--dsn", bad)
    assert r.code == 3 and "FAILED authentication" in " ".join(r.out.split())
    r = run_cli(capsys, "doctor", "--dsn", pg.conninfo(dbname="nope"))
    assert r.code == 3
    assert 'database "nope" does not exist' in r.err
    assert pg.password not in r.err


def test_real_process_prints_no_traceback() -> None:
    """The installed entry point, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "pgwarden", "doctor", "--dsn",
         "postgresql://app:hunter2@127.0.0.1:1/db", "--connect-timeout", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("pgwarden: error: cannot connect to app@127.0.0.1:1/db")
    assert "Traceback" not in proc.stderr and "hunter2" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_demo_shows_culprits_and_cleans_up() -> None:
    proc = subprocess.run([sys.executable, "-m", "pgwarden", "demo"], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    # off a terminal nothing is cut, and the section lines stay readable in a log
    rules = [line for line in out.splitlines() if line.startswith("─")]
    assert len(rules) >= 5 and all(len(line) <= 100 for line in rules), max(map(len, rules))
    assert "too many clients" in out or "remaining connection slots are reserved" in out
    for finding in ("idle_hoarding", "idle_in_transaction", "lock_blocking", "connection_churn"):
        assert finding in out
    for app in ("worker", "report-job", "bot"):
        assert app in out
    # the worker's pgwarden pool names its leaks with the code location
    assert "connection leak? backend pid" in out
    assert "demo.py" in out and "in sync_order" in out
    # the guard frees the leaked and idle-in-transaction sessions and the bot is served again
    assert "terminated 11 sessions" in out
    assert "(recovered)" in out
    # a pgwarden pool rides through a restart: no failed checkout or statement, and the
    # statements the shutdown killed ran again
    assert "errors seen by the threads: 0 at checkout, 0 in statements" in out
    replayed = re.search(r"(\d+) statements killed by the shutdown were run again", out)
    assert replayed is not None and int(replayed.group(1)) >= 1
    assert "the pool served queries again" in out
    # a SQLAlchemy app leaks sessions: the QueuePool timeout names the file and line
    leak = out.split("a SQLAlchemy app that leaks a session")[1]
    assert "sqlalchemy.exc.TimeoutError" in leak
    assert "QueuePool limit of size 2 overflow 0 reached, connection timed out" in leak
    assert re.search(r"by MainThread at \S*demo\.py:\d+ in export_invoices", leak), leak[:2000]
    assert "longest holders: backend pid" in leak
    # scale out: refused directly, all served through the PgBouncer pgwarden configures
    assert "too many clients" in out.split("scale out")[1]
    assert re.search(r"pgbouncer (\d+) of \1 clients served, 0 refused", out), out[-800:]


def test_demo_without_pgbouncer_says_how_to_install_it() -> None:
    proc = subprocess.run([sys.executable, "-m", "pgwarden", "demo"], capture_output=True,
                          text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin",
                               "PGWARDEN_PGBOUNCER": "/nonexistent/pgbouncer"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pgbouncer is not installed: apt-get install pgbouncer" in proc.stdout
    assert "skipping this scene" in proc.stdout
