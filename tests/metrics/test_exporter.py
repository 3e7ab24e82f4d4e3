"""The exporter against real clusters: values match the sessions the test opened, up 0 / 1
across a stop and start, a full server, a role without pg_monitor, several targets, the
cardinality cap and the cache."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from pgwarden.embedded import EmbeddedPostgres, pgserver_bin_dir
from pgwarden.metrics import OTHER, Caps

from ..conftest import Sessions
from .helpers import (
    MON_PASSWORD,
    NOMON_PASSWORD,
    add_roles,
    app,
    exposition,
    label_values,
    mon_dsn,
    parse,
    scrape,
    scraper,
    total,
    value,
)

pytestmark = pytest.mark.timeout(120)


def test_values_match_the_sessions_opened(mpg: EmbeddedPostgres, sessions: Sessions) -> None:
    sessions.open(mpg, 3, application_name="vm-web", **app())
    in_tx = sessions.open(mpg, 2, application_name="vm-jobs", state="idle in transaction",
                          **app())
    tx_started = time.monotonic()
    sessions.open(mpg, 1, application_name="vm-batch", state="active", **app())
    idle_since = time.monotonic()
    time.sleep(1.5)
    s = scraper(mon_dsn(mpg))
    v = scrape(s)
    measured = time.monotonic()
    assert value(v, "pgwarden_up") == 1
    assert value(v, "pgwarden_sessions", application="vm-web", state="idle", user="app",
                 database="postgres") == 3
    assert value(v, "pgwarden_sessions", application="vm-jobs",
                 state="idle in transaction") == 2
    assert value(v, "pgwarden_sessions", application="vm-batch", state="active") == 1
    assert total(v, "pgwarden_sessions", application="vm-jobs") == 2
    # ages within a second of what the test measured on its side
    iit = value(v, "pgwarden_oldest_idle_in_transaction_seconds", application="vm-jobs")
    assert abs(iit - (measured - tx_started)) < 1.0, (iit, measured - tx_started)
    xact = value(v, "pgwarden_oldest_transaction_seconds", application="vm-jobs")
    assert abs(xact - (measured - tx_started)) < 1.0
    query = value(v, "pgwarden_oldest_query_seconds", application="vm-batch")
    assert abs(query - (measured - idle_since)) < 1.0
    idle = value(v, "pgwarden_oldest_idle_seconds", application="vm-web")
    assert 1.0 < idle < measured - tx_started + 1.0
    assert value(v, "pgwarden_oldest_idle_seconds", application="vm-jobs") == 0  # none idle
    # slots: usable = max_connections - superuser_reserved_connections (15: no reserved_...)
    used = value(v, "pgwarden_slots_used")
    assert used >= 6
    assert value(v, "pgwarden_slots_usable") == 40 - 3
    assert value(v, "pgwarden_slots_max") == 40
    assert value(v, "pgwarden_slots_reserved", kind="superuser") == 3
    assert value(v, "pgwarden_slots_usage_ratio") == pytest.approx(used / 37)
    assert value(v, "pgwarden_sessions_hidden") == 0
    assert value(v, "pgwarden_scrape_duration_seconds") > 0
    assert value(v, "pgwarden_server_info", sees_all_sessions="true", role="exp_mon") == 1
    assert value(v, "pgwarden_backends", backend_type="checkpointer") == 1
    # the exporter's own session is named and left out
    pids = {r[0] for r in mpg.execute("select pid from pg_stat_activity where "
                                      "application_name = 'pgwarden-exporter'")}
    assert len(pids) == 1
    assert "pgwarden-exporter" not in label_values(v, "pgwarden_sessions", "application")
    assert value(v, "pgwarden_doctor_findings", id="setting_idle_in_transaction_timeout",
                 severity="info") == 1
    s.close()
    assert len(in_tx) == 2


def test_new_sessions_counter(mpg: EmbeddedPostgres, sessions: Sessions) -> None:
    s = scraper(mon_dsn(mpg))
    before = value(scrape(s), "pgwarden_sessions_established_total")
    for _ in range(5):
        psycopg.connect(mpg.conninfo(application_name="ns-churn", **app())).close()
    after = value(scrape(s), "pgwarden_sessions_established_total")
    assert after - before >= 5
    s.close()


def test_lock_waits_and_who_blocks_them(mpg: EmbeddedPostgres, sessions: Sessions) -> None:
    mpg.execute("create table if not exists lk_t (id int)")
    mpg.execute("grant all on lk_t to app")
    [holder] = sessions.open(mpg, 1, application_name="lk-holder", **app())
    holder.execute("begin")
    holder.execute("lock table lk_t in access exclusive mode")
    [waiter] = sessions.open(mpg, 1, application_name="lk-waiter", **app())

    def wait_for_lock() -> None:
        try:
            waiter.execute("begin")
            waiter.execute("lock table lk_t in access exclusive mode")
        except psycopg.Error:
            pass

    t = threading.Thread(target=wait_for_lock, daemon=True)
    t.start()
    s = scraper(mon_dsn(mpg))
    deadline = time.monotonic() + 20
    v = scrape(s)
    while value(v, "pgwarden_lock_waiting_sessions", application="lk-waiter") == 0:
        assert time.monotonic() < deadline, "the waiter never waited"
        time.sleep(0.1)
        v = scrape(s)
    assert value(v, "pgwarden_lock_waiting_sessions", application="lk-waiter",
                 blocker_application="lk-holder") == 1
    assert value(v, "pgwarden_lock_blocking_sessions", application="lk-holder",
                 state="idle in transaction") == 1
    assert total(v, "pgwarden_doctor_findings", id="lock_blocking") == 1
    holder.execute("rollback")
    t.join(10)
    s.close()


def test_cardinality_cap(mpg: EmbeddedPostgres, sessions: Sessions) -> None:
    for i, n in enumerate((5, 4, 3, 2, 1)):
        sessions.open(mpg, n, application_name=f"cap-{i}", **app())
    s = scraper(mon_dsn(mpg), caps=Caps(applications=2))
    v = scrape(s)
    apps = label_values(v, "pgwarden_sessions", "application")
    assert apps == {"cap-0", "cap-1", OTHER}
    assert total(v, "pgwarden_sessions", application="cap-0") == 5
    assert total(v, "pgwarden_sessions", application="cap-1") == 4
    assert total(v, "pgwarden_sessions", application=OTHER) == value(
        v, "pgwarden_slots_used") - 9
    assert label_values(v, "pgwarden_oldest_idle_seconds", "application") <= apps
    s.close()


def test_cache_two_scrapes_within_the_interval_take_one_snapshot(
        mpg: EmbeddedPostgres, sessions: Sessions) -> None:
    s = scraper(mon_dsn(mpg), min_interval=60.0)
    first = scrape(s)
    sessions.open(mpg, 2, application_name="cache-new", **app())
    # several scrapers at once: still one snapshot
    threads = [threading.Thread(target=exposition, args=(s,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    second = scrape(s)
    assert value(first, "pgwarden_snapshots_total") == 1
    assert value(second, "pgwarden_snapshots_total") == 1
    assert second == first  # the same samples, served again
    assert "cache-new" not in label_values(second, "pgwarden_sessions", "application")
    fresh = scraper(mon_dsn(mpg), min_interval=0.0)
    assert total(scrape(fresh), "pgwarden_sessions", application="cache-new") == 2
    assert value(scrape(fresh), "pgwarden_snapshots_total") == 2
    s.close()
    fresh.close()


def test_role_without_pg_monitor_sees_counts_not_states(
        mpg: EmbeddedPostgres, sessions: Sessions) -> None:
    sessions.open(mpg, 3, application_name="nm-app", state="idle in transaction", **app())
    s = scraper(mpg.conninfo(user="exp_nomon", password=NOMON_PASSWORD))
    v = scrape(s)
    assert value(v, "pgwarden_up") == 1
    assert value(v, "pgwarden_sessions", application="nm-app", state="(hidden)") == 3
    assert value(v, "pgwarden_sessions_hidden") >= 3
    assert value(v, "pgwarden_server_info", sees_all_sessions="false") == 1
    assert total(v, "pgwarden_doctor_findings", id="limited_visibility") == 1
    assert value(v, "pgwarden_oldest_idle_in_transaction_seconds", application="nm-app") == 0
    s.close()


def test_up_0_when_the_server_stops_and_1_when_it_is_back(
        make_cluster: Callable[..., EmbeddedPostgres], sessions: Sessions,
        caplog: pytest.LogCaptureFixture) -> None:
    cluster = make_cluster(max_connections=20)
    sessions.open(cluster, 2, application_name="ud-app")
    s = scraper(cluster.dsn)
    assert value(scrape(s), "pgwarden_up") == 1
    cluster.stop()
    with caplog.at_level(logging.DEBUG, logger="pgwarden.metrics"):
        down = scrape(s)
        again = scrape(s)
    assert value(down, "pgwarden_up") == 0 and value(again, "pgwarden_up") == 0
    assert "pgwarden_sessions" not in down  # no stale numbers while it is down
    assert value(again, "pgwarden_scrape_errors_total") == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one line, not one a scrape
    line = warnings[0].getMessage()
    assert "pgwarden_up 0" in line and cluster.password not in line
    assert "\n" not in line
    cluster.start()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pgwarden.metrics"):
        back = scrape(s)
    assert value(back, "pgwarden_up") == 1
    assert value(back, "pgwarden_snapshots_total") == 2
    assert any("is back" in r.getMessage() for r in caplog.records)
    s.close()


def test_full_server(make_cluster: Callable[..., EmbeddedPostgres], sessions: Sessions,
                     caplog: pytest.LogCaptureFixture) -> None:
    cluster = add_roles(make_cluster(max_connections=8))
    connected = scraper(mon_dsn(cluster))
    assert value(scrape(connected), "pgwarden_up") == 1
    # fill every usable slot (8 - 3 reserved for superusers; the connected exporter holds one)
    conns = sessions.open(cluster, 4, application_name="full-hog", **app())
    with caplog.at_level(logging.WARNING, logger="pgwarden.metrics"):
        late = scraper(mon_dsn(cluster))
        v_late = scrape(late)
    assert value(v_late, "pgwarden_up") == 0
    [line] = [r.getMessage() for r in caplog.records]
    assert "reserved" in line or "too many" in line, line
    assert MON_PASSWORD not in line
    # the exporter that was connected keeps its slot and says the server is full
    v = scrape(connected)
    assert value(v, "pgwarden_up") == 1
    assert value(v, "pgwarden_slots_usage_ratio") >= 0.8
    assert value(v, "pgwarden_doctor_findings", id="saturation", severity="warning") + value(
        v, "pgwarden_doctor_findings", id="saturation", severity="critical") == 1
    conns[0].close()
    deadline = time.monotonic() + 20
    while value(scrape(late), "pgwarden_up") != 1:
        assert time.monotonic() < deadline, "the late exporter never got in"
        time.sleep(0.2)
    connected.close()
    late.close()


def test_several_targets_get_a_target_label_without_passwords(
        mpg: EmbeddedPostgres, make_cluster: Callable[..., EmbeddedPostgres],
        sessions: Sessions) -> None:
    other = make_cluster(max_connections=20)
    sessions.open(mpg, 2, application_name="mt-a", **app())
    sessions.open(other, 1, application_name="mt-b")
    a, b = scraper(mon_dsn(mpg)), scraper(other.dsn)
    text = exposition(a, b)
    v = parse(text)
    la, lb = f"exp_mon@127.0.0.1:{mpg.port}/postgres", f"postgres@127.0.0.1:{other.port}/postgres"
    assert label_values(v, "pgwarden_up", "target") == {la, lb}
    assert value(v, "pgwarden_sessions", target=la, application="mt-a") == 2
    assert value(v, "pgwarden_sessions", target=lb, application="mt-b") == 1
    assert value(v, "pgwarden_sessions", target=lb, application="mt-a") == 0
    # one family per metric (one HELP line), never a password
    assert text.count("# HELP pgwarden_up ") == 1
    for secret in (MON_PASSWORD, other.password, mpg.password):
        assert secret not in text
    other.stop()
    v = scrape(a, b)
    assert value(v, "pgwarden_up", target=la) == 1 and value(v, "pgwarden_up", target=lb) == 0
    a.close()
    b.close()


def test_postgresql_16_reserved_connections_are_not_usable(
        make_cluster: Callable[..., EmbeddedPostgres]) -> None:
    bin_dir = pgserver_bin_dir()
    if bin_dir is None:
        pytest.skip("needs the pgserver wheel's PostgreSQL 16 (pip install pgserver)")
    pg16 = make_cluster(bin_dir=bin_dir, max_connections=12, settings={"reserved_connections": 2})
    if pg16.execute("show server_version_num")[0][0] < "160000":
        pytest.skip("reserved_connections needs PostgreSQL 16")
    s = scraper(pg16.dsn)
    v = scrape(s)
    assert value(v, "pgwarden_slots_usable") == 12 - 3 - 2
    assert value(v, "pgwarden_slots_reserved", kind="reserved") == 2
    s.close()
