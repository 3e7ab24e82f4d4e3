"""The guard's configuration: TOML / dict / options to a Policy, with errors naming the key."""

from __future__ import annotations

import json

import pytest
from guard_helpers import session, snapshot

from pgwarden.errors import ConfigError, ConfigFileError
from pgwarden.guard import (
    DEFAULT_RULES,
    AuditLog,
    GuardMetrics,
    Policy,
    decide,
    load_policy,
    make_policy,
    parse_duration,
    parse_usage,
)
from pgwarden.guard.runner import Outcome, _record

FULL = """
enforce = true
interval = "30s"
audit_log = ["/var/log/pgwarden/guard.jsonl", "-"]

[limits]
max_per_pass = 5
max_per_minute = 20

[protect]
applications = ["psql", "backup-*"]
users = ["admin"]
networks = ["192.168.0.0/16", "local"]
allow_superuser = true
replication_roles = false

[emergency]
at = "80%"
target = 0.7
min_idle = "2min"

[rules.idle_in_transaction]
after = "5min"

[rules.idle_web]
kind = "idle"
after = 1800
only_above = 0.5
applications = ["web-*"]

[rules.reports]
kind = "active"
after = "1h"
databases = ["dwh"]
"""


def test_full_file_reads_every_key(tmp_path):
    path = tmp_path / "guard.toml"
    path.write_text(FULL)
    p = load_policy(path)
    assert p.enforce and p.interval == 30.0
    assert p.audit_log == ("/var/log/pgwarden/guard.jsonl", "-")
    assert (p.limits.max_per_pass, p.limits.max_per_minute) == (5, 20)
    assert p.protection.applications == ("psql", "backup-*")
    assert p.protection.allow_superuser and not p.protection.protect_replication_roles
    assert p.emergency is not None
    assert (p.emergency.at, p.emergency.target, p.emergency.min_idle) == (0.8, 0.7, 120.0)
    assert [(r.name, r.kind, r.after, r.action) for r in p.rules] == [
        ("idle_in_transaction", "idle_in_transaction", 300.0, "terminate"),
        ("idle_web", "idle", 1800.0, "terminate"),
        ("reports", "active", 3600.0, "cancel"),
    ]
    assert p.rules[1].only_above == 0.5 and p.rules[1].scope.applications == ("web-*",)
    assert Policy.from_toml(path) == p


def test_empty_file_gives_the_documented_defaults(tmp_path):
    path = tmp_path / "guard.toml"
    path.write_text("")
    p = load_policy(path)
    assert p == Policy()
    assert not p.enforce and p.interval == 10.0 and p.emergency is None
    assert p.rules == DEFAULT_RULES and p.rules[0].after == 600.0
    assert "psql" in p.protection.applications and "pg_dump*" in p.protection.applications


@pytest.mark.parametrize("data, key", [
    ({"rules": {"idle": {"after": -3}}}, "rules.idle.after"),
    ({"rules": {"active": {"after": 3, "only_above": 0.5}}}, "rules.active.only_above"),
    ({"rules": {"idle": {"after": 3, "colour": "red"}}}, "rules.idle.colour"),
    ({"rules": {"idle": {}}}, "rules.idle.after"),
    ({"rules": {"idle": {"after": 3, "applications": "web"}}}, None),
    ({"emergency": {"at": 1.5, "target": 0.5}}, "emergency.at"),
    ({"emergency": {"at": 0.8}}, "emergency.target"),
    ({"limits": {"max_per_pass": -1}}, "limits.max_per_pass"),
    ({"limits": {"max_per_pass": 2.5}}, "limits.max_per_pass"),
    ({"interval": 0}, "interval"),
    ({"protect": {"allow_superuser": "yes"}}, "protect.allow_superuser"),
    ({"protect": []}, "protect"),
])
def test_bad_values_name_the_key(data, key):
    if key is None:  # a single string is accepted as a one-element list
        assert Policy.from_dict(data).rules[0].scope.applications == ("web",)
        return
    with pytest.raises(ConfigFileError) as info:
        Policy.from_dict(data, source="guard.toml")
    assert info.value.key == key and info.value.path == "guard.toml"
    assert f"key '{key}'" in str(info.value)


def test_durations_and_usages():
    assert parse_duration(5) == 5.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("5min") == 300.0
    assert parse_duration("2h") == 7200.0
    assert parse_usage("80%") == 0.8 and parse_usage(0.7) == 0.7
    for bad in ("5 parsecs", -1, True, "soon"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_usage(1.5)


def test_options_override_the_file_and_name_rules():
    base = Policy.from_dict({"enforce": False, "rules": {"idle": {"after": 900,
                                                                   "users": ["app"]}}})
    p = make_policy(base, idle_after=60.0, idle_only_above=0.5, cancel_active_after=30.0,
                    emergency_at=0.9, max_per_pass=3, allow_superuser=True,
                    protect_applications=("cron-*",), enforce=True)
    assert p.enforce and p.limits.max_per_pass == 3 and p.protection.allow_superuser
    idle = next(r for r in p.rules if r.name == "idle")
    assert idle.after == 60.0 and idle.only_above == 0.5 and idle.scope.users == ("app",)
    assert [r.name for r in p.rules] == ["idle", "active"]
    assert p.emergency is not None and (p.emergency.at, p.emergency.target) == (0.9, 0.8)
    assert "cron-*" in p.protection.applications and "psql" in p.protection.applications
    # options that name a rule replace the default rule set
    assert [r.name for r in Policy.from_options(idle_after=5.0).rules] == ["idle"]
    assert Policy.from_options().rules == DEFAULT_RULES
    with pytest.raises(ConfigError, match="idle rule"):
        make_policy(idle_only_above=0.5)
    with pytest.raises(ConfigError, match="emergency"):
        make_policy(emergency_at=0.5, emergency_target=0.6)


def test_audit_record_has_every_documented_key(tmp_path):
    plan = decide(snapshot([session(10, "idle in transaction", 900)]), Policy())
    a = plan.actions[0]
    o = Outcome("2026-11-20T12:00:00.000Z", a.rule, a.kind, "would_terminate", None, a.reason,
                a.session)
    path = tmp_path / "audit.jsonl"
    with AuditLog([str(path)]) as log:
        log.write(_record(o, dry_run=True, usage=0.5, guard=1))
    [line] = path.read_text().splitlines()
    rec = json.loads(line)
    assert set(rec) == {
        "time", "dry_run", "action", "outcome", "skip", "reason", "rule", "pid", "user",
        "database", "application", "client_addr", "state", "backend_start", "idle_age",
        "xact_age", "query_age", "usage", "guard"}
    assert rec["idle_age"] == 900 and rec["rule"] == "idle_in_transaction"
    assert rec["reason"] == "idle in transaction 900s > 600s"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_metrics_keys():
    m = GuardMetrics()
    m.record_outcome(rule="idle", application="web", action="terminate", outcome="terminated",
                     skip=None)
    m.record_outcome(rule="idle", application="psql", action="terminate", outcome="skipped",
                     skip="protected")
    d = m.as_dict()
    assert d["terminations_total"] == [{"rule": "idle", "application": "web", "value": 1}]
    assert d["skipped_total"] == [{"rule": "idle", "skip": "protected", "value": 1}]
    assert {"rule": "idle", "application": "psql", "action": "terminate",
            "outcome": "skipped", "value": 1} in d["actions_total"]
    assert {"passes_total", "errors_total", "candidates_total", "pass_duration_seconds_last",
            "usage", "leader"} <= set(d)


def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path):
    """Both configuration files (guard, budget) are read by one reader (pgwarden.configfile);
    before it, only the budget's caught a file that is not UTF-8."""
    from pgwarden.budget.config import load_budget
    from pgwarden.errors import ConfigFileError
    from pgwarden.guard.config import load_policy

    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'interval = "10s"\n# caf\xe9\n')
    for load in (load_policy, load_budget):
        with pytest.raises(ConfigFileError) as info:
            load(bad)
        assert str(bad) in str(info.value) and "not valid TOML" in str(info.value)
