"""``pgwarden demo``: the failures pgwarden exists for, on a throwaway PostgreSQL, in a minute.

On an embedded cluster with ``max_connections=20`` four simulated services run as the ordinary
role ``app``:

- ``api``: a healthy pool of 3 connections doing short queries;
- ``worker``: leaks connections the way ``getconn()`` without ``putconn()`` on an error path
  does, through a :class:`pgwarden.ConnectionPool` that warns about each leak and lists its
  holders;
- ``report-job``: opens a transaction, locks a row and goes idle; ``billing`` waits on that lock;
- ``bot``: opens a new connection for every request.

The server fills up and the bot gets ``FATAL: sorry, too many clients already``. The doctor,
connecting through the superuser reserve, names each culprit with its fix; the guard then frees
the slots by policy and the bot connects again. Last, the server is restarted under the load of
a :class:`pgwarden.ConnectionPool`, whose callers see no failed checkout or statement; a
SQLAlchemy app leaks sessions until its QueuePool times out, and with ``pgwarden.instrument``
the timeout names the file and line holding each connection; and 60 clients connect at
once: directly most are refused (too many clients), through a real
PgBouncer configured by ``pgwarden pgbouncer init``'s plan all are served (skipped, saying how
to install it, where pgbouncer is not installed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .conninfo import resolve
from .diagnose import server_message
from .doctor.report import render_report
from .doctor.rules import Thresholds
from .doctor.run import examine
from .embedded import EmbeddedPostgres
from .guard import Guard, Policy
from .pool import ConnectionPool
from .sources import postgres

__all__ = ["Demo"]

APP_PASSWORD = "demo-app-password"  # noqa: S105 - a throwaway loopback-only cluster


class Demo:
    """The demo's services on one embedded cluster. Use as a context manager."""

    def __init__(self, console: Console, *, max_connections: int = 20) -> None:
        self.console = console
        self.pg = EmbeddedPostgres(max_connections=max_connections,
                                   superuser_reserved_connections=3)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.conns: list[psycopg.Connection[Any]] = []
        self.lock = threading.Lock()
        self.bot_ok = 0
        self.bot_refused = 0
        self.first_refusal: str | None = None
        self.pg.execute(f"create role app login password '{APP_PASSWORD}'")
        self.pg.execute("create table orders (id int primary key, total numeric)")
        self.pg.execute("insert into orders select g, g * 10 from generate_series(1, 100) g")
        self.pg.execute("grant select, update on orders to app")
        self.failed_jobs: list[tuple[int, Any]] = []
        self.cached_sessions: list[Any] = []
        self.worker_pool: ConnectionPool[Any] = ConnectionPool(
            self.conninfo("worker"), kwargs={"autocommit": True}, min_size=0, max_size=12,
            name="worker",
            leak_threshold=1.0, timeout=5.0,
        )

    def conninfo(self, application_name: str) -> str:
        return self.pg.conninfo(user="app", password=APP_PASSWORD,
                                application_name=application_name)

    def _connect(self, application_name: str) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.conninfo(application_name), autocommit=True)
        with self.lock:
            self.conns.append(conn)
        return conn

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def say(self, who: str, text: str, style: str = "") -> None:
        self.console.print(f"[bold]{who:>11}[/] [{style or 'default'}]{escape(text)}[/]")

    # -- the services -----------------------------------------------------------------------

    def api(self) -> None:
        pool = [self._connect("api") for _ in range(3)]
        self.say("api", "pool of 3 connections, short queries: healthy", "green")
        i = 0
        while not self.stop.is_set():
            with contextlib.suppress(psycopg.Error):
                pool[i % 3].execute("select count(*) from orders").fetchone()
            i += 1
            self.stop.wait(0.05)

    def worker(self, leaks: int) -> None:
        for job in range(leaks):
            self.sync_order(job + 1)
            self.stop.wait(0.15)
        self.say("worker", f"leaked {leaks} connections: getconn() without putconn() when a job "
                 "raised", "yellow")
        self.stop.wait(3600)

    def sync_order(self, order_id: int) -> None:
        """The bug: the error path never returns the connection (and the failed job, kept for
        a retry, keeps a reference to it, so not even garbage collection gives it back)."""
        conn = self.worker_pool.getconn()
        self.failed_jobs.append((order_id, conn))
        try:
            conn.execute("select total from orders where id = %s", (order_id,))
            raise ValueError("payment provider timed out")
        except ValueError:
            return  # pool.putconn(conn) never runs on this path
        self.worker_pool.putconn(conn)

    def report_job(self) -> None:
        conn = self._connect("report-job")
        conn.execute("begin")
        conn.execute("select * from orders where id = 1 for update")
        self.say("report-job", "opened a transaction, locked order 1, went to fetch a report "
                 "over HTTP (idle in transaction)", "yellow")
        self.stop.wait(3600)

    def billing(self) -> None:
        conn = self._connect("billing")
        self.say("billing", "UPDATE orders SET total = ... WHERE id = 1  (waits for the lock)",
                 "yellow")
        with contextlib.suppress(psycopg.Error):
            conn.execute("update orders set total = total + 1 where id = 1")
            self.say("billing", "lock released, update done", "green")

    def bot(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.conninfo("bot"), connect_timeout=3) as conn:
                    conn.execute("select 1").fetchone()
                with self.lock:
                    self.bot_ok += 1
            except psycopg.OperationalError as exc:
                with self.lock:
                    self.bot_refused += 1
                    if self.first_refusal is None:
                        self.first_refusal = server_message(exc)
            self.stop.wait(0.02)

    # -- the story --------------------------------------------------------------------------

    def usage(self) -> str:
        with psycopg.connect(self.pg.conninfo(application_name="pgwarden-demo"),
                             autocommit=True) as conn:
            snap = postgres.take(conn)
        return f"{snap.used_slots}/{snap.usable_slots} usable slots in use ({snap.usage:.0%})"

    def run(self) -> int:
        pool_log = logging.getLogger("pgwarden.pool")
        handler = _FirstLine(self)
        pool_log.addHandler(handler)
        propagate, pool_log.propagate = pool_log.propagate, False
        try:
            return self._run()
        finally:
            pool_log.removeHandler(handler)
            pool_log.propagate = propagate

    def _run(self) -> int:
        c = self.console
        c.rule("[bold]pgwarden demo")
        c.print(f"PostgreSQL on 127.0.0.1:{self.pg.port}, max_connections=20 "
                "(17 usable by the app role, 3 reserved for superusers)\n")
        self._spawn("api", self.api)
        time.sleep(0.3)
        self._spawn("report-job", self.report_job)
        time.sleep(0.3)
        self._spawn("billing", self.billing)
        for i in range(3):
            self._spawn(f"bot-{i}", self.bot)
        self.say("bot", "3 threads, a new connection for every request", "yellow")
        self._spawn("worker", self.worker, 10)
        deadline = time.monotonic() + 15
        while self.first_refusal is None and time.monotonic() < deadline:
            time.sleep(0.1)
        c.print()
        if self.first_refusal:
            self.say("bot", self.first_refusal, "bold red")
        c.print(f"\n[bold]server:[/] {self.usage()}; bot requests ok {self.bot_ok}, "
                f"refused {self.bot_refused}")
        time.sleep(2.5)  # let the leaked and idle sessions age past the demo's thresholds

        c.rule("[bold]pgwarden doctor  [dim](as superuser, through the reserved slots)")
        target = resolve(self.pg.url, command="doctor")
        thresholds = Thresholds(idle_after=2.0, idle_in_transaction_after=2.0,
                                idle_hoarding_min_sessions=3, churn_min_young=2)
        report = examine(target, thresholds=thresholds, sample=1.0)
        render_report(c, report)
        culprits = {a for f in report.findings
                    if f.severity != "info" and f.id != "saturation" for a in f.applications}
        c.print(f"\n[bold]doctor status {report.status}[/]; applications named: "
                f"{', '.join(sorted(culprits))}")
        holders = self.worker_pool.holders()
        c.rule("[bold]inside the worker: pgwarden.ConnectionPool.holders()")
        c.print(f"the worker's pgwarden pool knows who holds its {len(holders)} connections "
                "(it also logged each one as a leak after leak_threshold=1 s):")
        for h in holders[:3]:
            c.print(f"  {escape(h.describe())}")
        if len(holders) > 3:
            c.print(f"  ... and {len(holders) - 3} more")
        self.guard()
        self.restart()
        self.sqlalchemy_leak()
        self.scale_out()
        return 0

    def export_invoices(self, engine: Any, month: int) -> None:
        """The bug: the session is cached for a retry that never comes, so its connection is
        never returned to SQLAlchemy's pool."""
        from sqlalchemy import text
        from sqlalchemy.orm import Session

        session = Session(engine)
        session.execute(text("select count(*) from orders where id % 12 = :m"), {"m": month})
        self.cached_sessions.append(session)  # session.close() never runs

    def sqlalchemy_leak(self) -> None:
        """A SQLAlchemy app leaks sessions until its QueuePool times out; instrumented, the
        timeout names the file and line holding each connection."""
        c = self.console
        c.rule("[bold]a SQLAlchemy app that leaks a session  [dim](pgwarden.instrument(engine))")
        try:
            import sqlalchemy
        except ImportError:
            c.print('SQLAlchemy is not installed: pip install "sqlalchemy>=2"; skipping this '
                    "scene")
            return
        from .integrations import instrument

        url = (f"postgresql+psycopg://app:{APP_PASSWORD}@{self.pg.host}:{self.pg.port}/postgres"
               "?application_name=shop")
        engine = sqlalchemy.create_engine(url, pool_size=2, max_overflow=0, pool_timeout=1.0)
        handle = instrument(engine, name="shop")
        try:
            for month in (1, 2):
                self.export_invoices(engine, month)
            self.say("shop", "exported invoices twice; each export kept its session open",
                     "yellow")
            try:
                with engine.connect():
                    pass
            except sqlalchemy.exc.TimeoutError as exc:
                self.say("shop", f"{type(exc).__module__}.{type(exc).__qualname__} (a "
                         "sqlalchemy.exc.TimeoutError):", "bold red")
                c.print(escape(str(exc).split(" (Background on this error")[0]))
        finally:
            for session in self.cached_sessions:
                session.close()
            self.cached_sessions.clear()
            handle.remove()
            engine.dispose()

    def scale_out(self, clients: int = 60) -> None:
        """Scale out: ``clients`` clients at once, directly (the server refuses most: too many
        clients) and through a real PgBouncer that ``pgwarden pgbouncer init``'s plan
        configures (all served). Skipped, with how to install it, without pgbouncer."""
        import asyncio
        import tempfile
        from pathlib import Path

        from .budget import Budget, Pool, Service, slots_for
        from .embedded_pgbouncer import EmbeddedPgBouncer, pgbouncer_available
        from .pgbouncer.ini import auth_file_text
        from .pgbouncer.plan import make_plan
        from .pgbouncer.version import installed_version

        c = self.console
        c.rule(f"[bold]scale out: {clients} clients at once, directly and through PgBouncer")
        version = installed_version()
        if not pgbouncer_available() or version is None:
            c.print("pgbouncer is not installed: apt-get install pgbouncer (Debian/Ubuntu), "
                    "dnf install pgbouncer, brew install pgbouncer; skipping this scene")
            return
        direct = asyncio.run(_wave(self.conninfo("scale-direct"), clients))
        self.say("direct", f"{direct.ok} of {clients} clients served, {direct.failed} refused"
                 + (f" ({direct.first_error})" if direct.first_error else ""),
                 "bold red" if direct.failed else "green")
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            settings = postgres.read_settings(conn)
            secrets = postgres.role_secrets(conn, ["app"])
        budget = Budget(services=(Service(name="web", user="app", pools=(
            Pool("psycopg_pool", {"min_size": 1, "max_size": clients}, "psycopg"),)),))
        slots = slots_for(budget, max_connections=settings.max_connections,
                          superuser_reserved_connections=settings.superuser_reserved_connections,
                          reserved_connections=settings.reserved_connections)
        with tempfile.TemporaryDirectory(prefix="pgwarden-demo-") as tmp:
            auth = Path(tmp) / "userlist.txt"
            auth.write_text(auth_file_text({u: v for u, v in secrets.items() if v}))
            os.chmod(auth, 0o600)
            plan = make_plan(budget, slots, server_host=self.pg.host, server_port=self.pg.port,
                             default_database="postgres", default_user="app",
                             version=version, auth_file=str(auth))
            ini = Path(tmp) / "pgbouncer.ini"
            ini.write_text(plan.ini())
            with EmbeddedPgBouncer(include=ini) as bouncer:
                dsn = bouncer.conninfo(user="app", password=APP_PASSWORD,
                                       application_name="scale-pooled")
                pooled = asyncio.run(_wave(dsn, clients))
                servers = max((p["sv_active"] + p["sv_idle"] + p["sv_used"]
                               for p in bouncer.admin("SHOW POOLS")
                               if p["database"] == "postgres"), default=0)
        s = plan.sizing
        self.say("pgbouncer", f"{pooled.ok} of {clients} clients served, {pooled.failed} "
                 f"refused, through PgBouncer {version} (transaction mode, max_client_conn "
                 f"{s.max_client_conn}, max_db_connections {s.max_db_connections}, "
                 f"{servers} server connections)", "green" if not pooled.failed else "bold red")

    def restart(self) -> None:
        """A fast restart of the server while 4 threads query through a pgwarden pool."""
        c = self.console
        c.rule("[bold]pgwarden.ConnectionPool through a server restart  "
               "[dim](pg_ctl restart -m fast)")
        self.stop.set()  # the story so far is over: its services stop
        for t in self.threads:
            t.join(timeout=5)
        errors: Counter[str] = Counter()
        served: list[float] = []
        stop = threading.Event()
        pool: ConnectionPool[Any] = ConnectionPool(self.conninfo("api-v2"), min_size=4,
                                                   name="api-v2", timeout=10.0)
        with pool:
            pool.wait(10)

            def work() -> None:
                while not stop.is_set():
                    where = "at checkout"
                    try:
                        with pool.connection() as conn:
                            where = "in statements"
                            conn.execute("select count(*) from orders, pg_sleep(0.05)").fetchone()
                            where = "at COMMIT"
                    except psycopg.Error:
                        with self.lock:
                            errors[where] += 1
                    else:
                        with self.lock:
                            served.append(time.monotonic())
                    stop.wait(0.002)

            threads = [threading.Thread(target=work, name=f"api-v2-{i}", daemon=True)
                       for i in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            began = time.monotonic()
            self.pg.restart()
            back = time.monotonic()
            deadline = back + 10
            while time.monotonic() < deadline and not any(t > back for t in served):
                time.sleep(0.005)
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(15)
            stats = pool.get_stats()
        first = next((t for t in served if t > back), None)
        after = f"{(first - back) * 1000:.0f} ms" if first is not None else "not within 10 s"
        self.say("api-v2", f"4 threads, one 50 ms query after another through "
                 f"pgwarden.ConnectionPool: {len(served)} queries served", "green")
        c.print(f"errors seen by the threads: {errors['at checkout']} at checkout, "
                f"{errors['in statements']} in statements, {errors['at COMMIT']} at COMMIT")
        if errors["at COMMIT"]:
            c.print("(a COMMIT that the shutdown interrupts is reported: the server rolled the "
                    "transaction back)")
        c.print(f"{stats['statements_replayed']} statements killed by the shutdown were run "
                f"again on the restarted server; pg_ctl restart took "
                f"{(back - began) * 1000:.0f} ms, and the pool served queries again {after} "
                "after it returned")

    def guard(self) -> None:
        """One enforcing guard pass, then the server's usage and the bot again."""
        c = self.console
        c.rule("[bold]pgwarden guard --once --enforce  "
               "[dim](idle > 2 s, idle in transaction > 2 s)")
        policy = Policy.from_options(idle_in_transaction_after=2.0, idle_after=2.0,
                                     emergency_at=0.8, emergency_target=0.5,
                                     emergency_min_idle=2.0, max_per_pass=20)
        with Guard(self.pg.url, policy, enforce=True, audit=[]) as guard:
            result = guard.run_pass()
        table = Table(show_edge=False, pad_edge=False)
        for col in ("pid", "application", "state", "rule", "outcome"):
            table.add_column(col)
        for o in result.outcomes:
            if o.outcome in ("terminated", "cancelled", "failed"):
                table.add_row(str(o.pid), escape(o.session.label), o.session.state or "?",
                              o.rule, o.outcome)
        c.print(table)
        c.print(f"terminated {len(result.terminated_pids)} sessions; protected and recent "
                "sessions untouched (superusers, pgwarden-*, psql, pg_dump, walsenders)")
        with self.lock:
            ok_before = self.bot_ok
        time.sleep(1.0)
        with self.lock:
            served = self.bot_ok - ok_before
        c.print(f"\n[bold]server:[/] {self.usage()}; bot served {served} requests in the last "
                "second [green](recovered)[/]" if served else "")

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        for t in self.threads:
            t.join(timeout=5)
        self.worker_pool.close(timeout=1.0)
        self.pg.close()

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _WaveResult:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.first_error = ""


async def _wave(dsn: str, clients: int) -> _WaveResult:
    """``clients`` connections opened at once, each holding on while the others connect,
    then running one short transaction."""
    import asyncio

    result = _WaveResult()
    opened = asyncio.Event()
    pending = [clients]

    async def one() -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, prepare_threshold=None,
                                                         autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            result.failed += 1
            result.first_error = result.first_error or server_message(exc)
            pending[0] -= 1
            if pending[0] == 0:
                opened.set()
            return
        pending[0] -= 1
        if pending[0] == 0:
            opened.set()
        try:
            async with conn:
                await opened.wait()
                async with conn.transaction():
                    await conn.execute("select count(*) from orders")
            result.ok += 1
        except psycopg.Error as exc:
            result.failed += 1
            result.first_error = result.first_error or server_message(exc)

    await asyncio.gather(*(one() for _ in range(clients)))
    return result


class _FirstLine(logging.Handler):
    """Shows the pool's warnings (leaks) as one line each in the demo's timeline."""

    def __init__(self, d: Demo) -> None:
        super().__init__(logging.WARNING)
        self.demo = d
        self.shown = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.shown += 1
        if self.shown > 1:
            return  # one is enough for the timeline; holders() lists them all later
        first = record.getMessage().splitlines()[0].split(" Checkout stack")[0]
        self.demo.say("pgwarden", first.replace("pool 'worker': ", "worker pool: ")
                      + " (the same for each leak after it)", "magenta")
