"""Reports: the status summary and the doctor's findings, as JSON-ready dicts and as text.

``summary(snapshot)`` is shared by ``pgwarden status`` and the doctor's JSON ``summary`` key.
Text goes through rich; JSON is plain ``json.dumps`` of the dicts documented in docs/cli.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.columns import Columns
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..sources.holders import HolderJoin
from ..sources.pgbouncer.join import server_sessions
from ..sources.pgbouncer.records import BouncerSnapshot
from ..sources.postgres.records import IDLE, Session, Snapshot
from .rules import Finding, status_of

__all__ = ["Report", "bouncer_summary", "render_bouncer", "render_holders", "render_report",
           "render_status", "server_info", "summary"]

_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan", "ok": "green"}


def _session_brief(s: Session, holders: HolderJoin | None = None) -> dict[str, Any]:
    out = {
        "pid": s.pid,
        "application": s.application,
        "user": s.user,
        "database": s.database,
        "client_addr": s.client_addr,
        "state": s.state,
        "state_seconds": round(s.state_age, 1) if s.state_age is not None else None,
        "transaction_seconds": round(s.xact_age, 1) if s.xact_age is not None else None,
        "backend_seconds": round(s.backend_age, 1) if s.backend_age is not None else None,
        "query": s.query,
    }
    if holders is not None:
        held = holders.of(s.pid)
        out["holder"] = held.holder.as_dict() if held is not None else None
    return out


def server_info(snap: Snapshot) -> dict[str, Any]:
    """Server facts for reports: version, role, privileges, settings that matter."""
    s = snap.settings
    return {
        "version": snap.server.version,
        "version_num": snap.server.version_num,
        "role": snap.server.role,
        "is_superuser": snap.server.is_superuser,
        "sees_all_sessions": snap.server.sees_all_sessions,
        "in_recovery": snap.server.in_recovery,
        "max_connections": s.max_connections,
        "superuser_reserved_connections": s.superuser_reserved_connections,
        "reserved_connections": s.reserved_connections,
        "idle_in_transaction_session_timeout": s.idle_in_transaction_session_timeout,
        "idle_session_timeout": s.idle_session_timeout,
        "snapshot_taken_at": snap.taken_at.isoformat(),
        "snapshot_ms": round(snap.duration * 1000, 2),
    }


def summary(snap: Snapshot, *, oldest: int = 5, holders: HolderJoin | None = None
            ) -> dict[str, Any]:
    """Usage of usable slots, counts by state/application/user/database/client address and the
    oldest idle and idle-in-transaction sessions (``oldest`` of each; with ``holders``, each
    with a ``holder`` key: the application code holding it, or ``None``)."""
    clients = snap.client_backends
    idle = sorted((s for s in clients if s.state == IDLE), key=lambda s: -(s.state_age or 0))
    in_tx = sorted((s for s in clients if s.in_transaction), key=lambda s: -(s.state_age or 0))
    return {
        "used_slots": snap.used_slots,
        "usable_slots": snap.usable_slots,
        "usage": round(snap.usage, 4),
        "client_backends": len(clients),
        "other_backends": len(snap.sessions) - len(clients),
        "hidden_sessions": snap.hidden_sessions,
        "by_state": dict(snap.count_by("state").most_common()),
        "by_application": dict(snap.count_by("application").most_common()),
        "by_user": dict(snap.count_by("user").most_common()),
        "by_database": dict(snap.count_by("database").most_common()),
        "by_client_addr": dict(snap.count_by("client_addr").most_common()),
        "oldest_idle": [_session_brief(s, holders) for s in idle[:oldest]],
        "oldest_idle_in_transaction": [_session_brief(s, holders) for s in in_tx[:oldest]],
    }


@dataclass(frozen=True, slots=True)
class Report:
    """What the doctor concluded. ``status`` is ``ok``, ``warning`` or ``critical``;
    ``server`` and ``summary`` are empty when the doctor could not get in (server full);
    ``holders`` is the applications' holders joined to the snapshot (``--holders``)."""

    findings: tuple[Finding, ...]
    server: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    pgbouncer: dict[str, Any] = field(default_factory=dict)
    holders: HolderJoin | None = None

    @property
    def status(self) -> str:
        return status_of(self.findings)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; with ``--holders``, each finding has ``holders`` (its pids' held
        sessions) and the report a ``holders`` key (:meth:`HolderJoin.as_dict`)."""
        findings = [f.as_dict() for f in self.findings]
        if self.holders is not None:
            for f, d in zip(self.findings, findings, strict=True):
                d["holders"] = [h.as_dict() for h in self.holders.for_pids(f.pids)]
        return {
            "status": self.status,
            "target": self.target,
            "server": self.server,
            "summary": self.summary,
            "findings": findings,
            **({"pgbouncer": self.pgbouncer} if self.pgbouncer else {}),
            **({"holders": self.holders.as_dict()} if self.holders is not None else {}),
        }


def bouncer_summary(b: BouncerSnapshot, pg: Snapshot | None = None) -> dict[str, Any]:
    """PgBouncer for reports: version, pools, and which client holds which server session
    (``SHOW SERVERS.remote_pid`` = ``pg_stat_activity.pid``)."""
    return {
        "version": str(b.version),
        "pool_mode": b.pool_mode,
        "clients": len(b.clients),
        "server_connections": b.server_connections,
        "snapshot_ms": round(b.duration * 1000, 2),
        "pools": [{"database": p.database, "user": p.user, "pool_mode": p.pool_mode,
                   "cl_active": p.cl_active, "cl_waiting": p.cl_waiting,
                   "sv_active": p.sv_active, "sv_idle": p.sv_idle, "sv_used": p.sv_used,
                   "sv_login": p.sv_login, "servers": p.servers,
                   "maxwait_seconds": round(p.maxwait, 3)} for p in b.pools],
        "server_sessions": [
            {"backend_pid": s.backend_pid, "database": s.database, "user": s.user,
             "bouncer_state": s.bouncer_state, "state": s.state,
             "client_addr": s.client_addr, "client_port": s.client_port,
             "client_application": s.client_application, "holder": s.holder}
            for s in server_sessions(b, pg)],
    }


def render_bouncer(console: Console, part: dict[str, Any]) -> None:
    """The ``pgbouncer`` part of a report as text: pools, then server sessions and holders."""
    console.print(f"[bold]PgBouncer {escape(part['version'])}[/] (pool_mode "
                  f"{escape(part['pool_mode'])}): {part['clients']} clients, "
                  f"{part['server_connections']} server connections")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("pool", "mode", "clients active", "waiting", "max wait", "servers active",
                "idle"):
        table.add_column(col)
    for p in part["pools"]:
        table.add_row(escape(f"{p['database']}/{p['user']}"), escape(p["pool_mode"] or "?"),
                      str(p["cl_active"]), str(p["cl_waiting"]), f"{p['maxwait_seconds']:g} s",
                      str(p["sv_active"]), str(p["sv_idle"]))
    console.print(table)
    held = [s for s in part["server_sessions"] if s["client_addr"]]
    if held:
        t2 = Table(title="server sessions held by clients", title_justify="left",
                   show_edge=False, pad_edge=False)
        for col in ("backend pid", "pool", "state (PostgreSQL)", "held by"):
            t2.add_column(col)
        for s in held[:20]:
            t2.add_row(str(s["backend_pid"]), escape(f"{s['database']}/{s['user']}"),
                       escape(s["state"] or "?"), escape(s["holder"]))
        console.print(t2)


def _usage_line(summ: dict[str, Any]) -> Text:
    usage = summ["usage"]
    style = "bold red" if usage >= 0.95 else "yellow" if usage >= 0.8 else "green"
    return Text.assemble(
        "slots ",
        (f"{summ['used_slots']}/{summ['usable_slots']} usable ({usage:.0%})", style),
    )


def _counts_table(title: str, counts: dict[str, int], limit: int = 8) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column(title.split()[-1], overflow="fold")
    table.add_column("sessions", justify="right")
    for key, n in list(counts.items())[:limit]:
        table.add_row(escape(key), str(n))
    if len(counts) > limit:
        table.add_row(f"… {len(counts) - limit} more", str(sum(list(counts.values())[limit:])))
    return table


def _sessions_table(title: str, rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in ("pid", "application", "user", "state for", "query"):
        table.add_column(col, overflow="ellipsis", no_wrap=col == "query", max_width=50)
    for r in rows:
        table.add_row(
            str(r["pid"]),
            escape(r["application"] or "(none)"),
            escape(r["user"] or "?"),
            f"{r['state_seconds']:.0f} s" if r["state_seconds"] is not None else "?",
            escape((r["query"] or "").replace("\n", " ")),
        )
    return table


def render_status(console: Console, server: dict[str, Any], summ: dict[str, Any]) -> None:
    """``pgwarden status`` as text: one screen."""
    console.print(
        Text.assemble(
            ("PostgreSQL ", "bold"), server["version"].split()[0], "  ", _usage_line(summ),
            f"  (max_connections {server['max_connections']}, reserved "
            f"{server['superuser_reserved_connections'] + server['reserved_connections']})",
        )
    )
    if summ["hidden_sessions"]:
        console.print(
            f"[yellow]{summ['hidden_sessions']} sessions hidden from role "
            f"{escape(server['role'])} (needs pg_monitor)[/]"
        )
    console.print(
        Columns(
            [
                _counts_table("by state", summ["by_state"]),
                _counts_table("by application", summ["by_application"]),
                _counts_table("by user", summ["by_user"]),
                _counts_table("by database", summ["by_database"]),
                _counts_table("by client", summ["by_client_addr"]),
            ],
            padding=(1, 3),
        )
    )
    if summ["oldest_idle_in_transaction"]:
        console.print(_sessions_table("oldest idle in transaction",
                                      summ["oldest_idle_in_transaction"]))
    if summ["oldest_idle"]:
        console.print(_sessions_table("oldest idle", summ["oldest_idle"]))


def render_holders(console: Console, holders: HolderJoin, *, limit: int = 20,
                   sessions: bool = True) -> None:
    """The applications' holders: one summary line, a warning per ``--holders`` URL that gave
    none, and (``sessions``) each held session, longest held first; holders that joined no
    session are listed when none did."""
    console.print(Text.assemble(("holders ", "bold"), holders.summary()))
    for w in holders.warnings:
        console.print(Text("warning: " + w, style="yellow"))
    if sessions:
        held = holders.longest_held()
        for h in held[:limit]:
            console.print(Text("  " + h.describe()))
        if len(held) > limit:
            console.print(f"  … {len(held) - limit} more")
    if not holders.sessions and holders.unmatched:
        for a in holders.unmatched[:limit]:
            console.print(Text("  " + a.describe()))
        if len(holders.unmatched) > limit:
            console.print(f"  … {len(holders.unmatched) - limit} more")


def render_report(console: Console, report: Report) -> None:
    """The doctor's findings as text, most severe first."""
    status = report.status
    head = Text.assemble(("pgwarden doctor ", "bold"), (status.upper(), _STYLE[status]))
    if report.target:
        head.append(f"  {report.target}")
    if report.summary:
        head.append("  ")
        head.append_text(_usage_line(report.summary))
    console.print(head)
    if report.pgbouncer:
        render_bouncer(console, report.pgbouncer)
    if report.holders is not None:
        render_holders(console, report.holders, sessions=False)
    if not report.findings:
        console.print("[green]no findings[/]")
    for f in report.findings:
        console.print()
        console.print(
            Text.assemble(
                (f"{f.severity.upper():8}", _STYLE[f.severity]), " ", (f.id, "bold"), "  ",
                f.title,
            )
        )
        if f.applications:
            console.print(f"         applications: {escape(', '.join(f.applications[:8]))}")
        if f.pids:
            more = f" (+{len(f.pids) - 12} more)" if len(f.pids) > 12 else ""
            console.print(f"         pids: {', '.join(map(str, f.pids[:12]))}{more}")
            if report.holders is not None:
                for held in report.holders.for_pids(f.pids[:12]):
                    console.print(Text("         " + held.describe()))
        console.print(Text("         fix: ", style="bold").append(f.fix, style="default"))
