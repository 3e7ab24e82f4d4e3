"""``pgwarden check | status | doctor | explain``: thin click shells over conninfo, activity,
doctor and diagnose. Docs and exit codes: docs/cli.md and :mod:`pgwarden.cli`."""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from . import activity
from .cli import EXIT, connect_timeout_option, dsn_option, format_option
from .conninfo import Target, connect, resolve
from .diagnose import Diagnosis, by_id
from .diagnose import explain as explain_text
from .doctor.report import render_report, render_status, server_info, summary
from .doctor.rules import Thresholds
from .doctor.run import examine
from .errors import ConfigError, ConnectError, ServerFullError

__all__ = ["check", "doctor", "explain", "status"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# -- check ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One step of ``pgwarden check``: ``ok`` is True, False (failed) or None (not reached)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""


_STEP_OF_DIAGNOSIS = {
    "ssl_closed": "tls",
    "ssl_required": "tls",
    "auth_failed": "authentication",
    "no_password": "authentication",
    "hba_rejected": "authentication",
    "role_missing": "authentication",
    "database_missing": "database",
    "too_many_clients": "server",
    "too_many_connections_for_role": "server",
    "cannot_connect_now": "server",
    "connection_refused": "tcp",
    "host_unknown": "tcp",
    "timeout": "tcp",
}
_STEPS = ("resolve", "tcp", "tls", "authentication", "database", "server", "latency")


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
    return Step("tcp", True, f"{first}:{target.port} reachable in {ms:.1f} ms")


def _fix_of(d: Diagnosis | None) -> str:
    return d.fixes[0] if d else "see `pgwarden explain` with the message above"


def run_check(target: Target) -> list[Step]:
    """The connectivity self-test; stops at the first failed step."""
    steps = [Step("resolve", True, f"{target.where} (from {target.source})")]
    tcp = _tcp_step(target)
    steps.append(tcp)
    if not tcp.ok:
        return steps
    try:
        conn = connect(target)
    except ConnectError as exc:
        d = by_id(exc.diagnosis_id)
        failed = _STEP_OF_DIAGNOSIS.get(exc.diagnosis_id or "", "server")
        for name in _STEPS[2:]:
            if name == failed:
                detail = f"{exc.server_said} ({d.title})" if d else exc.server_said
                fix = _fix_of(d)
                if isinstance(exc, ServerFullError):
                    detail = f"server is full: every usable slot is taken ({exc.server_said})"
                    fix = ("connect as a superuser or a member of pg_use_reserved_connections "
                           "(PostgreSQL 16+), or run `pgwarden doctor` from such a role")
                steps.append(Step(name, False, detail, fix))
                break
            if name == "tls":
                steps.append(Step("tls", None, "not determined (the connection did not open)"))
            else:
                steps.append(Step(name, True, "passed"))
        return steps
    with conn:
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
        snap = activity.take(conn)
        steps.append(
            Step("server", True,
                 f"PostgreSQL {snap.server.version.split()[0]}, "
                 f"{snap.used_slots}/{snap.usable_slots} usable slots in use "
                 f"({snap.usage:.0%})"
                 + (", in recovery (read-only standby)" if snap.server.in_recovery else ""))
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
    """Test the connection step by step: resolve, TCP, TLS, authentication, database,
    server, round-trip latency. Exit 0 when every step passes, 3 when one fails."""
    target = resolve(dsn, command="check", connect_timeout=connect_timeout)
    steps = run_check(target)
    ok = all(s.ok is not False for s in steps)
    if fmt == "json":
        _emit_json({"ok": ok, "target": target.redacted,
                    "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail, "fix": s.fix}
                              for s in steps]})
    else:
        console = _console()
        for s in steps:
            mark = {True: "[green]ok    [/]", False: "[bold red]FAILED[/]", None: "[dim]  -   [/]"}
            console.print(f"{mark[s.ok]} {s.name:<15} {escape(s.detail)}")
            if s.fix:
                console.print(f"       {'':<15} [bold]fix:[/] {escape(s.fix)}")
    ctx.exit(EXIT["ok"] if ok else EXIT["cannot_connect"])


# -- status ---------------------------------------------------------------------------------


@click.command()
@dsn_option
@connect_timeout_option
@format_option
def status(dsn: str | None, connect_timeout: float, fmt: str) -> None:
    """One screen: usage of usable slots, sessions by state, application, user, database and
    client address, and the oldest idle and idle-in-transaction sessions."""
    target = resolve(dsn, command="status", connect_timeout=connect_timeout)
    with connect(target) as conn:
        snap = activity.take(conn)
    server, summ = server_info(snap), summary(snap)
    if fmt == "json":
        _emit_json({"target": target.redacted, "server": server, "summary": summ})
    else:
        render_status(_console(), server, summ)


# -- doctor ---------------------------------------------------------------------------------


def _seconds(name: str, default: float, help_: str) -> Callable[[_F], _F]:
    return click.option(name, type=click.FloatRange(min=0.001), default=default,
                        show_default=True, metavar="SECONDS", help=help_)


@click.command()
@dsn_option
@connect_timeout_option
@format_option
@_seconds("--idle-after", 300.0, "Idle sessions older than this count as hoarded.")
@_seconds("--idle-in-transaction-after", 60.0, "Report sessions idle in a transaction longer.")
@_seconds("--long-query-after", 300.0, "Report active queries running longer.")
@click.option("--idle-min-sessions", type=click.IntRange(min=1), default=5, show_default=True,
              help="Long-idle sessions one application must hold to be reported.")
@click.option("--saturation-warning", type=click.FloatRange(0.01, 1.5), default=0.8,
              show_default=True, help="Usage of usable slots that is a warning.")
@click.option("--saturation-critical", type=click.FloatRange(0.01, 1.5), default=0.95,
              show_default=True, help="Usage of usable slots that is critical.")
@click.option("--churn-rate", type=click.FloatRange(min=0.01), default=5.0, show_default=True,
              metavar="PER_SECOND", help="New sessions per second that count as churn.")
@click.option("--sample", type=click.FloatRange(min=0.0, max=60.0), default=0.0,
              show_default=True, metavar="SECONDS",
              help="Take two snapshots this far apart to measure the rate of new sessions.")
@click.pass_context
def doctor(ctx: click.Context, dsn: str | None, connect_timeout: float, fmt: str,
           idle_after: float, idle_in_transaction_after: float, long_query_after: float,
           idle_min_sessions: int, saturation_warning: float, saturation_critical: float,
           churn_rate: float, sample: float) -> None:
    """Findings about who holds the connection slots, most severe first, each with the
    evidence (applications, backend pids, ages) and the fix.

    Exit code: 0 ok or info only, 1 warning, 2 critical, 3 cannot connect."""
    try:
        thresholds = Thresholds(
            idle_after=idle_after,
            idle_in_transaction_after=idle_in_transaction_after,
            long_query_after=long_query_after,
            idle_hoarding_min_sessions=idle_min_sessions,
            saturation_warning=saturation_warning,
            saturation_critical=saturation_critical,
            churn_rate=churn_rate,
        ).validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    target = resolve(dsn, command="doctor", connect_timeout=connect_timeout)
    report = examine(target, thresholds=thresholds, sample=sample)
    if fmt == "json":
        _emit_json(report.as_dict())
    else:
        render_report(_console(), report)
    ctx.exit(EXIT[report.status] if report.status != "ok" else EXIT["ok"])


# -- explain --------------------------------------------------------------------------------


@click.command()
@click.argument("message", nargs=-1, required=True)
@format_option
@click.pass_context
def explain(ctx: click.Context, message: tuple[str, ...], fmt: str) -> None:
    """Explain an error message or SQLSTATE: likely causes and fixes.

    MESSAGE is the error text (quote it) or a SQLSTATE such as 53300; '-' reads stdin.
    Exit 0 when it is known, 1 when not."""
    text = " ".join(message)
    if text.strip() == "-":
        text = sys.stdin.read()
    found = explain_text(text)
    if fmt == "json":
        _emit_json({"query": text.strip(), "matches": [
            {"id": d.id, "title": d.title, "sqlstates": list(d.sqlstates),
             "causes": list(d.causes), "fixes": list(d.fixes), "source": d.source}
            for d in found]})
    else:
        console = _console()
        if not found:
            console.print("no known error matches; run `pgwarden doctor` to look at the server")
        for i, d in enumerate(found):
            if i:
                console.print()
            codes = f" (SQLSTATE {', '.join(d.sqlstates)})" if d.sqlstates else ""
            console.print(f"[bold]{escape(d.title)}[/]{codes}  [dim]{d.id}[/]")
            console.print("[bold]likely causes[/]")
            for c in d.causes:
                console.print(f"  - {escape(c)}")
            console.print("[bold]fixes[/]")
            for f in d.fixes:
                console.print(f"  - {escape(f)}")
            if d.source:
                console.print(f"[dim]source: {escape(d.source)}[/]")
    ctx.exit(EXIT["ok"] if found else EXIT["no_match"])
