"""A throwaway PgBouncer for the demo, the tests and the benchmarks (the system's ``pgbouncer``).

``EmbeddedPgBouncer`` runs the installed PgBouncer (Debian: ``apt-get install pgbouncer``) in
the foreground on a free 127.0.0.1 port, with its own temporary directory holding its ini, auth
file and log; no Unix socket (``unix_socket_dir`` is empty), nothing outside loopback.

- **As root**: PgBouncer, like PostgreSQL, refuses to run as root ("PgBouncer should not run as
  root"); it runs as the same unprivileged user as :class:`pgwarden.embedded.EmbeddedPostgres`
  (``postgres``, else ``nobody``), and its directory belongs to that user.
- **Ready** when the admin console answers ``SHOW VERSION`` over the simple query protocol (what
  PgBouncer's own test suite waits for).
- **Stopped** with PgBouncer's *immediate shutdown*: ``SIGTERM`` before 1.23, ``SIGQUIT`` from
  1.23 on (1.23 made SIGTERM a "super safe shutdown" that waits for every client and added
  SIGQUIT for the immediate one; PgBouncer's test suite stops it with ``kill`` = SIGTERM up to
  1.22 and ``SIGQUIT`` since). ``SIGINT`` would be the safe shutdown (PAUSE, then exit), which
  waits for running queries: wrong for a throwaway.
- **Clean-up** as for the embedded cluster: ``close()``, the ``with`` block or interpreter exit
  stops it and removes its directory; a reaper process does the same within a second if the
  owner dies without running its exit handlers (SIGKILL).

Example::

    with EmbeddedPostgres(max_connections=20) as pg, EmbeddedPgBouncer(pg) as bouncer:
        psycopg.connect(bouncer.conninfo(dbname="postgres"), prepare_threshold=None)
        bouncer.admin("SHOW POOLS")
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from .embedded import EmbeddedPostgres, _free_port, _RunAs
from .errors import EmbeddedError
from .pgbouncer.ini import IniValue, auth_file_text, ini_text
from .pgbouncer.version import Version, find_binary, installed_version

__all__ = ["EmbeddedPgBouncer", "pgbouncer_available", "stop_signal"]

logger = logging.getLogger("pgwarden.embedded")

#: Settings every embedded PgBouncer gets (loopback only, log to its own file).
_BASE: dict[str, IniValue] = {
    "listen_addr": "127.0.0.1",
    "unix_socket_dir": "",
    "auth_type": "scram-sha-256",
    "pool_mode": "transaction",
    "stats_period": 1,
    "log_connections": 0,
    "log_disconnections": 0,
}

_live: weakref.WeakSet[EmbeddedPgBouncer] = weakref.WeakSet()


def pgbouncer_available() -> bool:
    """Whether a ``pgbouncer`` program is installed."""
    return find_binary() is not None


def stop_signal(version: Version) -> signal.Signals:
    """PgBouncer's immediate-shutdown signal for ``version``: SIGTERM before 1.23, SIGQUIT
    from 1.23 (PgBouncer's usage docs, "Signals")."""
    return signal.SIGQUIT if version.at_least(1, 23) else signal.SIGTERM


class EmbeddedPgBouncer:
    """A private PgBouncer on 127.0.0.1 in front of ``server``.

    Args:
        server: the PostgreSQL it pools; with no ``databases``, every database name falls
            through to it (``* = host=127.0.0.1 port=...``).
        settings: ``[pgbouncer]`` settings on top of the defaults (``pool_mode`` transaction,
            ``auth_type`` scram-sha-256, ``stats_period`` 1 s for quick averages), e.g.
            ``{"default_pool_size": 5, "max_client_conn": 600}``.
        databases: ``[databases]`` entries (name -> connection parameters).
        users: auth-file entries (user -> plain password or SCRAM secret); default: the
            server's superuser with its password. The admin user is always added.
        include: an existing ``pgbouncer.ini`` (e.g. written by ``pgwarden pgbouncer init``)
            to run as written: only where to listen, log and find the auth file is replaced
            in its ``[pgbouncer]`` section (its auth file, when it names one that exists, is
            copied in, readable by the unprivileged user).
        admin_user: the user in ``admin_users`` (the admin console, database ``pgbouncer``).
        binary: the ``pgbouncer`` program (default: :func:`find_binary`).
        start: start at construction.

    Raises:
        EmbeddedError: pgbouncer is not installed, or did not start (the message carries the
            tail of its log).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        server: EmbeddedPostgres | None = None,
        *,
        settings: Mapping[str, IniValue] | None = None,
        databases: Mapping[str, Mapping[str, IniValue]] | None = None,
        users: Mapping[str, str] | None = None,
        include: Path | str | None = None,
        admin_user: str = "pgwarden_admin",
        binary: str | None = None,
        start: bool = True,
    ) -> None:
        found = binary or find_binary()
        if found is None:
            raise EmbeddedError("pgbouncer is not installed: apt-get install pgbouncer "
                                "(Debian/Ubuntu), dnf install pgbouncer, brew install pgbouncer")
        self.binary = found
        version = installed_version(found)
        if version is None:
            raise EmbeddedError(f"{found} --version did not answer with a PgBouncer version")
        self.version: Version = version
        self.server = server
        self._run_as = _RunAs()
        self.port = _free_port()
        self.admin_user = admin_user
        self.admin_password = secrets.token_urlsafe(16)
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgwarden-pgbouncer-"))
        self.ini_file = self.base_dir / "pgbouncer.ini"
        self.auth_file = self.base_dir / "userlist.txt"
        self.log_file = self.base_dir / "pgbouncer.log"
        self._include = Path(include).resolve() if include else None
        self._settings: dict[str, IniValue] = dict(_BASE)
        self._settings.update(settings or {})
        self._explicit: dict[str, IniValue] = dict(settings or {})
        if databases is None and server is not None and include is None:
            databases = {"*": {"host": server.host, "port": server.port}}
        self._databases = dict(databases or {})
        if users is None:
            users = {server.user: server.password} if server is not None else {}
        self._users = dict(users)
        self._process: subprocess.Popen[bytes] | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self._closed = False
        _live.add(self)
        try:
            self._write_files()
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # -- connection strings -------------------------------------------------------------

    def conninfo(self, **params: Any) -> str:
        """Conninfo for a client of this PgBouncer (default: the server's superuser, database
        ``postgres``); ``params`` override user, password, dbname, ..."""
        base: dict[str, Any] = {"host": self.host, "port": self.port, "dbname": "postgres",
                                "connect_timeout": 5}
        if self.server is not None:
            base.update(user=self.server.user, password=self.server.password)
        base.update(params)
        return make_conninfo("", **base)

    @property
    def admin_dsn(self) -> str:
        """Conninfo of the admin console (database ``pgbouncer``, the admin user)."""
        return make_conninfo("", host=self.host, port=self.port, dbname="pgbouncer",
                             user=self.admin_user, password=self.admin_password,
                             connect_timeout=5)

    @property
    def admin_url(self) -> str:
        """``postgresql://`` URL of the admin console."""
        return (f"postgresql://{self.admin_user}:{self.admin_password}@{self.host}:"
                f"{self.port}/pgbouncer")

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run one admin console command (``SHOW POOLS``, ``RELOAD``, ...) over the simple
        query protocol; its rows as dicts (empty for commands without rows)."""
        with psycopg.connect(self.admin_dsn, autocommit=True, prepare_threshold=None) as conn:
            cur = conn.cursor(row_factory=dict_row)
            cur.execute(command.encode(), prepare=False)
            return list(cur.fetchall()) if cur.description else []

    # -- lifecycle ----------------------------------------------------------------------

    def _write_files(self) -> None:
        os.chmod(self.base_dir, 0o700)
        listen: dict[str, IniValue] = {
            "listen_port": self.port,
            "logfile": str(self.log_file),
            "pidfile": "",
            "auth_file": str(self.auth_file),
            "admin_users": self.admin_user,
        }
        users = dict(self._users)
        if self._include is not None:
            text = self._include.read_text()
            given = _setting(text, "auth_file")
            if given and Path(given).exists():
                # (it is 0600 and belongs to whoever wrote it; the bouncer reads a copy)
                users.update(_auth_entries(Path(given).read_text()))
            admins = _setting(text, "admin_users")
            if admins:
                listen["admin_users"] = f"{admins},{self.admin_user}"
        users[self.admin_user] = self.admin_password
        self.auth_file.write_text(auth_file_text(users))
        os.chmod(self.auth_file, 0o600)
        if self._include is not None:
            # the given file runs as written: only where to listen, log and authenticate (and
            # what the caller passed explicitly) is replaced in its [pgbouncer] section
            # (PgBouncer resets that section's settings when it meets it again, so an
            # %include followed by overrides would lose the included settings)
            own = {"listen_addr": self.host, "unix_socket_dir": "", **self._explicit}
            text = _override(self._include.read_text(), {**own, **listen})
        else:
            text = ini_text({**self._settings, **listen}, self._databases)
        self.ini_file.write_text(text)
        os.chmod(self.ini_file, 0o600)
        self._run_as.chown(self.base_dir)

    def configure(self, settings: Mapping[str, IniValue]) -> None:
        """Change ``[pgbouncer]`` settings and ``RELOAD`` (settings PgBouncer can only take at
        start, such as ``listen_port``, need :meth:`restart`)."""
        self._settings.update(settings)
        self._explicit.update(settings)
        self._write_files()
        if self.running:
            self.admin("RELOAD")

    def start(self, *, timeout: float = 30) -> None:
        """Start PgBouncer and wait until its admin console answers ``SHOW VERSION``.

        Raises:
            EmbeddedError: it exited or did not answer within ``timeout`` seconds (with the
                tail of its log).
        """
        if self._closed:
            raise EmbeddedError("pgbouncer is closed")
        if self.running:
            return
        self._process = subprocess.Popen(
            [self.binary, "--quiet", str(self.ini_file)],
            cwd=str(self.base_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **self._run_as.popen_kwargs(),
        )
        if self._reaper is None:
            self._start_reaper()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedError(f"pgbouncer exited with code {self._process.returncode} "
                                    f"at start:\n{self.log_tail()}")
            try:
                self.admin("SHOW VERSION")
                return
            except psycopg.Error as exc:
                last = exc
                time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"pgbouncer did not answer on 127.0.0.1:{self.port} within "
                            f"{timeout:g} s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        """Immediate shutdown (:func:`stop_signal`); every client and server connection
        closes."""
        proc = self._process
        if proc is None or proc.poll() is not None:
            self._process = None
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(stop_signal(self.version))
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        self._process = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of PgBouncer's log."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop PgBouncer and delete its files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._reaper is not None and self._reaper.poll() is None:
            self._reaper.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(timeout=5)
        _live.discard(self)

    def __enter__(self) -> EmbeddedPgBouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedPgBouncer {self.version} 127.0.0.1:{self.port} {state}>"

    # -- crash clean-up -----------------------------------------------------------------

    def _start_reaper(self) -> None:
        assert self._process is not None
        code = ("import sys; from pgwarden.embedded_pgbouncer import _reap; "
                "_reap(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))")
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", code, str(os.getpid()), str(self.base_dir),
             str(self._process.pid), str(int(stop_signal(self.version)))],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )


def _setting(text: str, key: str) -> str | None:
    """The last value of ``key`` in an ini text (PgBouncer keeps the last one)."""
    value = None
    for line in text.splitlines():
        name, sep, rest = line.partition("=")
        if sep and name.strip() == key:
            value = rest.strip()
    return value


def _override(text: str, settings: Mapping[str, IniValue]) -> str:
    """``text`` (a pgbouncer.ini) with ``settings`` replaced in, or added to, its
    ``[pgbouncer]`` section."""
    lines = text.splitlines()
    out: list[str] = []
    section = ""
    done: set[str] = set()

    def rest() -> list[str]:
        return [f"{k} = {ini_text({k: v}, {}).splitlines()[-1].split(' = ', 1)[1]}"
                for k, v in settings.items() if k not in done]

    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "pgbouncer":
                out += rest()
                done.update(settings)
            section = stripped[1:-1].strip().lower()
        elif section == "pgbouncer" and "=" in stripped and not stripped.startswith((";", "#")):
            key = stripped.split("=", 1)[0].strip()
            if key in settings:
                if key not in done:
                    out += [ln for ln in rest() if ln.split(" = ", 1)[0] == key]
                    done.add(key)
                continue
        out.append(line)
    if section == "pgbouncer":
        out += rest()
    elif len(done) < len(settings):
        out += ["[pgbouncer]", *rest()]
    return "\n".join(out) + "\n"


def _auth_entries(text: str) -> dict[str, str]:
    """Entries of an auth file (``"user" "secret"`` lines, ``""`` for a quote)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        fields: list[str] = []
        i = 0
        while i < len(line) and len(fields) < 2:
            if line[i] != '"':
                i += 1
                continue
            j, buf = i + 1, []
            while j < len(line):
                if line[j] == '"' and line[j + 1:j + 2] == '"':
                    buf.append('"')
                    j += 2
                elif line[j] == '"':
                    break
                else:
                    buf.append(line[j])
                    j += 1
            fields.append("".join(buf))
            i = j + 1
        if len(fields) == 2:
            out[fields[0]] = fields[1]
    return out


def _reap(parent_pid: int, base_dir: str, pid: int, sig: int) -> None:
    """Reaper process: once ``parent_pid`` is gone, stop PgBouncer and delete its files."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass
        time.sleep(0.5)
    with contextlib.suppress(Exception):
        os.kill(pid, sig)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
    shutil.rmtree(base_dir, ignore_errors=True)


@atexit.register
def _close_all() -> None:
    for bouncer in list(_live):
        bouncer.close()
