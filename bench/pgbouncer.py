"""500 clients against max_connections=100: directly, and through the PgBouncer that
``pgwarden pgbouncer init`` configures.

One run on an embedded PostgreSQL (loopback only) with ``max_connections=100``:

- ``direct``: 500 asyncio psycopg clients connect at once and run short transactions (one
  indexed read in ``BEGIN`` / ``COMMIT``) for ``--seconds`` (10); a client the server refuses
  counts an error and tries again 100 ms later;
- ``pgbouncer``: the same 500 clients through a real PgBouncer written by
  ``pgwarden.pgbouncer.plan.make_plan`` from a budget of one service with 500 connections
  (transaction mode, ``max_db_connections`` within the usable slots), with the driver setting
  it prints (``prepare_threshold=None``);
- ``doctor``: one doctor pass (PostgreSQL snapshot + PgBouncer admin console + rules) while the
  500 clients are connected through PgBouncer.

Targets (issue 11): 0 errors through PgBouncer; report the throughput ratio; the doctor pass
under 250 ms. asyncio connections, not threads: 500 threads on 2 cores would measure the GIL.

Usage: python bench/pgbouncer.py [--clients 500] [--seconds 10]
Writes bench/results/pgbouncer.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from _pool_common import environment, print_table, write_results
from pgwarden.budget import Budget, Pool, Service, slots_for
from pgwarden.conninfo import resolve
from pgwarden.diagnose import classify
from pgwarden.doctor.run import examine
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.embedded_pgbouncer import EmbeddedPgBouncer
from pgwarden.pgbouncer.ini import auth_file_text
from pgwarden.pgbouncer.plan import make_plan
from pgwarden.pgbouncer.version import installed_version
from pgwarden.sources import postgres

APP_PW = "bench-app-pw"


async def load(dsn: str, clients: int, seconds: float, during: Any = None) -> dict[str, Any]:
    """``clients`` clients running short transactions for ``seconds``; ``during`` (a sync
    callable) runs once in a thread halfway through."""
    errors: Counter[str] = Counter()
    done = [0]
    latencies: list[float] = []
    start = time.monotonic()
    end = start + seconds
    connected = [0]

    async def client(i: int) -> None:
        conn = None
        while time.monotonic() < end:
            if conn is None:
                try:
                    conn = await psycopg.AsyncConnection.connect(
                        dsn, autocommit=True, prepare_threshold=None, connect_timeout=10)
                    connected[0] += 1
                except psycopg.OperationalError as exc:
                    f = classify(exc, connecting=True)
                    errors[f"connect: {f.diagnosis.id if f.diagnosis else f.said[:60]}"] += 1
                    await asyncio.sleep(0.1)
                    continue
            t0 = time.perf_counter()
            try:
                async with conn.transaction():
                    await conn.execute("select n from items where id = %s", (i % 100 + 1,))
                done[0] += 1
                latencies.append(time.perf_counter() - t0)
            except psycopg.Error as exc:
                f = classify(exc)
                errors[f"transaction: {f.diagnosis.id if f.diagnosis else f.said[:60]}"] += 1
                if conn.closed:
                    conn = None
        if conn is not None:
            await conn.close()

    side: dict[str, Any] = {}

    async def halfway() -> None:
        await asyncio.sleep(seconds / 2)
        if during is not None:
            side["result"] = await asyncio.to_thread(during)

    await asyncio.gather(halfway(), *(client(i) for i in range(clients)))
    elapsed = time.monotonic() - start
    lat = sorted(latencies)
    return {
        "transactions": done[0],
        "tps": round(done[0] / elapsed, 1),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "connected_clients": connected[0],
        "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None,
        "side": side.get("result"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    version = installed_version()
    if version is None:
        print("pgbouncer is not installed: apt-get install pgbouncer")
        return 1
    with EmbeddedPostgres(max_connections=100) as pg:
        pg.execute(f"create role app login password '{APP_PW}'")
        pg.execute("create table items (id int primary key, n int)")
        pg.execute("insert into items select g, g from generate_series(1, 100) g")
        pg.execute("grant select on items to app")
        direct = asyncio.run(load(pg.conninfo(user="app", password=APP_PW,
                                              application_name="bench-direct"),
                                  args.clients, args.seconds))
        with pg.connect() as conn:
            settings = postgres.read_settings(conn)
            secrets = postgres.role_secrets(conn, ["app"])
        budget = Budget(services=(Service(name="web", user="app", pools=(
            Pool("psycopg_pool", {"min_size": 1, "max_size": args.clients}, "psycopg"),)),))
        slots = slots_for(budget, max_connections=settings.max_connections,
                          superuser_reserved_connections=settings.superuser_reserved_connections,
                          reserved_connections=settings.reserved_connections)
        with tempfile.TemporaryDirectory(prefix="pgwarden-bench-") as tmp:
            auth = Path(tmp) / "userlist.txt"
            auth.write_text(auth_file_text(secrets))
            os.chmod(auth, 0o600)
            plan = make_plan(budget, slots, server_host=pg.host, server_port=pg.port,
                             default_database="postgres", default_user="app", version=version,
                             auth_file=str(auth))
            ini = Path(tmp) / "pgbouncer.ini"
            ini.write_text(plan.ini())
            with EmbeddedPgBouncer(include=ini) as bouncer:
                pg_target = resolve(pg.url, command="doctor")
                bt = resolve(bouncer.admin_url, command="doctor")

                def doctor_pass() -> dict[str, Any]:
                    times = []
                    report = None
                    for _ in range(5):
                        t0 = time.perf_counter()
                        report = examine(pg_target, pgbouncer=bt)
                        times.append((time.perf_counter() - t0) * 1000)
                    assert report is not None
                    return {"median_ms": round(statistics.median(times), 1),
                            "max_ms": round(max(times), 1),
                            "clients_seen": report.pgbouncer["clients"],
                            "findings": [f.id for f in report.findings]}

                pooled = asyncio.run(load(
                    bouncer.conninfo(user="app", password=APP_PW,
                                     application_name="bench-pgbouncer"),
                    args.clients, args.seconds, during=doctor_pass))
    doctor = pooled.pop("side")
    direct.pop("side")
    ratio = pooled["tps"] / direct["tps"] if direct["tps"] else None
    rows = [
        ["direct", direct["connected_clients"], direct["transactions"], direct["tps"],
         direct["errors"], direct["p50_ms"], direct["p99_ms"], "1.00x"],
        ["through PgBouncer", pooled["connected_clients"], pooled["transactions"],
         pooled["tps"], pooled["errors"], pooled["p50_ms"], pooled["p99_ms"],
         f"{ratio:.2f}x" if ratio else "-"],
    ]
    print(f"{args.clients} clients, {args.seconds:g} s, max_connections=100, PgBouncer "
          f"{version} (max_db_connections {plan.sizing.max_db_connections}, "
          f"max_client_conn {plan.sizing.max_client_conn})")
    print_table(["path", "successful connects", "transactions", "tps", "errors", "p50 ms",
                 "p99 ms", "tps vs direct"], rows)
    print(f"direct errors: {direct['errors_by_kind']}")
    print(f"doctor pass (PostgreSQL + PgBouncer + rules) at {doctor['clients_seen']} PgBouncer "
          f"clients: median {doctor['median_ms']} ms, max {doctor['max_ms']} ms")
    ok = pooled["errors"] == 0 and doctor["median_ms"] < 250
    print(f"targets: 0 errors through PgBouncer ({pooled['errors']}), doctor pass < 250 ms "
          f"({doctor['median_ms']} ms): {'met' if ok else 'NOT met'}")
    write_results("pgbouncer", {
        "clients": args.clients, "seconds": args.seconds, "max_connections": 100,
        "pgbouncer_version": str(version), "direct": direct, "pgbouncer": pooled,
        "throughput_ratio": round(ratio, 2) if ratio else None, "doctor": doctor,
        "sizing": {"max_db_connections": plan.sizing.max_db_connections,
                   "default_pool_size": plan.sizing.default_pool_size,
                   "max_client_conn": plan.sizing.max_client_conn},
        "targets_met": ok, "environment": environment()})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
