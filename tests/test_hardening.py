"""Faults and bad input, each the way a user meets it (issue 8's numbered cases for the CLI;
the pool's cases are in tests/pool/test_faults.py). Real servers, a real fault proxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.embedded import EmbeddedPostgres

from .conftest import Sessions
from .faultproxy import FaultProxy
from .helpers import run_cli

DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 64, 70, 74, 78, 130}


def _proxy_dsn(pg: EmbeddedPostgres, proxy: FaultProxy, **params: Any) -> str:
    return pg.conninfo(**{**proxy.dsn_params, "connect_timeout": 2, **params})


def _pgwarden(*args: str, env: dict[str, str] | None = None, **kw: Any
              ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")
            and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "pgwarden", *args], capture_output=True,
                          text=True, timeout=120, env={**base, **(env or {})}, **kw)


def _one_clean_line(err: str) -> None:
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


# -- 1. check against a port that accepts TCP and never answers -------------------------------

def test_1_check_against_a_deaf_listener_fails_at_startup(
        pg: EmbeddedPostgres, fault_proxy: Callable[..., FaultProxy],
        capsys: pytest.CaptureFixture[str]) -> None:
    deaf = fault_proxy(pg.port, "deaf")
    r = run_cli(capsys, "check", "--dsn", _proxy_dsn(pg, deaf), "--format", "json")
    assert r.code == 3, r
    steps = {s["name"]: s for s in r.json()["steps"]}
    assert steps["tcp"]["ok"] is True
    assert steps["startup"]["ok"] is False
    assert "does not answer as PostgreSQL" in steps["startup"]["fix"]
    for later in ("tls", "authentication", "database", "server", "latency"):
        assert later not in steps or steps[later]["ok"] is not True
    assert r.json()["ok"] is False
    # a connection reset right after the accept fails too (at tcp or startup, by when the
    # reset lands): exactly one step FAILED and nothing after it passed
    deaf.set_mode("reset")
    r = run_cli(capsys, "check", "--dsn", _proxy_dsn(pg, deaf), "--format", "json")
    assert r.code == 3
    oks = [s["ok"] for s in r.json()["steps"]]
    assert oks.count(False) == 1 and oks[-1] is False


# -- 5. a server that goes away after pgwarden connected ----------------------------------------

@pytest.mark.parametrize("args", [
    ["check"], ["status"], ["doctor"], ["doctor", "--sample", "0.5"],
    ["guard", "--once"], ["check", "--format", "json"], ["doctor", "--format", "json"],
    ["top", "--once"], ["budget", "--sample", "0.5"],
])
def test_5_every_command_that_loses_the_server_mid_run_says_so_in_one_line(
        args: list[str], pg: EmbeddedPostgres, fault_proxy: Callable[..., FaultProxy],
        capsys: pytest.CaptureFixture[str]) -> None:
    proxy = fault_proxy(pg.port)
    proxy.drop_after_ready(1)  # the first query after the startup meets a reset
    r = run_cli(capsys, *args, "--dsn", _proxy_dsn(pg, proxy))
    assert proxy.dropped >= 1
    assert r.code == 3, r
    assert "lost the connection to postgres@127.0.0.1" in r.err
    _one_clean_line(r.err)
    assert pg.password not in r.out + r.err


def test_5_the_exporter_reports_a_server_lost_mid_scrape_as_down(
        pg: EmbeddedPostgres, fault_proxy: Callable[..., FaultProxy],
        capsys: pytest.CaptureFixture[str]) -> None:
    """The exporter never ends for a lost server: up 0 and one log line (--once: exit 3)."""
    proxy = fault_proxy(pg.port)
    proxy.drop_after_ready(1)
    r = run_cli(capsys, "exporter", "--once", "--dsn", _proxy_dsn(pg, proxy))
    assert proxy.dropped >= 1
    assert r.code == 3, r
    assert "pgwarden_up 0" in r.out.replace("{", " ").replace("}", " ") or "pgwarden_up 0" in r.out
    assert "Traceback" not in r.err and pg.password not in r.out + r.err


@pytest.mark.slow
def test_5_doctor_sampling_through_a_real_restart(make_cluster: Callable[..., EmbeddedPostgres]
                                                  ) -> None:
    cluster = make_cluster(max_connections=20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgwarden", "doctor", "--sample", "20", "--dsn", cluster.dsn],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not cluster.execute(
                "select 1 from pg_stat_activity where application_name = 'pgwarden-doctor'"):
            time.sleep(0.05)
        cluster.restart()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    assert "lost the connection" in err and "administrator command" in err
    _one_clean_line(err)


# -- 6. invalid libpq parameter values are usage errors, before any connection -----------------

@pytest.mark.parametrize("bad", [
    "connect_timeout=abc", "sslmode=bogus", "target_session_attrs=bogus", "port=99999",
    "keepalives_idle=soon", "gssencmode=maybe",
])
@pytest.mark.parametrize("command", [["check"], ["status"], ["doctor"], ["guard", "--once"]])
def test_6_invalid_parameter_values_exit_64(bad: str, command: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"host=127.0.0.1 port=1 user=app password=hunter2 {bad}"
    if bad.startswith("port="):
        dsn = f"host=127.0.0.1 user=app password=hunter2 {bad}"
    r = run_cli(capsys, *command, "--dsn", dsn)
    assert r.code == 64, r
    assert "invalid connection parameter" in r.err and bad.split("=")[0] in r.err
    assert "hunter2" not in r.out + r.err
    _one_clean_line(r.err)


def test_6_invalid_values_from_database_url_and_pg_environment() -> None:
    r = _pgwarden("doctor", env={
        "DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/db?connect_timeout=abc"})
    assert r.returncode == 64 and "from DATABASE_URL" in r.stderr
    assert "hunter2" not in r.stderr
    _one_clean_line(r.stderr)
    r = _pgwarden("status", "--dsn", "host=127.0.0.1 port=1", env={"PGSSLMODE": "bogus"})
    assert r.returncode == 64 and "sslmode" in r.stderr
    _one_clean_line(r.stderr)


# -- 7. guard audit destinations that cannot be opened --------------------------------------

@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "empty"])
def test_7_guard_audit_log_that_cannot_be_opened(where: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dest = {"missing-dir": str(tmp_path / "nope" / "audit.jsonl"), "a-directory": str(tmp_path),
            "empty": ""}[where]
    dsn = "host=127.0.0.1 port=1 user=x password=hunter2"
    r = run_cli(capsys, "guard", "--once", "--dsn", dsn, "--audit-log", dest)
    assert r.code == 64, r
    assert "--audit-log" in r.err and "cannot open the audit log" in r.err
    _one_clean_line(r.err)
    config = tmp_path / "guard.toml"
    config.write_text(f"audit_log = {json.dumps(dest)}\n")
    r = run_cli(capsys, "guard", "--once", "--dsn", dsn, "--config", str(config))
    assert r.code == 78, r
    assert f"{config}: key 'audit_log'" in r.err
    _one_clean_line(r.err)


# -- 8. explain never echoes a password, nor 1 MB back ------------------------------------------

def test_8_explain_json_redacts_and_truncates_its_echo(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    msg = ('connection to postgresql://app:hunter2@db.internal:5432/shop failed: FATAL: '
           'password authentication failed for user "app"')
    r = run_cli(capsys, "explain", "--format", "json", msg)
    assert r.code == 0
    assert "hunter2" not in r.out
    assert r.json()["matches"][0]["id"] == "auth_failed"
    huge = "x" * (1024 * 1024) + " too many clients already"
    r = run_cli(capsys, "explain", "--format", "json", huge)
    assert len(r.out) < 20_000
    assert len(r.json()["query"]) <= 201


# -- 9. output that is not a terminal is not wrapped ----------------------------------------

def test_9_fixes_stay_on_one_line_when_stdout_is_a_pipe(pg: EmbeddedPostgres, sessions: Sessions
                                                         ) -> None:
    sessions.open(pg, 1, application_name="wrap-check-app-with-a-long-name",
                  state="idle in transaction")
    time.sleep(0.3)
    r = _pgwarden("doctor", "--dsn", pg.dsn, "--idle-in-transaction-after", "0.1",
                  env={"COLUMNS": "80"})
    assert r.returncode in (1, 2), r.stderr
    fix = next(line for line in r.stdout.splitlines()
               if "fix:" in line and "wrap-check-app-with-a-long-name" in line)
    assert "SELECT pg_terminate_backend(pid) for pids" in fix
    assert len(fix) > 120  # one line, not hard-wrapped at 80 columns


def test_9_tables_are_neither_wrapped_nor_cut_when_stdout_is_a_pipe() -> None:
    budget = Path(__file__).parent / "budget" / "supabase.toml"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-m", "pgwarden", "budget", str(budget)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    worker = next(line for line in r.stdout.splitlines() if line.startswith("worker"))
    assert "sqlalchemy pool_size=10 max_overflow=20, asyncpg min_size=5 max_size=20" in worker
    assert "sqlalchemy pool_size=9 max_overflow=19; asyncpg min_size=5 max_size=19" in worker
    assert "…" not in r.stdout


# -- 10. broken pipes -------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "code"), [(["status"], 0), (["explain", "53300"], 0),
                                            (["doctor", "--idle-in-transaction-after", "0.1"],
                                             1)])
def test_10_a_reader_that_goes_away_keeps_the_exit_code(
        args: list[str], code: int, pg: EmbeddedPostgres, sessions: Sessions) -> None:
    if args[0] == "doctor":
        sessions.open(pg, 1, application_name="pipe-app", state="idle in transaction")
        time.sleep(0.3)
    dsn = [] if args[0] == "explain" else ["--dsn", pg.dsn]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.Popen([sys.executable, "-m", "pgwarden", *args, *dsn],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert proc.returncode == code, err
    assert err == ""


def _guard_daemon(cluster: EmbeddedPostgres, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.Popen(
        [sys.executable, "-m", "pgwarden", "guard", "--dsn", cluster.dsn, "--interval", "0.2",
         "--idle-in-transaction-after", "0.1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


@pytest.mark.slow
def test_10_guard_stops_when_its_audit_pipe_closes(pg: EmbeddedPostgres, sessions: Sessions
                                                   ) -> None:
    [victim] = sessions.open(pg, 1, application_name="audit-pipe-app",
                             state="idle in transaction")
    # dry run, audit on stdout (the superuser test session is recorded as skipped: protected)
    proc = _guard_daemon(pg, "--application", "audit-pipe-app")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = json.loads(proc.stdout.readline())
        assert first["pid"] == victim.info.backend_pid
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 74, err
    assert "cannot write the audit log stdout" in err and "Traceback" not in err
    assert err.count("pgwarden: error:") == 1


# -- 11. the smaller ones -----------------------------------------------------------------------

@pytest.mark.slow
def test_11_sigint_stops_the_guard_with_130(pg: EmbeddedPostgres, sessions: Sessions,
                                           tmp_path: Path) -> None:
    sessions.open(pg, 1, application_name="sigint-app", state="idle in transaction")
    audit = tmp_path / "audit.jsonl"
    proc = _guard_daemon(pg, "--application", "sigint-app", "--audit-log", str(audit))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (audit.exists() and audit.read_text()):
            time.sleep(0.05)  # a pass ran: the daemon's signal handlers are installed
        assert audit.read_text()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130


def test_11_used_slots_do_not_count_pgwardens_own_session(
        make_cluster: Callable[..., EmbeddedPostgres], sessions: Sessions,
        capsys: pytest.CaptureFixture[str]) -> None:
    cluster = make_cluster(max_connections=8, superuser_reserved_connections=3)  # 5 usable
    cluster.execute("create role plain login password 'plainpw'")
    sessions.open(cluster, 5, user="plain", password="plainpw")  # every usable slot
    r = run_cli(capsys, "status", "--dsn", cluster.dsn, "--format", "json")
    summary = r.json()["summary"]
    assert (summary["used_slots"], summary["usable_slots"]) == (5, 5)
    assert summary["usage"] == 1.0
    r = run_cli(capsys, "status", "--dsn", cluster.dsn)
    assert "5/5 usable (100%)" in r.out


def test_11_when_even_the_reserve_is_full_the_fix_does_not_say_connect_as_superuser(
        make_cluster: Callable[..., EmbeddedPostgres], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = make_cluster(max_connections=5, superuser_reserved_connections=2)
    conns = [psycopg.connect(cluster.dsn) for _ in range(5)]  # superusers take the reserve too
    try:
        r = run_cli(capsys, "doctor", "--dsn", cluster.dsn, "--format", "json")
        assert r.code == 2
        [finding] = r.json()["findings"]
        assert finding["id"] == "server_full" and finding["evidence"]["reserve_full"] is True
        assert "not even a superuser" in finding["fix"]
        assert "connect as a superuser" not in finding["fix"]
        r = run_cli(capsys, "check", "--dsn", cluster.dsn, "--format", "json")
        server = next(s for s in r.json()["steps"] if s["name"] == "server")
        assert server["ok"] is False and "pg_terminate_backend" in server["fix"]
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("command", [["status"], ["top", "--once"], ["budget", "--sample", "0.1"],
                                     ["guard", "--once"]])
def test_a_full_server_says_what_to_do_in_every_command(
        make_cluster: Callable[..., EmbeddedPostgres], capsys: pytest.CaptureFixture[str],
        command: list[str]) -> None:
    cluster = make_cluster(max_connections=5, superuser_reserved_connections=2)
    cluster.execute("create role app login password 'app-pw'")
    app = cluster.conninfo(user="app", password="app-pw")
    conns = [psycopg.connect(app) for _ in range(3)]  # every slot an ordinary role may use
    try:
        r = run_cli(capsys, *command, "--dsn", app)
        assert r.code == 3
        [line] = r.err.strip().splitlines()
        assert "remaining connection slots are reserved" in line
        assert "run `pgwarden doctor` as a superuser" in line and "app-pw" not in line
    finally:
        for c in conns:
            c.close()


def test_11_bare_pgwarden_prints_the_help_and_exits_0(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    r = run_cli(capsys)
    assert r.code == 0
    assert "Usage: pgwarden" in r.out and "doctor" in r.out and r.err == ""


def test_11_json_target_is_the_same_in_every_command(pg: EmbeddedPostgres,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    targets = {run_cli(capsys, cmd, "--dsn", pg.dsn, "--format", "json").json()["target"]
               for cmd in ("check", "status", "doctor")}
    assert targets == {f"postgres@127.0.0.1:{pg.port}/postgres"}
