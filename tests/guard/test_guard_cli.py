"""``pgwarden guard`` as users run it: the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guard_helpers import app_params, guard_dsn, live_pids, read_audit, wait_until

from pgwarden.guard import Guard, Policy

pytestmark = pytest.mark.timeout(120)


def pgwarden(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "pgwarden", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False, **kwargs)


@pytest.mark.parametrize("text, key", [
    ('[rules.idle]\nafter = "soon"\n', "rules.idle.after"),
    ("[limits]\nmax_per_pas = 3\n", "limits.max_per_pas"),
    ("[emergency]\nat = 0.7\ntarget = 0.9\n", "emergency.target"),
    ('[rules.slow]\nkind = "sleepy"\nafter = 3\n', "rules.slow.kind"),
    ('[protect]\nnetworks = ["10.0.0.0/99"]\n', "protect.networks"),
    ("enforce = 'yes'\n", "enforce"),
    ("intervall = 3\n", "intervall"),
])
def test_malformed_config_is_one_clear_line_naming_the_key_and_the_guard_does_not_start(
        tmp_path, text, key):
    path = tmp_path / "guard.toml"
    path.write_text(text)
    # an unreachable DSN: had the guard started, it would say so (exit 3), not 78
    res = pgwarden("guard", "--config", str(path), "--dsn", "host=127.0.0.1 port=1")
    assert res.returncode == 78, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"pgwarden: error: {path}: key '{key}'")
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_config_that_is_not_toml(tmp_path):
    path = tmp_path / "guard.toml"
    path.write_text("enforce = \n")
    res = pgwarden("guard", "--config", str(path), "--once")
    assert res.returncode == 78
    assert res.stderr.startswith(f"pgwarden: error: {path}: not valid TOML")


def test_once_dry_run_json_then_enforced_text(gpg, sessions, tmp_path):
    conns = sessions.open(gpg, 2, application_name="cli-batch", state="idle in transaction",
                          **app_params())
    keep = sessions.open(gpg, 1, application_name="cli-keep", state="idle in transaction",
                         **app_params())
    time.sleep(0.5)
    args = ["guard", "--once", "--dsn", guard_dsn(gpg), "--idle-in-transaction-after", "0.2",
            "--application", "cli-batch"]
    res = pgwarden(*args, "--format", "json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["dry_run"] is True
    would = sorted(o["pid"] for o in report["outcomes"] if o["outcome"] == "would_terminate")
    assert would == sorted(sessions.pids(conns))
    assert set(sessions.pids(conns + keep)) <= live_pids(gpg)
    assert "guard-pw" not in res.stdout + res.stderr

    audit = tmp_path / "audit.jsonl"
    res = pgwarden(*args, "--enforce", "--audit-log", str(audit))
    assert res.returncode == 0, res.stderr
    assert "(enforcing)" in res.stdout and "2 terminated" in res.stdout
    records = read_audit(audit)
    assert {r["outcome"] for r in records} == {"terminating", "terminated"}
    # write-ahead: each action is announced before it is carried out
    for pid in sessions.pids(conns):
        assert [r["outcome"] for r in records if r["pid"] == pid] == ["terminating",
                                                                       "terminated"]
    wait_until(lambda: not (set(sessions.pids(conns)) & live_pids(gpg)))
    assert set(sessions.pids(keep)) <= live_pids(gpg)


def test_once_cannot_connect_exits_3():
    res = pgwarden("guard", "--once", "--dsn", "host=127.0.0.1 port=1 user=x password=secret",
                   "--connect-timeout", "2")
    assert res.returncode == 3
    assert "secret" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_daemon_reloads_on_sighup_and_exits_cleanly_on_sigterm(gpg, sessions, tmp_path):
    config: Path = tmp_path / "guard.toml"
    audit = tmp_path / "audit.jsonl"
    base = ('interval = 0.2\naudit_log = "{audit}"\n'
            '[rules.idle_in_transaction]\nafter = 0.2\napplications = ["hup-*"]\n')
    config.write_text("enforce = false\n" + base.format(audit=audit))
    [victim] = sessions.open(gpg, 1, application_name="hup-app", state="idle in transaction",
                             **app_params())
    pid = victim.info.backend_pid
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgwarden", "guard", "--config", str(config),
         "--dsn", guard_dsn(gpg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: any(r["outcome"] == "would_terminate" and r["pid"] == pid
                               for r in read_audit(audit)))
        assert pid in live_pids(gpg)
        config.write_text("enforce = true\n" + base.format(audit=audit))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: pid not in live_pids(gpg))
        # the audit record is written after pg_terminate_backend returns: wait for it too
        wait_until(lambda: any(r["outcome"] == "terminated" and r["pid"] == pid
                               for r in read_audit(audit)))
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped after" in err and "Traceback" not in err


def test_missing_permission_exits_4_with_the_grant(gpg):
    gpg.execute("create role nobody_special login password 'ns-pw'")
    res = pgwarden("guard", "--once", "--dsn",
                   gpg.conninfo(user="nobody_special", password="ns-pw"))
    assert res.returncode == 4
    assert "GRANT pg_monitor TO nobody_special;" in res.stderr
    assert "ns-pw" not in res.stderr and "Traceback" not in res.stderr


def test_once_enforce_is_standby_while_another_guard_acts(gpg, sessions):
    [victim] = sessions.open(gpg, 1, application_name="sb-app", state="idle in transaction",
                             **app_params())
    with Guard(guard_dsn(gpg), Policy(rules=()), enforce=True) as holder:
        assert holder.run_pass().leader
        res = pgwarden("guard", "--once", "--enforce", "--dsn", guard_dsn(gpg),
                       "--idle-in-transaction-after", "0", "--application", "sb-*")
        assert res.returncode == 0, res.stderr
        assert f"standby: guard backend {holder.connection.info.backend_pid}" in res.stdout
        assert victim.info.backend_pid in live_pids(gpg)
