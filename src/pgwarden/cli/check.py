"""``pgwarden check``: the connection tested step by step, stopping at the first failure.

Steps, in the order a connection goes through them: ``resolve`` (where, from which source),
``tcp`` (host:port accepts a connection, or the Unix socket exists), ``startup`` (the server
answers the PostgreSQL protocol), ``tls``, ``authentication``, ``database``, ``server``
(version, usage of usable slots, standby), ``latency``. Which step a failed connection attempt
failed at follows from its diagnosis (:func:`pgwarden.diagnose.classify`); a failure always
marks exactly one step ``FAILED`` and the command exits 3.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Any

import click
import psycopg
from rich.markup import escape

from ..conninfo import Target, connect, is_pgbouncer_console
from ..diagnose import by_id
from ..errors import ConnectError
from ..pgbouncer.detect import SERVER_PID_QUERY, from_pids
from ..sources import postgres
from .boundary import EXIT
from .options import connect_timeout_option, dsn_option, format_option, resolve_target
from .output import console, emit_json, report

__all__ = ["STEPS", "Step", "check", "run_check"]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of ``pgwarden check``: ``ok`` is True, False (failed) or None (not reached or
    not determined)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""


STEPS = ("resolve", "tcp", "startup", "tls", "authentication", "database", "server", "latency")

#: The step a connection attempt failed at, by diagnosis id. Anything else failed at
#: ``startup``: the TCP connection was accepted but the server did not answer as PostgreSQL.
STEP_OF_DIAGNOSIS = {
    "ssl_closed": "tls",
    "ssl_required": "tls",
    "auth_failed": "authentication",
    "no_password": "authentication",
    "hba_rejected": "authentication",
    "role_missing": "authentication",
    "database_missing": "database",
    "reserved_slots_only": "server",
    "too_many_clients": "server",
    "too_many_connections_for_role": "server",
    "cannot_connect_now": "server",
    "pgbouncer_max_client_conn": "server",
    "pgbouncer_server_login_failing": "server",
    "pgbouncer_query_wait_timeout": "server",
    "pgbouncer_no_such_database": "database",
    "pgbouncer_console": "authentication",
}

_NO_ANSWER_FIX = (
    "something accepts TCP connections on that port but does not answer as PostgreSQL: a "
    "proxy or load balancer in front of a server that is down, a firewall that lets the "
    "connection open and then drops the packets, or another service on that port; check the "
    "server behind it (pg_isready -h HOST -p PORT)"
)


def _tcp_step(target: Target) -> Step:
    host = target.host
    if host is None or host.startswith("/") or host.startswith("@"):
        directory = host or "/var/run/postgresql"
        path = os.path.join(directory, f".s.PGSQL.{target.port}")
        if os.path.exists(path):
            return Step("tcp", True, f"Unix socket {path} exists")
        return Step(
            "tcp", False, f"no server socket at {path}",
            "start the server, or give --dsn with the host and port it listens on",
        )
    first = host.split(",")[0]
    started = time.perf_counter()
    try:
        with socket.create_connection((first, target.port), timeout=target.connect_timeout or 5):
            pass
    except socket.gaierror as exc:
        return Step("tcp", False, f"cannot resolve host {first!r}: {exc.strerror}",
                    "check the host name in the DSN (getent hosts HOST)")
    except ConnectionRefusedError:
        return Step("tcp", False, f"connection refused by {first}:{target.port}",
                    "is the server running and listening on that address "
                    "(listen_addresses, port)? try pg_isready -h HOST -p PORT")
    except TimeoutError:
        return Step("tcp", False, f"no answer from {first}:{target.port} within "
                    f"{target.connect_timeout or 5:g} s",
                    "a firewall or security group drops the packets, or the host is down")
    except OSError as exc:
        return Step("tcp", False, f"{first}:{target.port}: {exc.strerror or exc}",
                    "check the network path to the server")
    ms = (time.perf_counter() - started) * 1000
    return Step("tcp", True, f"{first}:{target.port} accepts connections ({ms:.1f} ms)")


def _failed_at(exc: ConnectError) -> list[Step]:
    """The steps from ``startup`` on for a connection attempt that failed with ``exc``:
    those before the failed one passed (``tls``: not determined), the failed one says why."""
    failed = STEP_OF_DIAGNOSIS.get(exc.diagnosis_id or "", "startup")
    d = by_id(exc.diagnosis_id)
    detail = f"{exc.server_said} ({d.title})" if d else exc.server_said
    fix = d.fixes[0] if d else "see `pgwarden explain` with the message above"
    if exc.diagnosis_id == "timeout":
        detail = (f"no answer within the connect timeout after the TCP connection was "
                  f"accepted ({exc.server_said})")
        fix = _NO_ANSWER_FIX
    steps = []
    for name in STEPS[STEPS.index("startup"):]:
        if name == failed:
            steps.append(Step(name, False, detail, fix))
            return steps
        if name == "tls":
            steps.append(Step("tls", None, "not determined (the connection did not open)"))
        else:
            steps.append(Step(name, True, "passed"))
    raise AssertionError(f"step {failed!r} is not a step of check")  # pragma: no cover


def _admin_console_steps(conn: Any) -> list[Step]:
    """The rest of the steps on PgBouncer's admin console (its ``server_version``
    ParameterStatus is ``<version>/bouncer``; only the console accepts ``SHOW VERSION``)."""
    from ..sources import pgbouncer as bouncer_source

    conn.prepare_threshold = None
    version = bouncer_source.read_version(conn)
    snap = bouncer_source.take(conn)
    steps = [Step("tls", True, "in use" if conn.pgconn.ssl_in_use else "not in use"),
             Step("authentication", True, f"as {conn.info.user}"),
             Step("database", True, "pgbouncer (PgBouncer's admin console)"),
             Step("server", True, f"{version} admin console, pool_mode {snap.pool_mode}: "
                  f"{len(snap.clients)} clients, {snap.server_connections} server "
                  f"connections, {len(snap.pools)} pools")]
    rtts = []
    for _ in range(5):
        t0 = time.perf_counter()
        bouncer_source.read_version(conn)
        rtts.append((time.perf_counter() - t0) * 1000)
    steps.append(Step("latency", True, f"SHOW VERSION round trip: median "
                      f"{statistics.median(rtts):.2f} ms, max {max(rtts):.2f} ms (5 tries)"))
    return steps


def _pooler(conn: Any, target: Target) -> str:
    """Whether a pooler sits between us and PostgreSQL, and in which pool mode.

    The signal: libpq's backend pid is the one the server named in its BackendKeyData; a
    pooler answers with its own (PgBouncer: a random cancel key), so it differs from
    ``pg_backend_pid()`` on the real server. The pool mode: a second connection asks for
    ``pg_backend_pid()`` while the first is idle; in session mode the first keeps its server
    session, so they differ; in transaction (or statement) mode the idle first one gave it
    back and the second gets the same one (PgBouncer reuses the last released server first).
    """
    row = conn.execute(SERVER_PID_QUERY, prepare=False).fetchone()
    real = row[0] if row else None
    if from_pids(conn.info.backend_pid, real) is not None:
        return ""
    conn.prepare_threshold = None
    mode = "pool mode not determined"
    with contextlib.suppress(Exception):
        with psycopg.connect(target.conninfo, autocommit=True, prepare_threshold=None) as other:
            second = (other.execute(SERVER_PID_QUERY, prepare=False).fetchone() or (None,))[0]
        again = (conn.execute(SERVER_PID_QUERY, prepare=False).fetchone() or (None,))[0]
        if second in (real, again):
            mode = "transaction (or statement) pool mode: two connections shared one server " \
                   "session; drivers must not rely on session state or prepared statements " \
                   "(pgwarden pgbouncer init prints the settings)"
        else:
            mode = "session pool mode (each connection kept its own server session)"
    return (f"through a connection pooler such as PgBouncer (libpq's backend pid "
            f"{conn.info.backend_pid} is not the server's {real}), {mode}")


def run_check(target: Target) -> list[Step]:
    """The connectivity self-test; stops at the first failed step. Exactly one step has
    ``ok is False`` when the connection cannot be made.

    Raises:
        ConfigError: libpq rejected a connection parameter (a usage error, not a step).
        psycopg.Error: the server went away after the connection was made (the CLI's error
            boundary reports it).
    """
    steps = [Step("resolve", True, f"{target.where} (from {target.source})")]
    tcp = _tcp_step(target)
    steps.append(tcp)
    if not tcp.ok:
        return steps
    try:
        conn = connect(target, console=None)
    except ConnectError as exc:
        return steps + _failed_at(exc)
    with conn:
        steps.append(Step("startup", True, f"PostgreSQL protocol {conn.pgconn.protocol_version}"))
        if is_pgbouncer_console(conn):
            return steps + _admin_console_steps(conn)
        pgc = conn.pgconn
        if pgc.ssl_in_use:
            attr = getattr(pgc, "ssl_attribute", lambda _name: b"")
            proto = (attr(b"protocol") or b"").decode()
            cipher = (attr(b"cipher") or b"").decode()
            steps.append(Step("tls", True, f"in use ({proto} {cipher})".strip()))
        else:
            steps.append(Step("tls", True, "not in use (the server offers none or sslmode "
                                           "does not ask for it)"))
        steps.append(Step("authentication", True, f"as {conn.info.user}"))
        steps.append(Step("database", True, conn.info.dbname))
        pooler = _pooler(conn, target)
        snap = postgres.take(conn)
        steps.append(
            Step("server", True,
                 f"PostgreSQL {snap.server.version.split()[0]}, "
                 f"{snap.used_slots}/{snap.usable_slots} usable slots in use by other sessions "
                 f"({snap.usage:.0%})"
                 + (", in recovery (read-only standby)" if snap.server.in_recovery else "")
                 + (f"; {pooler}" if pooler else ""))
        )
        rtts = []
        for _ in range(5):
            t0 = time.perf_counter()
            conn.execute(b"select 1").fetchone()
            rtts.append((time.perf_counter() - t0) * 1000)
        steps.append(Step("latency", True, f"SELECT 1 round trip: median "
                          f"{statistics.median(rtts):.2f} ms, max {max(rtts):.2f} ms (5 tries)"))
    return steps


@click.command()
@dsn_option
@connect_timeout_option
@format_option
@click.pass_context
def check(ctx: click.Context, dsn: str | None, connect_timeout: float, fmt: str) -> None:
    """Test the connection step by step: resolve, TCP, startup, TLS, authentication, database,
    server, round-trip latency. Exit 0 when every step passes, 3 when one fails."""
    target = resolve_target(dsn, command="check", connect_timeout=connect_timeout)
    steps = run_check(target)
    ok = not any(s.ok is False for s in steps)
    with report():
        if fmt == "json":
            emit_json({"ok": ok, "target": target.where,
                       "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail, "fix": s.fix}
                                 for s in steps]})
        else:
            out = console()
            mark = {True: "[green]ok    [/]", False: "[bold red]FAILED[/]", None: "[dim]  -   [/]"}
            for s in steps:
                out.print(f"{mark[s.ok]} {s.name:<15} {escape(s.detail)}")
                if s.fix:
                    out.print(f"       {'':<15} [bold]fix:[/] {escape(s.fix)}")
    ctx.exit(EXIT["ok"] if ok else EXIT["cannot_connect"])
