"""contrib/: the alerting rules pass promtool (check and unit tests) and the dashboard asks only
for metrics pgwarden serves; docs name every metric."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pgwarden.metrics import GUARD_METRICS, PGBOUNCER_METRICS, POOL_METRICS, SERVER_METRICS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "pgwarden-alerts.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "pgwarden-alerts.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "pgwarden.json"
#: The pools' metrics the rules and the dashboard were written against.
USED_POOL_METRICS = {"pgwarden_pool_requests_waiting", "pgwarden_pool_timeouts_total",
                     "pgwarden_pool_leaks_total"}
POOL_SERIES = {s.exposed_name + suffix for s in POOL_METRICS
               for suffix in (("_bucket", "_count", "_sum") if s.kind == "histogram" else ("",))}
SERVED = ({s.exposed_name for s in (*SERVER_METRICS, *PGBOUNCER_METRICS)} | POOL_SERIES
          | {"up"})


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    return path


def test_alerting_rules_pass_promtool_check() -> None:
    res = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 12 rules found" in res.stdout


def test_alerting_rules_fire_as_their_unit_tests_say() -> None:
    res = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True,
                         text=True, timeout=60, check=False, cwd=RULES.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(pgwarden_[a-z_]+|up)\b(?=\s*[{\[)]|\s*$|\s*[><=])", expr))
    return {n for n in names if n not in ("by", "without")}


def test_rules_and_dashboard_use_only_metrics_pgwarden_serves() -> None:
    exprs = re.findall(r"expr: (.+)", RULES.read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used - SERVED == set()
    assert {"pgwarden_slots_usage_ratio", "pgwarden_oldest_idle_in_transaction_seconds",
            "pgwarden_up", "pgwarden_pgbouncer_up", "pgwarden_pgbouncer_pool_clients",
            "pgwarden_pgbouncer_pool_client_maxwait_seconds"} | USED_POOL_METRICS <= used
    assert USED_POOL_METRICS <= POOL_SERIES  # the names contrib was written against are served


def test_every_metric_is_documented() -> None:
    docs = (ROOT / "docs" / "exporter.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for spec in (*SERVER_METRICS, *GUARD_METRICS, *POOL_METRICS, *PGBOUNCER_METRICS):
        assert f"`{spec.exposed_name}`" in docs, spec.exposed_name
    for spec in (*SERVER_METRICS, *POOL_METRICS):
        assert f"`{spec.exposed_name}`" in readme, spec.exposed_name


def test_the_cli_documents_the_library_defaults() -> None:
    from pgwarden.cli import exporter as cli_exporter
    from pgwarden.metrics import server

    assert cli_exporter.DEFAULT_MIN_INTERVAL == server.DEFAULT_MIN_INTERVAL
    assert cli_exporter.DEFAULT_MAX_LABELS == server.DEFAULT_MAX_APPLICATIONS == (
        server.DEFAULT_MAX_USERS) == server.DEFAULT_MAX_DATABASES
