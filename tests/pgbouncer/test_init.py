"""``pgwarden pgbouncer init``: the generated files start a real PgBouncer that serves psycopg
(sync and async), SQLAlchemy (psycopg and the asyncpg dialect) and asyncpg in transaction mode
with the settings init prints."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import psycopg
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from pgwarden.embedded import EmbeddedPostgres

from ..helpers import run_cli

BUDGET = """
[services.api]
kind = "psycopg_pool"
max_size = 6
user = "app"

[services.worker]
  [[services.worker.pools]]
  kind = "sqlalchemy"
  driver = "asyncpg"
  pool_size = 2
  max_overflow = 2
  [[services.worker.pools]]
  kind = "asyncpg"
  min_size = 1
  max_size = 4

[services.reports]
kind = "sqlalchemy"
driver = "psycopg"
pool_size = 2
user = "app"

[services.migrations]
kind = "fixed"
connections = 2
"""

APP_PW = "app-secret-pw"
ROUNDS = 12  # > psycopg's prepare_threshold (5) and asyncpg's statement reuse


@pytest.fixture
def server(make_cluster: Callable[..., EmbeddedPostgres]) -> EmbeddedPostgres:
    pg = make_cluster(max_connections=30)
    pg.execute(f"create role app login password '{APP_PW}'")
    pg.execute("create table items (id int primary key, n int)")
    pg.execute("insert into items select g, g from generate_series(1, 50) g")
    pg.execute("grant select, update on items to app")
    return pg


def _init(capsys: pytest.CaptureFixture[str], tmp_path: Path, server: EmbeddedPostgres,
          *extra: str) -> tuple[Any, Path]:
    budget = tmp_path / "budget.toml"
    budget.write_text(BUDGET.replace('user = "app"\n\n[services.worker]',
                                     'user = "app"\n\n[services.worker]\nuser = "app"'))
    out = tmp_path / "pgb"
    r = run_cli(capsys, "pgbouncer", "init", str(budget), "--dsn", server.url, "--out",
                str(out), "--format", "json", *extra)
    assert r.code == 0, r
    assert server.password not in r.out + r.err and APP_PW not in r.out + r.err
    return r.json(), out


def test_init_writes_sized_files_and_driver_settings(server: EmbeddedPostgres, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    j, out = _init(capsys, tmp_path, server)
    ini = (out / "pgbouncer.ini").read_text()
    assert "pool_mode = transaction" in ini
    # 27 usable - 3 headroom - 2 migrations (direct) = 22 server connections at most
    assert j["sizing"]["server_slots"] == 22 and j["sizing"]["max_db_connections"] == 22
    assert "max_db_connections = 22" in ini
    assert j["sizing"]["client_connections"] == 6 + 8 + 12
    assert oct(stat.S_IMODE(os.stat(out / "userlist.txt").st_mode)) == "0o600"
    userlist = (out / "userlist.txt").read_text()
    assert '"app" "SCRAM-SHA-256$' in userlist and APP_PW not in userlist
    drivers = {(s["service"], d["driver"]): d for s in j["services"] for d in s["drivers"]}
    if j["pgbouncer_version"] < "1.21":
        assert drivers[("api", "psycopg")]["settings"] == {"prepare_threshold": "None"}
        assert drivers[("worker", "asyncpg")]["settings"] == {"statement_cache_size": "0"}
        assert set(drivers[("worker", "sqlalchemy+asyncpg")]["settings"]) == {
            "statement_cache_size", "prepared_statement_cache_size",
            "prepared_statement_name_func"}
    assert next(s for s in j["services"] if s["service"] == "migrations")["direct"] is True
    # existing files are kept unless --force
    r = run_cli(capsys, "pgbouncer", "init", str(tmp_path / "budget.toml"), "--dsn",
                server.url, "--out", str(out))
    assert r.code == 64 and "--force" in r.err


def test_generated_ini_serves_every_driver(server: EmbeddedPostgres, tmp_path: Path,
                                           make_bouncer: Callable[..., Any],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, out = _init(capsys, tmp_path, server)
    bouncer = make_bouncer(include=out / "pgbouncer.ini")
    dsn = bouncer.conninfo(user="app", password=APP_PW, dbname="postgres")
    url = f"app:{APP_PW}@127.0.0.1:{bouncer.port}/postgres"

    # psycopg, sync: prepare_threshold=None (as init printed); two connections interleave
    c1 = psycopg.connect(dsn, prepare_threshold=None, autocommit=True)
    c2 = psycopg.connect(dsn, prepare_threshold=None, autocommit=True)
    for i in range(ROUNDS):
        for c in (c1, c2):
            with c.transaction():
                c.execute("update items set n = n + 1 where id = %s", (i + 1,))
            assert c.execute("select n from items where id = %s", (i + 1,)).fetchone()
    c1.close()
    c2.close()

    async def async_clients() -> None:
        # psycopg, async
        a1 = await psycopg.AsyncConnection.connect(dsn, prepare_threshold=None)
        a2 = await psycopg.AsyncConnection.connect(dsn, prepare_threshold=None)
        for i in range(ROUNDS):
            for a in (a1, a2):
                cur = await a.execute("select n from items where id = %s", (i + 1,))
                assert await cur.fetchone()
                await a.commit()
        await a1.close()
        await a2.close()
        # asyncpg: statement_cache_size=0
        pool = await asyncpg.create_pool(f"postgresql://{url}", min_size=2, max_size=4,
                                         statement_cache_size=0)
        async def one(i: int) -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("select n from items where id = $1", i % 50 + 1))
        results = await asyncio.gather(*(one(i) for i in range(ROUNDS * 4)))
        assert len(results) == ROUNDS * 4
        await pool.close()
        # SQLAlchemy's asyncpg dialect: the connect_args init printed
        engine = create_async_engine(
            f"postgresql+asyncpg://{url}", poolclass=NullPool,
            connect_args={"statement_cache_size": 0, "prepared_statement_cache_size": 0,
                          "prepared_statement_name_func": lambda: f"__asyncpg_{uuid4()}__"})
        async def sa(i: int) -> int:
            async with engine.begin() as conn:
                res = await conn.execute(sqlalchemy.text("select n from items where id = :i"),
                                         {"i": i % 50 + 1})
                return int(res.scalar_one())
        for _ in range(2):
            assert len(await asyncio.gather(*(sa(i) for i in range(ROUNDS)))) == ROUNDS
        await engine.dispose()

    asyncio.run(async_clients())

    # SQLAlchemy with psycopg: prepare_threshold=None through connect_args
    engine = sqlalchemy.create_engine(f"postgresql+psycopg://{url}", pool_size=2,
                                      connect_args={"prepare_threshold": None})
    for i in range(ROUNDS * 2):
        with engine.begin() as conn:
            assert conn.execute(sqlalchemy.text("select n from items where id = :i"),
                                {"i": i + 1}).scalar_one() is not None
    engine.dispose()
    pools = {(p["database"], p["user"]): p for p in bouncer.admin("SHOW POOLS")}
    assert pools[("postgres", "app")]["pool_mode"] == "transaction"


def test_auth_query_setup(server: EmbeddedPostgres, tmp_path: Path,
                          make_bouncer: Callable[..., Any],
                          capsys: pytest.CaptureFixture[str]) -> None:
    _j, out = _init(capsys, tmp_path, server, "--auth", "query")
    sql = out / "auth_query.sql"
    assert oct(stat.S_IMODE(os.stat(sql).st_mode)) == "0o600"
    text = sql.read_text()
    assert "SECURITY DEFINER" in text and "SCRAM-SHA-256$" in text
    assert "pgbouncer_auth" in (out / "userlist.txt").read_text()
    assert '"app"' not in (out / "userlist.txt").read_text()
    with server.connect() as conn:
        conn.execute(text.encode())
    bouncer = make_bouncer(include=out / "pgbouncer.ini")
    with psycopg.connect(bouncer.conninfo(user="app", password=APP_PW),
                         prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(bouncer.conninfo(user="app", password="wrong"))
