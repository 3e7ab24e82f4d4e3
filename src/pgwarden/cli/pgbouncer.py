"""``pgwarden pgbouncer init | status``: write a transaction-mode PgBouncer sized from a budget,
and look at a running one.

``init`` exit codes: 0 written, 3 cannot connect, 4 cannot read pg_authid, 64 bad option or
files exist (without ``--force``), 74 cannot write, 78 bad budget file (or a service's user
missing or without a password). ``status``: 0, or 3 when the admin console cannot be reached.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import click
import psycopg
from rich.markup import escape

from ..budget import Budget, load_budget, slots_for
from ..conninfo import connect
from ..errors import ConfigError, ConfigFileError, PermissionMissing
from ..pgbouncer.ini import UnwritableValue, auth_file_text, checked, secret_kind
from ..pgbouncer.plan import AUTH_USER, InitPlan, auth_query_sql, make_plan, new_password
from ..pgbouncer.version import Version, installed_version, parse_given_version
from ..sources import postgres
from ..sources.postgres.records import role_sql
from .options import connect_timeout_option, format_option, resolve_target
from .output import console, emit_json, report

__all__ = ["pgbouncer"]

#: Assumed when no PgBouncer is installed and none is named: the oldest rules (drivers keep
#: prepared statements off), which work on every version.
_FALLBACK_VERSION = Version(1, 18, 0)


@click.group()
def pgbouncer() -> None:
    """PgBouncer: write a configuration sized from a budget (init), look at a running one
    (status). docs/pgbouncer.md"""


def _write(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` created with ``mode`` (0600 for secrets: never readable by
    others, not even for a moment)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _version(given: str | None) -> tuple[Version, str]:
    if given:
        try:
            return parse_given_version(given), "--pgbouncer-version"
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--pgbouncer-version") from None
    found = installed_version()
    if found is not None:
        return found, "the installed pgbouncer"
    return _FALLBACK_VERSION, "assumed (no pgbouncer installed; give --pgbouncer-version)"


def _writable(kind: str) -> Any:
    """A click callback: the option's value must pass the check every value written into
    PgBouncer's files passes (:func:`pgwarden.pgbouncer.ini.checked`), before anything else."""
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            try:
                checked(str(value), what=param.name or "", kind=kind)
            except UnwritableValue as exc:
                raise click.BadParameter(exc.problem, ctx=ctx, param=param) from None
        return value
    return callback


@pgbouncer.command()
@click.argument("budget_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dsn", required=True, metavar="DSN",
              help="The PostgreSQL server PgBouncer will sit in front of (its slots, and with "
              "a superuser, the users' SCRAM secrets for the auth file).")
@connect_timeout_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, callback=_writable("text"),
              help="Directory to write the files in.")
@click.option("--auth", type=click.Choice(["file", "query"]), default="file",
              show_default=True, help="file: an auth file with each user's SCRAM secret; "
              "query: auth_user + auth_query, with the SQL that creates its function.")
@click.option("--pgbouncer-version", metavar="X.Y.Z", default=None,
              help="The PgBouncer version to write for (default: the installed one).")
@click.option("--listen-addr", default="127.0.0.1", show_default=True,
              callback=_writable("addresses"),
              help="Where PgBouncer listens: * or IP addresses and host names, comma-separated.")
@click.option("--listen-port", type=click.IntRange(1, 65535), default=6432, show_default=True)
@click.option("--admin-user", default="pgbouncer_admin", show_default=True,
              callback=_writable("name"),
              help="The user of PgBouncer's admin console (admin_users, stats_users).")
@click.option("--force", is_flag=True, help="Replace files that exist.")
@format_option
def init(budget_file: Path, dsn: str, connect_timeout: float, out_dir: Path, auth: str,
         pgbouncer_version: str | None, listen_addr: str, listen_port: int, admin_user: str,
         force: bool, fmt: str) -> None:
    """Write pgbouncer.ini (transaction mode, sized from BUDGET_FILE against the server's
    slots) and userlist.txt (0600), or with --auth query also auth_query.sql (0600); print
    what each service's driver needs behind this PgBouncer. No password is ever printed."""
    plan_budget = load_budget(budget_file)
    version, version_from = _version(pgbouncer_version)
    out_dir = out_dir.resolve()
    _check_out(out_dir)
    target = resolve_target(dsn, command="pgbouncer-init", connect_timeout=connect_timeout)
    with connect(target) as conn:
        settings = postgres.read_settings(conn)
        slots = slots_for(plan_budget, max_connections=settings.max_connections,
                          superuser_reserved_connections=settings.superuser_reserved_connections,
                          reserved_connections=settings.reserved_connections, source="server")
        plan = make_plan(plan_budget, slots, server_host=target.host or "127.0.0.1",
                         server_port=target.port, default_database=target.dbname,
                         default_user=target.user, version=version, auth=auth,
                         auth_file=str(out_dir / "userlist.txt"), listen_addr=listen_addr,
                         listen_port=listen_port, admin_user=admin_user)
        if not plan.sizing.fits:
            raise ConfigFileError(
                f"{budget_file}: no PgBouncer fits: {plan.sizing.server_slots} server slots "
                "remain after the headroom and the connections of the direct consumers (fixed "
                "services), and PgBouncer needs at least one per database; lower "
                "server.headroom or the fixed consumers, or raise max_connections",
                path=str(budget_file))
        secrets, held = _secrets(conn, plan, plan_budget, target.user,
                                 _dsn_password(target.conninfo), auth)
    if held.get("md5"):
        plan = plan.with_auth_type("md5")
    files = {"pgbouncer.ini": out_dir / "pgbouncer.ini", "userlist.txt": out_dir / "userlist.txt"}
    if auth == "query":
        files["auth_query.sql"] = out_dir / "auth_query.sql"
    existing = [str(p) for p in files.values() if os.path.lexists(p)]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} {'exists' if len(existing) == 1 else 'exist'}"
                          "; give --force to replace them")
    created = not out_dir.exists()
    if created:
        out_dir.mkdir(mode=0o700)
        os.chmod(out_dir, 0o700)  # whatever the umask
    entries = dict(secrets)
    if auth == "query":
        auth_password = new_password()
        entries = {AUTH_USER: auth_password}
        _write(files["auth_query.sql"], auth_query_sql(auth_password), 0o600)
    entries[admin_user] = new_password()
    _write(files["userlist.txt"], auth_file_text(entries), 0o600)
    _write(files["pgbouncer.ini"], plan.ini(), 0o644)
    with report():
        if fmt == "json":
            emit_json({**_as_dict(plan, files, version_from, target.where, held),
                       "created_dir": str(out_dir) if created else None})
        else:
            if created:
                console().print(f"[bold]created[/] {escape(str(out_dir))} (mode 0700)")
            _render(plan, files, version_from, target.where, listen_addr, listen_port, held)


def _check_out(out_dir: Path) -> None:
    """``--out`` must be a directory, or one that init can create: only the last directory is
    created (mode 0700), so that a typo does not scatter secrets over new directories.

    Raises:
        ConfigError: not a directory, or its parent does not exist.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is not a directory: give the directory to write "
                          "pgbouncer.ini and userlist.txt in")
    if not out_dir.exists() and not out_dir.parent.is_dir():
        raise ConfigError(f"--out {out_dir}: {out_dir.parent} does not exist; create it first "
                          "(init creates only the last directory, mode 0700)")


def _role_error(budget: Budget, user: str, problem: str) -> ConfigError:
    """``problem`` with ``user``: a ConfigFileError naming the first service key that names it
    (exit 78), else a ConfigError about the --dsn's user (exit 64)."""
    for s in budget.services:
        if s.user == user and not s.fixed:
            key = f"services.{s.name}.user"
            return ConfigFileError(f"{budget.path}: key '{key}': {problem}", path=budget.path,
                                   key=key)
    return ConfigError(f"the --dsn's user: {problem}")


def _secrets(conn: psycopg.Connection[Any], plan: InitPlan, budget: Budget, dsn_user: str,
             dsn_password: str | None, auth: str
             ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The auth file's entries for ``plan.users`` (``--auth file``; none for ``query``), and
    who has which kind of entry (:func:`pgwarden.pgbouncer.ini.secret_kind`; ``dsn`` for the
    --dsn's own password).

    Raises:
        ConfigFileError / ConfigError: a user that does not exist, cannot log in or has no
            password (:func:`_role_error`).
        PermissionMissing: other users' secrets are needed and the role is no superuser.
    """
    users = list(plan.users)
    roles = postgres.login_roles(conn, users)
    for u in users:
        if u not in roles:
            raise _role_error(budget, u, f"role {u} does not exist on the server: create it "
                              f"(CREATE ROLE {role_sql(u)} LOGIN PASSWORD '...') or name an "
                              "existing role")
        if not roles[u]:
            raise _role_error(budget, u, f"role {u} may not log in: ALTER ROLE {role_sql(u)} "
                              "LOGIN, or name a login role")
    if auth != "file":
        return {}, {}
    try:
        found: dict[str, str | None] | None = postgres.role_secrets(conn, users)
    except psycopg.errors.InsufficientPrivilege:
        found = None
    if found is None:
        others = [u for u in users if u != dsn_user]
        if others or not dsn_password:
            raise PermissionMissing(
                f"cannot read the password verifiers of {', '.join(others or users)} "
                f"(pg_authid needs a superuser; {dsn_user} is none): run init with a "
                "superuser's --dsn, or --auth query")
        return {dsn_user: dsn_password}, {"dsn": [dsn_user]}
    secrets: dict[str, str] = {}
    held: dict[str, list[str]] = {}
    for u in users:
        secret = found.get(u)
        if not secret:
            raise _role_error(budget, u, f"role {u} has no password, so PgBouncer cannot log "
                              f"it in: ALTER ROLE {role_sql(u)} PASSWORD '...' (with "
                              "password_encryption = 'scram-sha-256'), then run init again")
        secrets[u] = secret
        held.setdefault(secret_kind(secret), []).append(u)
    return secrets, held


def _held_text(held: dict[str, list[str]]) -> str:
    """What the auth file holds for the services' users, in words."""
    parts = []
    if held.get("scram"):
        parts.append(f"the SCRAM secrets of {', '.join(held['scram'])}")
    if held.get("md5"):
        parts.append(f"the md5 hash of {', '.join(held['md5'])}")
    if held.get("plain"):
        parts.append(f"the plain-text password of {', '.join(held['plain'])} (as pg_authid "
                     "holds it)")
    if held.get("dsn"):
        parts.append(f"the password of {', '.join(held['dsn'])} from --dsn (plain text: "
                     "PgBouncer needs it to log in to PostgreSQL; a superuser's --dsn gives "
                     "the SCRAM secret instead)")
    return "; ".join(parts)


def _warnings(held: dict[str, list[str]]) -> list[str]:
    if not held.get("md5"):
        return []
    names = ", ".join(held["md5"])
    return [f"auth_type = md5: PostgreSQL stores the password of {names} as an md5 hash, which "
            "cannot do SCRAM (PgBouncer still uses SCRAM for the users with a SCRAM secret); "
            "to use scram-sha-256 throughout: SET password_encryption = 'scram-sha-256'; "
            f"ALTER ROLE {held['md5'][0]} PASSWORD '...'; then run init again"]


def _dsn_password(conninfo: str) -> str | None:
    from psycopg.conninfo import conninfo_to_dict

    value = conninfo_to_dict(conninfo).get("password")
    return str(value) if value else None


def _as_dict(plan: InitPlan, files: dict[str, Path], version_from: str, where: str,
             held: dict[str, list[str]]) -> dict[str, Any]:
    s = plan.sizing
    return {
        "files": {name: str(path) for name, path in files.items()},
        "pgbouncer_version": str(plan.version),
        "version_from": version_from,
        "server": where,
        "auth": plan.auth,
        "auth_type": plan.settings["auth_type"],
        "userlist": {kind: list(users) for kind, users in held.items()},
        "warnings": _warnings(held),
        "settings": {k: v for k, v in plan.settings.items()},
        "databases": {k: dict(v) for k, v in plan.databases.items()},
        "sizing": {"server_slots": s.server_slots, "max_db_connections": s.max_db_connections,
                   "default_pool_size": s.default_pool_size,
                   "reserve_pool_size": s.reserve_pool_size,
                   "max_client_conn": s.max_client_conn,
                   "client_connections": s.client_connections},
        "services": [
            {"service": d.service, "direct": d.direct,
             "drivers": [{"driver": a.driver, "settings": {x.name: x.value for x in a.settings},
                          "where": sorted({x.where for x in a.settings}),
                          "notes": list(a.notes), "prepared_statements": a.prepared_statements,
                          "source": a.source} for a in d.advice]}
            for d in plan.drivers],
        "transaction_mode_caveats": list(plan.caveats),
    }


def _render(plan: InitPlan, files: dict[str, Path], version_from: str, where: str,
            listen_addr: str, listen_port: int, held: dict[str, list[str]]) -> None:
    out = console()
    s = plan.sizing
    out.print(f"[bold]wrote[/] {escape(str(files['pgbouncer.ini']))} for PgBouncer "
              f"{plan.version} ({escape(version_from)}), transaction mode, in front of "
              f"{escape(where)}")
    if plan.auth == "file":
        out.print(f"[bold]wrote[/] {escape(str(files['userlist.txt']))} (mode 0600): "
                  f"{escape(_held_text(held))}; and a new password for "
                  f"{escape(plan.admin_user)} (read it there; it is never printed); "
                  f"auth_type = {plan.settings['auth_type']}")
        for warning in _warnings(held):
            out.print(f"[yellow]warning: {escape(warning)}[/]")
    else:
        out.print(f"[bold]wrote[/] {escape(str(files['auth_query.sql']))} (mode 0600): run it "
                  "as a superuser in every database PgBouncer serves; "
                  f"{escape(str(files['userlist.txt']))} (0600) holds {AUTH_USER}'s and "
                  f"{escape(plan.admin_user)}'s new passwords")
    out.print(f"server connections: default_pool_size {s.default_pool_size} + "
              f"reserve_pool_size {s.reserve_pool_size}, max_db_connections "
              f"{s.max_db_connections} ({s.server_slots} server slots after the headroom and "
              f"the direct consumers); client connections: max_client_conn {s.max_client_conn} "
              f"(the services' pools: {s.client_connections})")
    ini = escape(str(files["pgbouncer.ini"]))
    if os.geteuid() == 0:
        owned = " ".join(escape(str(p)) for p in files.values())
        out.print(f"start it as the user that runs pgbouncer (it refuses to run as root), "
                  f"which must own the files (userlist.txt is 0600): chown USER {owned} "
                  f"(USER: postgres with Debian's and Ubuntu's package), then pgbouncer {ini}; "
                  f"point the services at {listen_addr}:{listen_port}")
    else:
        out.print(f"start it: pgbouncer {ini}  (as this user: the files are yours, 0600); "
                  f"point the services at {listen_addr}:{listen_port}")
    out.print("[bold]what each service's driver needs behind it:[/]")
    for d in plan.drivers:
        if d.direct:
            out.print(f"  {escape(d.service)}: connect to PostgreSQL directly (fixed consumer)")
            continue
        for a in d.advice:
            where_ = "; ".join(sorted({x.where for x in a.settings}))
            line = f"  {escape(d.service)} ({a.driver}): {escape(a.snippet())}"
            if where_:
                line += f"  [dim]in {escape(where_)}[/]"
            out.print(line)
            for note in a.notes:
                out.print(f"      [dim]{escape(note)}[/]")
    out.print("[bold]transaction mode:[/] session state does not outlive a transaction:")
    for c in plan.caveats:
        out.print(f"  - {escape(c)}")


@pgbouncer.command("status")
@click.option("--pgbouncer", "pgbouncer_dsn", required=True, metavar="DSN",
              help="The admin console: postgresql://USER@HOST:6432/pgbouncer.")
@click.option("--dsn", default=None, metavar="DSN",
              help="The PostgreSQL behind it, to name the session state of each server "
              "connection (SHOW SERVERS.remote_pid = pg_stat_activity.pid).")
@connect_timeout_option
@format_option
def status_command(pgbouncer_dsn: str, dsn: str | None, connect_timeout: float,
                   fmt: str) -> None:
    """PgBouncer's pools, and which client holds which server session (same as `pgwarden
    status --pgbouncer DSN`)."""
    from .status import run_status

    run_status(dsn, pgbouncer_dsn, connect_timeout, fmt)
