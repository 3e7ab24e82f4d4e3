"""``pgwarden guard``: the click command (daemon, or one pass with ``--once``).

Exit codes: 0 ok (daemon: also after SIGTERM), 1 ``--once``: an action failed, 3 cannot connect
(``--once``), 4 permission missing, 64 usage error (an ``--audit-log`` that cannot be opened
too), 74 the audit log cannot be written (the guard stops rather than act without a record),
78 config file error (an ``audit_log`` of the file that cannot be opened too), 130 SIGINT.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
from typing import Any

import click

from ..errors import AuditError, ConfigError, ConfigFileError
from ..guard.audit import AuditLog
from ..guard.config import load_policy, make_policy, parse_duration, parse_usage
from ..guard.daemon import Daemon
from ..guard.policy import Policy
from ..guard.runner import Guard, PassResult
from .boundary import EXIT
from .options import (
    connect_timeout_option,
    dsn_option,
    extra_module,
    format_option,
    resolve_target,
)
from .output import report

__all__ = ["guard"]

logger = logging.getLogger("pgwarden.guard")


class _Duration(click.ParamType):  # type: ignore[type-arg]
    name = "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Usage(click.ParamType):  # type: ignore[type-arg]
    name = "USAGE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            text = value if isinstance(value, str) and value.strip().endswith("%") else float(value)
            return parse_usage(text)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()
USAGE = _Usage()

_OPTION_KEYS = (
    "idle_in_transaction_after", "idle_after", "idle_only_above", "cancel_active_after",
    "rule_applications", "emergency_at", "emergency_target", "emergency_min_idle",
    "max_per_pass", "max_per_minute", "allow_superuser", "protect_applications",
    "protect_users", "protect_databases", "protect_networks", "interval", "audit_log",
)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _render_text(result: PassResult, where: str) -> str:
    mode = "enforcing" if result.enforce else "dry run"
    p = result.plan
    lines = [
        f"pgwarden guard ({mode}) on {where}: usage {p.usage:.2f} ({p.used_slots}/"
        f"{p.usable_slots} usable slots)"
        + (f", EMERGENCY, projected {p.projected_usage:.2f}" if p.emergency
           else f", projected {p.projected_usage:.2f}")
    ]
    if result.enforce and not result.leader:
        who = f"guard backend {result.leader_pid}" if result.leader_pid else "another guard"
        lines.append(f"standby: {who} holds the lock and acts; this guard did nothing")
    for o in result.outcomes:
        s = o.session
        what = o.outcome.replace("_", " ")
        if o.skip:
            what = f"skipped ({o.skip})"
        age = s.query_age if s.state == "active" else s.state_age
        lines.append(
            f"  {what:<24} pid {s.pid:<7} {s.label:<20} {s.user or '-'}@{s.database or '-'} "
            f"{s.state or '-'} {_age(age)}  rule {o.rule}: {o.reason}"
        )
    counts = {k: len(result.pids(k)) for k in (
        "would_terminate", "would_cancel", "terminated", "cancelled", "skipped", "failed")}
    if result.enforce:
        summary = (f"{counts['terminated']} terminated, {counts['cancelled']} cancelled, "
                   f"{counts['skipped']} skipped, {counts['failed']} failed.")
    else:
        summary = (f"would terminate {counts['would_terminate']}, would cancel "
                   f"{counts['would_cancel']}, {counts['skipped']} skipped. Dry run: nothing "
                   "was changed; add --enforce to act.")
    if not result.outcomes:
        summary = "nothing to do. " + summary
    lines.append(summary)
    lines.extend(f"warning: {w}" for w in result.warnings)
    return "\n".join(lines)


@click.command("guard")
@dsn_option
@connect_timeout_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="TOML policy file (see docs/guard.md); options override it.")
@click.option("--once", is_flag=True, help="Run one pass and exit (for cron).")
@click.option("--enforce", is_flag=True, default=False,
              help="Act. Without it (or enforce = true in the file) this is a dry run.")
@click.option("--dry-run", "dry_run", is_flag=True, default=False,
              help="Never act, even if the file says enforce = true.")
@click.option("--interval", type=DURATION, default=None,
              help="Seconds between passes (daemon). [default: 10]")
@click.option("--audit-log", "audit_log", multiple=True, metavar="FILE",
              help="Append JSON audit lines to FILE ('-': stdout); repeatable. "
              "Daemon default: stdout.")
@click.option("--idle-in-transaction-after", type=DURATION, default=None,
              help="Terminate sessions idle in a transaction longer than this. "
              "[default rule: 600s, unless a rule is named]")
@click.option("--idle-after", type=DURATION, default=None,
              help="Terminate sessions idle longer than this.")
@click.option("--idle-only-above", type=USAGE, default=None,
              help="...but only while usage is above this (0.8 or 80%).")
@click.option("--cancel-active-after", type=DURATION, default=None,
              help="Cancel (not terminate) queries running longer than this.")
@click.option("--application", "rule_applications", multiple=True, metavar="GLOB",
              help="Limit the rules given as options to these applications; repeatable.")
@click.option("--emergency-at", type=USAGE, default=None,
              help="Emergency mode when usage reaches this (e.g. 0.8).")
@click.option("--emergency-target", type=USAGE, default=None,
              help="Emergency mode terminates idle sessions until usage is this. "
              "[default: at - 0.1]")
@click.option("--emergency-min-idle", type=DURATION, default=None,
              help="Emergency mode never touches sessions idle for less. [default: 60s]")
@click.option("--max-per-pass", type=click.IntRange(min=0), default=None,
              help="At most this many actions per pass. [default: 10]")
@click.option("--max-per-minute", type=click.IntRange(min=0), default=None,
              help="At most this many actions per minute. [default: 30]")
@click.option("--allow-superuser", is_flag=True, default=None,
              help="Let rules touch superuser sessions (protected by default).")
@click.option("--protect-application", "protect_applications", multiple=True, metavar="GLOB",
              help="Never touch these applications (added to the protected); repeatable.")
@click.option("--protect-user", "protect_users", multiple=True, metavar="GLOB")
@click.option("--protect-database", "protect_databases", multiple=True, metavar="GLOB")
@click.option("--protect-network", "protect_networks", multiple=True, metavar="CIDR")
@click.option("--metrics-listen", default=None, metavar="HOST:PORT",
              help="Serve the guard's counters as Prometheus metrics on /metrics there (daemon "
              "only; off by default; a bare PORT binds 127.0.0.1).")
@format_option
@click.pass_context
def guard(
    ctx: click.Context,
    /,
    dsn: str | None,
    connect_timeout: float,
    config_path: str | None,
    once: bool,
    enforce: bool,
    dry_run: bool,
    fmt: str,
    metrics_listen: str | None,
    **options: Any,
) -> None:
    """Free idle sessions by policy, never touching what must not be touched.

    A dry run unless --enforce. Protected whatever the policy says: anything but client
    backends, pgwarden's own sessions, superusers (unless --allow-superuser), replication
    roles, and the protected applications (default pgwarden-*, pg_dump*, pg_restore*,
    pg_basebackup, psql). Runs as a daemon (SIGHUP reloads --config, SIGTERM/SIGINT stop) or
    one pass with --once. Docs: docs/guard.md
    """
    if enforce and dry_run:
        raise click.UsageError("--enforce and --dry-run contradict each other")
    if metrics_listen is not None and once:
        raise click.UsageError("--metrics-listen serves the daemon's counters; it does not "
                               "go with --once")
    listen = None
    if metrics_listen is not None:
        prom = extra_module("prometheus_client", "metrics")
        from ..metrics import GuardCollector, parse_listen, serve

        listen = parse_listen(metrics_listen, option="--metrics-listen")
    overrides = {k: options.get(k) for k in _OPTION_KEYS}
    if enforce:
        overrides["enforce"] = True

    def load() -> Any:
        base = load_policy(config_path) if config_path else None
        policy = make_policy(base, **overrides)
        if dry_run and policy.enforce:
            policy = make_policy(policy, enforce=False)
        return policy

    policy = load()
    _check_audit(policy, config_path, from_option=bool(options.get("audit_log")))
    target = resolve_target(dsn, command="guard", connect_timeout=connect_timeout)
    if once:
        with Guard(target, policy) as g:
            result = g.run_pass()
        with report():
            if fmt == "json":
                click.echo(json.dumps(result.to_dict(), indent=2, default=str))
            else:
                click.echo(_render_text(result, target.where))
        ctx.exit(EXIT["warning"] if result.failed else EXIT["ok"])

    extra: tuple[str, ...] = () if policy.audit_log else ("-",)
    daemon = Daemon(target, policy, load=load, audit=extra, connect_timeout=connect_timeout)
    mode = "enforcing" if policy.enforce else "dry run"
    with contextlib.ExitStack() as stack:
        if listen is not None:
            registry = prom.CollectorRegistry()
            registry.register(GuardCollector(daemon.metrics))
            server = stack.enter_context(serve(registry, listen))
            click.echo(f"pgwarden guard: metrics on {server.url}", err=True)
        click.echo(f"pgwarden guard: watching {target.where} every {policy.interval:g}s "
                   f"({mode}); SIGHUP reloads, SIGTERM stops", err=True)
        daemon.run(install_signals=True)
    click.echo(f"pgwarden guard: stopped after {daemon.passes} passes", err=True)
    with report():
        sys.stdout.flush()
    ctx.exit(EXIT["interrupted"] if daemon.stopped_by == signal.SIGINT else EXIT["ok"])


def _check_audit(policy: Policy, config_path: str | None, *, from_option: bool) -> None:
    """Open (and close) every audit destination before the guard starts, so that one that
    cannot be opened is a usage error (``--audit-log``, exit 64) or a configuration file error
    naming the key (``audit_log``, exit 78), never a traceback.

    Raises:
        ConfigError, ConfigFileError: as above.
    """
    try:
        AuditLog(policy.audit_log).close()
    except AuditError as exc:
        if from_option or config_path is None:
            raise ConfigError(f"--audit-log: {exc}") from None
        raise ConfigFileError(f"{config_path}: key 'audit_log': {exc}", path=config_path,
                              key="audit_log") from None
